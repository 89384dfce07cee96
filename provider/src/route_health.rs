//! Route health as each worker's Traefik sees it, reported by its authgate
//! (`PUT /api/worker/{id}/route-health`) and kept in memory: it is re-reported every few
//! seconds, so nothing here needs to survive a restart.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use uuid::Uuid;

use crate::{domain::Route, store::now_ms};

/// Reports older than this say nothing (the worker or its authgate went away).
const STALE_MS: i64 = 30_000;

#[derive(Debug, Clone)]
struct Report {
    worker: Uuid,
    /// Server URL (`http://host:port`) → Traefik's status (`UP` / `DOWN`).
    servers: BTreeMap<String, String>,
    at_ms: i64,
}

/// Circuit → latest report.
#[derive(Clone, Default)]
pub struct RouteHealth {
    inner: Arc<RwLock<HashMap<Uuid, Report>>>,
}

impl RouteHealth {
    /// Replace everything `worker` reported before with `circuits`.
    pub fn report(&self, worker: Uuid, circuits: HashMap<Uuid, BTreeMap<String, String>>) {
        let now = now_ms();
        let mut map = self.inner.write().expect("route health lock");
        map.retain(|_, r| r.worker != worker);
        for (c, servers) in circuits {
            map.insert(
                c,
                Report {
                    worker,
                    servers,
                    at_ms: now,
                },
            );
        }
    }

    /// `healthy`, `unhealthy` or `unknown` for one route of a circuit.
    pub fn status(&self, circuit: Uuid, route: &Route) -> &'static str {
        let map = self.inner.read().expect("route health lock");
        let Some(r) = map.get(&circuit).filter(|r| now_ms() - r.at_ms < STALE_MS) else {
            return "unknown";
        };
        let hostport = if route.kernel_host.contains(':') {
            format!("[{}]:{}", route.kernel_host, route.kernel_port)
        } else {
            format!("{}:{}", route.kernel_host, route.kernel_port)
        };
        let found = r
            .servers
            .iter()
            .find(|(url, _)| url.split_once("://").map(|(_, a)| a) == Some(hostport.as_str()));
        match found.map(|(_, s)| s.as_str()) {
            Some("UP") => "healthy",
            Some(_) => "unhealthy",
            None => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Protocol;

    fn route(port: u16) -> Route {
        Route {
            route_id: None,
            session_id: Uuid::nil(),
            session_name: None,
            kernel_host: "10.0.0.1".into(),
            kernel_port: port,
            protocol: Protocol::Http,
            traffic_ratio: 1.0,
        }
    }

    #[test]
    fn reports_map_to_route_status_and_replace_per_worker() {
        let h = RouteHealth::default();
        let (w, c) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(h.status(c, &route(1)), "unknown");
        h.report(
            w,
            HashMap::from([(
                c,
                BTreeMap::from([
                    ("http://10.0.0.1:1".to_string(), "UP".to_string()),
                    ("http://10.0.0.1:2".to_string(), "DOWN".to_string()),
                ]),
            )]),
        );
        assert_eq!(h.status(c, &route(1)), "healthy");
        assert_eq!(h.status(c, &route(2)), "unhealthy");
        assert_eq!(h.status(c, &route(3)), "unknown");
        h.report(w, HashMap::new());
        assert_eq!(h.status(c, &route(1)), "unknown");
    }
}
