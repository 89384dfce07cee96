//! Placement: which worker takes a new circuit (Backend.AI §3.2, fixed). Pure: the caller
//! loads the workers and their circuit counts; this module only ranks them.
//!
//! Among ALIVE workers that serve the protocol, accept the traffic type and whose app filters
//! admit the request: workers whose filters match come first, then wildcard workers (least
//! loaded first), then port workers with the most free ports. A port worker with no free port
//! is never chosen.

use std::collections::HashMap;

use uuid::Uuid;

use crate::domain::{AppMode, FrontendMode, Protocol, Worker, WorkerStatus};

/// What a new circuit asks of its worker.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub protocol: Protocol,
    pub mode: AppMode,
    /// Properties worker app filters match (`session.user_uuid`, `endpoint.id`, …).
    pub props: &'a [(String, String)],
}

/// Whether a worker can carry a circuit of this protocol (TCP workers only TCP, others any
/// HTTP flavour).
pub fn serves(w: &Worker, protocol: Protocol) -> bool {
    (protocol == Protocol::Tcp) == (w.protocol == Protocol::Tcp)
}

/// Whether one of the worker's app filters matches one of the request's properties.
pub fn filter_match(w: &Worker, props: &[(String, String)]) -> bool {
    w.app_filters
        .iter()
        .any(|f| props.iter().any(|(k, v)| f.key == *k && f.value == *v))
}

/// Why a named worker cannot take the circuit, if it cannot.
pub fn refuse_named(w: &Worker, protocol: Protocol) -> Option<&'static str> {
    if w.draining {
        return Some("worker is draining: it takes no new circuits");
    }
    (w.status != WorkerStatus::Alive || !serves(w, protocol))
        .then_some("worker is not alive or does not serve this protocol")
}

/// The best worker for `ask`, if any can take it. `counts` holds circuits per worker id.
pub fn rank_workers<'w>(
    workers: &'w [Worker],
    counts: &HashMap<Uuid, i64>,
    ask: Ask<'_>,
) -> Option<&'w Worker> {
    workers
        .iter()
        .filter(|w| {
            w.status == WorkerStatus::Alive
                && !w.draining
                && serves(w, ask.protocol)
                && w.accepted_traffics.contains(&ask.mode)
                && (!w.filtered_apps_only || filter_match(w, ask.props))
        })
        .filter_map(|w| {
            let used = counts.get(&w.id).copied().unwrap_or(0);
            let dedicated = i64::from(filter_match(w, ask.props));
            match w.frontend_mode {
                FrontendMode::Wildcard | FrontendMode::Path => Some(((dedicated, 1, -used), w)),
                FrontendMode::Port => {
                    let free = w.available_slots() - used;
                    (free > 0).then_some(((dedicated, 0, free), w))
                }
            }
        })
        .max_by_key(|(k, _)| *k)
        .map(|(_, w)| w)
}

/// `host`, `port` of `scheme://host[:port][/…]`.
fn url_host_port(url: &str) -> Option<(String, Option<u16>)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            Some((h.to_ascii_lowercase(), Some(p.parse().ok()?)))
        }
        _ => Some((authority.to_ascii_lowercase(), None)),
    }
}

/// The worker (and slot) an endpoint's `existing_url` belongs to, so a re-created endpoint
/// keeps its URL.
pub fn match_existing<'w>(
    workers: &'w [Worker],
    url: &str,
) -> Option<(&'w Worker, Option<u16>, Option<String>)> {
    let (host, port) = url_host_port(url)?;
    for w in workers {
        if !w.accepted_traffics.contains(&AppMode::Inference) {
            continue;
        }
        match w.frontend_mode {
            FrontendMode::Wildcard => {
                let (label, rest) = host.split_once('.')?;
                if w.wildcard_domain.as_deref() == Some(&format!(".{rest}")) {
                    return Some((w, None, Some(label.to_string())));
                }
            }
            FrontendMode::Port => {
                if let (Some(p), Some((lo, hi))) = (port, w.port_range)
                    && w.hostname.eq_ignore_ascii_case(&host)
                    && (lo..=hi).contains(&p)
                {
                    return Some((w, Some(p), None));
                }
            }
            FrontendMode::Path => {
                if w.hostname.eq_ignore_ascii_case(&host)
                    && port.or(default_port(url)) == w.wildcard_traffic_port.or(default_port(url))
                    && let Some(prefix) = url_prefix(url)
                {
                    return Some((w, None, Some(prefix)));
                }
            }
        }
    }
    None
}

/// 80 or 443 by the URL's scheme.
fn default_port(url: &str) -> Option<u16> {
    match url.split_once("://")?.0 {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// A path-mode URL's prefix (its first two path segments, when plain).
fn url_prefix(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let path = rest.split(['?', '#']).next()?;
    crate::domain::path_prefix_of(&path[path.find('/')?..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AppFilter, fixtures};

    fn worker(name: &str, mode: FrontendMode, protocol: Protocol) -> Worker {
        let mut spec = fixtures::spec(name, mode, protocol);
        spec.port_range = spec.port_range.map(|_| (10205, 10209));
        spec.accepted_traffics = vec![AppMode::Interactive, AppMode::Inference];
        fixtures::worker(Uuid::new_v4(), spec)
    }

    fn port(name: &str) -> Worker {
        worker(name, FrontendMode::Port, Protocol::Http)
    }
    fn wildcard(name: &str) -> Worker {
        worker(name, FrontendMode::Wildcard, Protocol::Http)
    }
    fn tcp(name: &str) -> Worker {
        worker(name, FrontendMode::Port, Protocol::Tcp)
    }
    fn dead(mut w: Worker) -> Worker {
        w.status = WorkerStatus::Lost;
        w
    }
    fn draining(mut w: Worker) -> Worker {
        w.draining = true;
        w
    }
    fn only(mut w: Worker, mode: AppMode) -> Worker {
        w.spec.accepted_traffics = vec![mode];
        w
    }
    fn filtered(mut w: Worker, key: &str, value: &str, exclusive: bool) -> Worker {
        w.spec.app_filters = vec![AppFilter {
            key: key.into(),
            value: value.into(),
        }];
        w.spec.filtered_apps_only = exclusive;
        w
    }

    const USER: &str = "session.user_uuid";

    /// (case, workers, circuits per worker by index, protocol, mode, props, expected authority)
    #[test]
    fn ranking_table() {
        type Case = (
            &'static str,
            Vec<Worker>,
            Vec<i64>,
            Protocol,
            AppMode,
            Vec<(&'static str, &'static str)>,
            Option<&'static str>,
        );
        use AppMode::{Inference, Interactive};
        use Protocol::{Http, Tcp};
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("no workers", vec![], vec![], Http, Interactive, vec![], None),
            ("one alive port worker", vec![port("a")], vec![0], Http, Interactive, vec![], Some("a")),
            ("dead workers are skipped", vec![dead(port("a")), port("b")], vec![0, 4], Http, Interactive, vec![], Some("b")),
            ("only dead workers", vec![dead(port("a"))], vec![0], Http, Interactive, vec![], None),
            ("draining workers are skipped", vec![draining(wildcard("a")), port("b")], vec![0, 4], Http, Interactive, vec![], Some("b")),
            ("only draining workers", vec![draining(port("a"))], vec![0], Http, Interactive, vec![], None),
            ("most free ports wins", vec![port("a"), port("b")], vec![3, 1], Http, Interactive, vec![], Some("b")),
            ("a full port worker is never chosen", vec![port("a")], vec![5], Http, Interactive, vec![], None),
            ("wildcard before port", vec![port("a"), wildcard("b")], vec![0, 100], Http, Interactive, vec![], Some("b")),
            ("least loaded wildcard", vec![wildcard("a"), wildcard("b")], vec![7, 2], Http, Interactive, vec![], Some("b")),
            ("tcp goes to tcp workers", vec![port("a"), tcp("t")], vec![0, 4], Tcp, Interactive, vec![], Some("t")),
            ("http never to tcp workers", vec![tcp("t")], vec![0], Http, Interactive, vec![], None),
            ("grpc is http-like", vec![tcp("t"), port("a")], vec![0, 0], Protocol::Grpc, Interactive, vec![], Some("a")),
            ("traffic type must be accepted", vec![only(port("a"), Interactive), only(port("b"), Inference)], vec![0, 4], Http, Inference, vec![], Some("b")),
            ("matching filter first, even if loaded", vec![wildcard("a"), filtered(port("b"), USER, "u1", false)], vec![0, 4], Http, Interactive, vec![(USER, "u1")], Some("b")),
            ("non-matching filter ranks as wildcard-less", vec![filtered(port("b"), USER, "u2", false), port("c")], vec![0, 3], Http, Interactive, vec![(USER, "u1")], Some("b")),
            ("exclusive worker refuses others", vec![filtered(wildcard("x"), USER, "u2", true)], vec![0], Http, Interactive, vec![(USER, "u1")], None),
            ("exclusive worker takes its own", vec![filtered(wildcard("x"), USER, "u1", true), wildcard("y")], vec![9, 0], Http, Interactive, vec![(USER, "u1")], Some("x")),
            ("matched but full port worker falls back", vec![filtered(port("b"), USER, "u1", false), port("c")], vec![5, 0], Http, Interactive, vec![(USER, "u1")], Some("c")),
        ];
        for (case, workers, used, protocol, mode, props, want) in cases {
            let counts: HashMap<Uuid, i64> =
                workers.iter().zip(&used).map(|(w, n)| (w.id, *n)).collect();
            let props: Vec<(String, String)> = props
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let got = rank_workers(
                &workers,
                &counts,
                Ask {
                    protocol,
                    mode,
                    props: &props,
                },
            )
            .map(|w| w.authority.as_str());
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn named_workers_must_be_alive_and_serve_the_protocol() {
        assert_eq!(refuse_named(&port("a"), Protocol::Http), None);
        assert!(refuse_named(&port("a"), Protocol::Tcp).is_some());
        assert!(refuse_named(&tcp("t"), Protocol::H2).is_some());
        assert!(refuse_named(&dead(port("a")), Protocol::Http).is_some());
        assert!(
            refuse_named(&draining(port("a")), Protocol::Http)
                .is_some_and(|r| r.contains("draining"))
        );
    }

    #[test]
    fn urls_split_into_host_and_port() {
        assert_eq!(
            url_host_port("http://Host.Example:10205/x"),
            Some(("host.example".into(), Some(10205)))
        );
        assert_eq!(
            url_host_port("https://svc.apps.example.com"),
            Some(("svc.apps.example.com".into(), None))
        );
        assert_eq!(url_host_port("no-scheme"), None);
    }

    #[test]
    fn an_existing_path_mode_url_names_its_worker_and_prefix() {
        let mut w = worker("p", FrontendMode::Path, Protocol::Http);
        w.spec.wildcard_traffic_port = Some(8080);
        let ws = [port("a"), w];
        let hit = match_existing(&ws, "http://apps.example.com:8080/e1/llm/v1/chat");
        assert_eq!(
            hit.map(|(w, p, s)| (w.authority.as_str(), p, s)),
            Some(("p", None, Some("/e1/llm".into())))
        );
        assert!(match_existing(&ws, "http://apps.example.com:8081/e1/llm").is_none());
        assert!(match_existing(&ws, "http://apps.example.com:8080/e1").is_none());
    }
}
