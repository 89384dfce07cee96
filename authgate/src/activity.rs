//! Activity of this worker's circuits, kept in memory and flushed to Redis every second in one
//! pipeline, under the keys Backend.AI's Manager reads:
//! `circuit.<id>.last_access`, `session.<id>.last_access` (epoch seconds, TTL 2 days, never
//! moved backwards) and `circuit.<id>.requests` (a counter).
//!
//! Sources: access-log events (one per finished request), authorized WebSocket upgrades (a
//! refcount per circuit until the close line arrives: an open socket keeps its circuit and
//! sessions active), and Traefik's `traefik_open_connections` per port entrypoint for TCP
//! circuits. Counts not yet flushed stay pending when Redis is down and go out with the next
//! successful flush.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use uuid::Uuid;

use crate::ingest::Event;

/// TTL of the activity keys (Backend.AI: 2 days).
pub const KEY_TTL_SECS: u64 = 2 * 24 * 3600;

#[derive(Debug, Default, Clone)]
struct CircuitState {
    last_ms: i64,
    /// Requests not yet added to Redis.
    pending: u64,
    /// Open (authorized, not yet closed) WebSockets.
    websockets: u32,
    /// Something changed since the last successful flush.
    dirty: bool,
}

/// What the worker's circuits are, from the provider (refreshed every few seconds).
#[derive(Debug, Default, Clone)]
pub struct CircuitMap {
    pub sessions: HashMap<Uuid, Vec<Uuid>>,
    /// Port of each TCP circuit.
    pub tcp_ports: HashMap<u16, Uuid>,
    /// Auth plugin (name, config) of each circuit that names one.
    pub plugins: HashMap<Uuid, (String, serde_json::Value)>,
    /// Whether any circuit is an inference circuit (only those have replica health).
    pub has_inference: bool,
}

#[derive(Default)]
struct State {
    circuits: HashMap<Uuid, CircuitState>,
    map: CircuitMap,
}

/// Shared activity state.
#[derive(Default)]
pub struct Activity {
    state: Mutex<State>,
    /// Epoch ms of the last successful flush (0: never).
    pub last_flush_ok_ms: AtomicI64,
    pub redis_ok: AtomicBool,
}

/// One flush: the Redis writes to make, as plain data (so it can be tested without Redis).
#[derive(Debug, Default, PartialEq)]
pub struct Flush {
    /// (circuit, last access ms, requests to add)
    pub circuits: Vec<(Uuid, i64, u64)>,
    /// (session, last access ms)
    pub sessions: Vec<(Uuid, i64)>,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("activity lock")
    }

    /// Apply one access-log event.
    pub fn apply(&self, e: &Event) {
        let mut s = self.lock();
        let c = s.circuits.entry(e.circuit).or_default();
        c.last_ms = c.last_ms.max(e.at_ms);
        c.pending += 1;
        c.dirty = true;
        if e.websocket_closed {
            c.websockets = c.websockets.saturating_sub(1);
        }
    }

    /// An authorized WebSocket upgrade for `circuit` at `now_ms`.
    pub fn websocket_opened(&self, circuit: Uuid, now_ms: i64) {
        let mut s = self.lock();
        let c = s.circuits.entry(circuit).or_default();
        c.websockets += 1;
        c.last_ms = c.last_ms.max(now_ms);
        c.dirty = true;
    }

    /// Whether the worker carries inference circuits (replica health is worth polling).
    pub fn has_inference(&self) -> bool {
        self.lock().map.has_inference
    }

    /// The auth plugin a circuit names, as the provider last said.
    pub fn plugin_of(&self, circuit: Uuid) -> Option<(String, serde_json::Value)> {
        self.lock().map.plugins.get(&circuit).cloned()
    }

    pub fn open_websockets(&self, circuit: Uuid) -> u32 {
        self.lock()
            .circuits
            .get(&circuit)
            .map_or(0, |c| c.websockets)
    }

    pub fn set_map(&self, map: CircuitMap) {
        let mut s = self.lock();
        // Forget circuits that no longer exist on this worker, unless they still have
        // something to flush (the map may be older than their first request).
        let live: HashSet<Uuid> = map.sessions.keys().copied().collect();
        s.circuits
            .retain(|id, c| live.contains(id) || c.dirty || c.websockets > 0);
        s.map = map;
    }

    /// Open TCP connections per port (from Traefik's metrics): active circuits at `now_ms`.
    pub fn tcp_connections(&self, open: &HashMap<u16, u64>, now_ms: i64) {
        let mut s = self.lock();
        let active: Vec<Uuid> = open
            .iter()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(p, _)| s.map.tcp_ports.get(p).copied())
            .collect();
        for id in active {
            let c = s.circuits.entry(id).or_default();
            c.last_ms = c.last_ms.max(now_ms);
            c.dirty = true;
        }
    }

    /// Take what must be written now: every changed circuit, and every circuit with an open
    /// WebSocket (its last access is now). Pending counts move into the flush.
    pub fn take(&self, now_ms: i64) -> Flush {
        let mut guard = self.lock();
        let s = &mut *guard;
        let mut f = Flush::default();
        let mut touched = Vec::new();
        for (id, c) in s.circuits.iter_mut() {
            if c.websockets > 0 {
                c.last_ms = c.last_ms.max(now_ms);
                c.dirty = true;
            }
            if c.dirty && c.last_ms > 0 {
                f.circuits.push((*id, c.last_ms, c.pending));
                touched.push((*id, c.last_ms));
                c.pending = 0;
                // Sessions not known yet: stay dirty so they are written once they are.
                c.dirty = !s.map.sessions.contains_key(id);
            }
        }
        let mut sessions: HashMap<Uuid, i64> = HashMap::new();
        for (id, at) in touched {
            for sid in s.map.sessions.get(&id).into_iter().flatten() {
                let e = sessions.entry(*sid).or_insert(at);
                *e = (*e).max(at);
            }
        }
        f.sessions = sessions.into_iter().collect();
        f.circuits.sort();
        f.sessions.sort();
        f
    }

    /// A flush failed: put its counts back so the next one carries them.
    pub fn restore(&self, f: &Flush) {
        let mut s = self.lock();
        for (id, at, n) in &f.circuits {
            let c = s.circuits.entry(*id).or_default();
            c.pending += n;
            c.last_ms = c.last_ms.max(*at);
            c.dirty = true;
        }
    }
}

/// Seconds as Backend.AI writes them (`time.time()`): a decimal number.
fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Write a flush in one pipeline: last-access keys only move forward (a Lua max), request
/// counters are added, every key gets the 2-day TTL.
pub async fn write(con: &mut redis::aio::ConnectionManager, f: &Flush) -> redis::RedisResult<()> {
    const MAX_SET: &str = "local cur = redis.call('GET', KEYS[1]) \
        if (not cur) or (tonumber(cur) or 0) < tonumber(ARGV[1]) then \
        redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) \
        else redis.call('EXPIRE', KEYS[1], ARGV[2]) end return 1";
    let mut pipe = redis::pipe();
    if f.circuits.is_empty() && f.sessions.is_empty() {
        // Nothing to write: still prove Redis is reachable (the provider trusts our data
        // only while flushes succeed).
        pipe.cmd("PING").ignore();
    }
    let ttl = KEY_TTL_SECS;
    for (id, at, n) in &f.circuits {
        pipe.cmd("EVAL")
            .arg(MAX_SET)
            .arg(1)
            .arg(format!("circuit.{id}.last_access"))
            .arg(secs(*at))
            .arg(ttl)
            .ignore();
        let key = format!("circuit.{id}.requests");
        pipe.cmd("INCRBY").arg(&key).arg(*n).ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(ttl).ignore();
    }
    for (sid, at) in &f.sessions {
        pipe.cmd("EVAL")
            .arg(MAX_SET)
            .arg(1)
            .arg(format!("session.{sid}.last_access"))
            .arg(secs(*at))
            .arg(ttl)
            .ignore();
    }
    pipe.query_async::<()>(con).await
}

/// `traefik_open_connections{entrypoint="port_<N>",protocol="TCP"} <v>` → port → v.
pub fn parse_open_connections(metrics: &str) -> HashMap<u16, u64> {
    let mut out = HashMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("traefik_open_connections{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        if !labels.contains("protocol=\"TCP\"") {
            continue;
        }
        let port = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("entrypoint=\"port_"))
            .and_then(|p| p.trim_end_matches('"').parse::<u16>().ok());
        let value = value.trim().parse::<f64>().ok();
        if let (Some(p), Some(v)) = (port, value) {
            *out.entry(p).or_insert(0) += v.max(0.0) as u64;
        }
    }
    out
}

/// Flush every second until `shutdown` (then once more); poll Traefik's TCP connection counts each time.
pub async fn flusher(
    activity: Arc<Activity>,
    redis: redis::Client,
    traefik: reqwest::Client,
    traefik_api: String,
    poll_tcp: bool,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut con: Option<redis::aio::ConnectionManager> = None;
    loop {
        // On shutdown, one last flush, then stop.
        let stopping = *shutdown.borrow();
        let now = now_ms();
        if poll_tcp
            && let Ok(r) = traefik
                .get(format!("{}/metrics", traefik_api.trim_end_matches('/')))
                .send()
                .await
            && let Ok(text) = r.text().await
        {
            activity.tcp_connections(&parse_open_connections(&text), now);
        }
        let f = activity.take(now);
        if con.is_none() {
            con = tokio::time::timeout(
                Duration::from_secs(2),
                redis::aio::ConnectionManager::new(redis.clone()),
            )
            .await
            .ok()
            .and_then(Result::ok);
        }
        let result = match con.as_mut() {
            Some(c) => match tokio::time::timeout(Duration::from_secs(2), write(c, &f)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("timed out".to_string()),
            },
            None => Err("not connected".to_string()),
        };
        let ok = result.is_ok();
        if ok {
            activity.last_flush_ok_ms.store(now, Ordering::Release);
        } else {
            activity.restore(&f);
            if activity.redis_ok.load(Ordering::Acquire) {
                tracing::warn!(
                    error = result.err().unwrap_or_default(),
                    "Activity flush to Redis failed; keeping counts for the next one"
                );
            }
        }
        activity.redis_ok.store(ok, Ordering::Release);
        if stopping {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|v| *v) => {}
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(c: Uuid, at: i64, ws: bool) -> Event {
        Event {
            circuit: c,
            at_ms: at,
            websocket_closed: ws,
        }
    }

    #[test]
    fn counts_last_access_sessions_and_restore() {
        let a = Activity::new();
        let (c, s1, s2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        a.set_map(CircuitMap {
            sessions: HashMap::from([(c, vec![s1, s2])]),
            tcp_ports: HashMap::new(),
            plugins: HashMap::new(),
            has_inference: false,
        });
        a.apply(&ev(c, 2_000, false));
        a.apply(&ev(c, 1_000, false));
        let f = a.take(3_000);
        assert_eq!(f.circuits, vec![(c, 2_000, 2)]);
        assert_eq!(f.sessions.len(), 2);
        assert!(f.sessions.iter().all(|(_, at)| *at == 2_000));
        assert_eq!(a.take(4_000), Flush::default(), "nothing new");
        a.restore(&f);
        a.apply(&ev(c, 5_000, false));
        assert_eq!(
            a.take(6_000).circuits,
            vec![(c, 5_000, 3)],
            "failed flush carried over"
        );
    }

    #[test]
    fn websockets_keep_circuits_active_until_closed() {
        let a = Activity::new();
        let c = Uuid::new_v4();
        a.set_map(CircuitMap {
            sessions: HashMap::from([(c, vec![])]),
            tcp_ports: HashMap::new(),
            plugins: HashMap::new(),
            has_inference: false,
        });
        a.websocket_opened(c, 1_000);
        a.websocket_opened(c, 1_000);
        assert_eq!(a.take(10_000).circuits, vec![(c, 10_000, 0)]);
        a.apply(&ev(c, 11_000, true));
        assert_eq!(a.open_websockets(c), 1, "a refcount, not a set");
        assert_eq!(a.take(20_000).circuits, vec![(c, 20_000, 1)]);
        a.apply(&ev(c, 21_000, true));
        a.apply(&ev(c, 21_000, true));
        assert_eq!(a.open_websockets(c), 0, "never below zero");
        assert_eq!(a.take(30_000).circuits, vec![(c, 21_000, 2)]);
        assert!(
            a.take(40_000).circuits.is_empty(),
            "closed: idle from now on"
        );
    }

    #[test]
    fn tcp_connections_mark_their_circuit() {
        let a = Activity::new();
        let (c, idle) = (Uuid::new_v4(), Uuid::new_v4());
        a.set_map(CircuitMap {
            sessions: HashMap::from([(c, vec![]), (idle, vec![])]),
            tcp_ports: HashMap::from([(10205, c), (10206, idle)]),
            plugins: HashMap::new(),
            has_inference: false,
        });
        let text = "# HELP x\n\
            traefik_open_connections{entrypoint=\"port_10205\",protocol=\"TCP\"} 2\n\
            traefik_open_connections{entrypoint=\"port_10206\",protocol=\"TCP\"} 0\n\
            traefik_open_connections{entrypoint=\"port_10205\",protocol=\"HTTP\"} 7\n\
            traefik_open_connections{entrypoint=\"traefik\",protocol=\"TCP\"} 1\n";
        let open = parse_open_connections(text);
        assert_eq!(open.get(&10205), Some(&2));
        assert_eq!(open.get(&10206), Some(&0));
        a.tcp_connections(&open, 5_000);
        assert_eq!(a.take(6_000).circuits, vec![(c, 5_000, 0)]);
    }
}
