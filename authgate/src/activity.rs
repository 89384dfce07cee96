//! Activity of this worker's circuits, kept in memory and flushed to Redis every second in one
//! pipeline, under the keys Backend.AI's Manager reads:
//! `circuit.<id>.last_access`, `session.<id>.last_access` (epoch seconds, TTL 2 days, never
//! moved backwards) and `circuit.<id>.requests` (a counter).
//!
//! Sources: requests ForwardAuth lets through to circuits counted there (`c=1`: their routers
//! write no access log), requests the fast-path plugin counted (`fastpath::counter`),
//! access-log events (one per finished request of the other circuits;
//! a WebSocket twin router's record only ends its socket), authorized WebSocket upgrades (held
//! by their `Sec-WebSocket-Key` until any access-log record of that request arrives, whatever
//! its status: an open socket keeps its circuit and sessions active, a refused upgrade is
//! released by its own record), and Traefik's `traefik_open_connections` per port entrypoint for TCP
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
    /// Open (authorized, no access-log record yet) WebSockets: `Sec-WebSocket-Key` → count.
    websockets: HashMap<String, u32>,
    /// Something changed since the last successful flush.
    dirty: bool,
    /// Listed in a circuit map at least once (so its absence from a later map means deleted).
    mapped: bool,
    /// When the state was created (epoch ms).
    since_ms: i64,
    /// Login sessions (hashes) whose cookies opened WebSockets here (bounded): a revoked
    /// login session's live connections are cut with their circuit's.
    login_sessions: HashSet<String>,
}

/// A circuit that was never in a map (created after the last poll) keeps its WebSockets this
/// long before it is taken for a circuit that no longer exists.
const UNMAPPED_GRACE_MS: i64 = 60_000;

/// How long one flush may wait for Redis (connecting, then writing the counts).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Most open WebSocket keys remembered per circuit (the key comes from the client).
const MAX_WEBSOCKETS_PER_CIRCUIT: usize = 65_536;

impl CircuitState {
    fn open(&self) -> u32 {
        self.websockets.values().sum()
    }
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
    /// Extra origins (normalized) allowed to use each circuit's cookie cross-origin.
    pub origins: HashMap<Uuid, Vec<String>>,
    /// Where each circuit's connections go (to cut them when it ends).
    pub ends: HashMap<Uuid, crate::cut::Ends>,
    /// The owner of each interactive circuit.
    pub users: HashMap<Uuid, Uuid>,
}

#[derive(Default)]
struct State {
    circuits: HashMap<Uuid, CircuitState>,
    map: CircuitMap,
}

impl State {
    /// A circuit's state, created at `now_ms` (already mapped if the current map lists it).
    fn entry(&mut self, circuit: Uuid, now_ms: i64) -> &mut CircuitState {
        let mapped = self.map.sessions.contains_key(&circuit);
        self.circuits
            .entry(circuit)
            .or_insert_with(|| CircuitState {
                since_ms: now_ms,
                mapped,
                ..CircuitState::default()
            })
    }
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
        let c = s.entry(e.circuit, e.at_ms);
        c.last_ms = c.last_ms.max(e.at_ms);
        c.pending += u64::from(e.counted);
        c.dirty = true;
    }

    /// A request ForwardAuth let through to a circuit that is counted there (its router
    /// writes no access-log record).
    pub fn request(&self, circuit: Uuid, now_ms: i64) {
        self.requests(circuit, 1, now_ms);
    }

    /// Requests of `circuit` not yet flushed.
    #[cfg(test)]
    pub(crate) fn pending(&self, circuit: Uuid) -> u64 {
        self.lock().circuits.get(&circuit).map_or(0, |c| c.pending)
    }

    /// `n` requests of `circuit`, the last at `at_ms` (the fast path's counts).
    pub fn requests(&self, circuit: Uuid, n: u64, at_ms: i64) {
        let mut s = self.lock();
        let c = s.entry(circuit, at_ms);
        c.last_ms = c.last_ms.max(at_ms);
        c.pending += n;
        c.dirty = true;
    }

    /// The access-log record of a request that carried `Sec-WebSocket-Key: key` arrived
    /// (closed socket, refused upgrade, denial): it no longer holds its circuit active.
    pub fn websocket_ended(&self, circuit: Uuid, key: &str) {
        let mut s = self.lock();
        let Some(c) = s.circuits.get_mut(&circuit) else {
            return;
        };
        if let Some(n) = c.websockets.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                c.websockets.remove(key);
            }
        }
    }

    /// An authorized WebSocket upgrade for `circuit` with `Sec-WebSocket-Key: key` at `now_ms`.
    pub fn websocket_opened(&self, circuit: Uuid, key: &str, login_session: &str, now_ms: i64) {
        let mut s = self.lock();
        let c = s.entry(circuit, now_ms);
        if !login_session.is_empty() && c.login_sessions.len() < MAX_WEBSOCKETS_PER_CIRCUIT {
            c.login_sessions.insert(login_session.to_string());
        }
        if c.websockets.len() < MAX_WEBSOCKETS_PER_CIRCUIT || c.websockets.contains_key(key) {
            *c.websockets.entry(key.to_string()).or_default() += 1;
        }
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

    /// Extra origins allowed on a circuit, as the provider last said.
    pub fn origins_of(&self, circuit: Uuid) -> Vec<String> {
        self.lock()
            .map
            .origins
            .get(&circuit)
            .cloned()
            .unwrap_or_default()
    }

    pub fn open_websockets(&self, circuit: Uuid) -> u32 {
        self.lock().circuits.get(&circuit).map_or(0, |c| c.open())
    }

    /// A new circuit map, fetched at `now_ms`. Circuits that left it are deleted: their
    /// WebSockets no longer count (a socket Traefik still holds must not keep anything
    /// alive), and their state goes once it has nothing left to flush. A circuit never seen in
    /// a map may be newer than the map and keeps its sockets for `UNMAPPED_GRACE_MS`. Returns
    /// the circuits the new map no longer lists, with where their connections went (to be cut).
    pub fn set_map(&self, map: CircuitMap, now_ms: i64) -> Vec<(Uuid, crate::cut::Ends)> {
        let mut s = self.lock();
        let ended: Vec<(Uuid, crate::cut::Ends)> = (s.map.ends.iter())
            .filter(|(id, _)| !map.sessions.contains_key(id))
            .map(|(id, e)| (*id, e.clone()))
            .collect();
        let live: HashSet<Uuid> = map.sessions.keys().copied().collect();
        for (id, c) in s.circuits.iter_mut() {
            if live.contains(id) {
                c.mapped = true;
            } else if c.mapped || now_ms - c.since_ms > UNMAPPED_GRACE_MS {
                c.websockets.clear();
            }
        }
        s.circuits
            .retain(|id, c| live.contains(id) || c.dirty || !c.websockets.is_empty());
        s.map = map;
        ended
    }

    /// Backends used by the mapped circuits other than `except` (not to be cut by address).
    pub fn backends_except(&self, except: &[Uuid]) -> HashSet<String> {
        let s = self.lock();
        (s.map.ends.iter())
            .filter(|(id, _)| !except.contains(id))
            .flat_map(|(_, e)| e.backends.iter().cloned())
            .collect()
    }

    /// The circuits where WebSockets of `login_session` were opened, with where their
    /// connections go.
    pub fn ends_of_login_session(&self, login_session: &str) -> Vec<(Uuid, crate::cut::Ends)> {
        let s = self.lock();
        (s.circuits.iter())
            .filter(|(_, c)| c.login_sessions.contains(login_session))
            .filter_map(|(id, _)| Some((*id, s.map.ends.get(id)?.clone())))
            .collect()
    }

    /// The circuits `user` owns, with where their connections go.
    pub fn ends_of_user(&self, user: Uuid) -> Vec<(Uuid, crate::cut::Ends)> {
        let s = self.lock();
        (s.map.users.iter())
            .filter(|(_, u)| **u == user)
            .filter_map(|(id, _)| Some((*id, s.map.ends.get(id)?.clone())))
            .collect()
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
            let c = s.entry(id, now_ms);
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
            if !c.websockets.is_empty() {
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
            let c = s.entry(*id, *at);
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
                FLUSH_TIMEOUT,
                appproxy_common::redis_conn::manager(&redis, FLUSH_TIMEOUT),
            )
            .await
            .ok()
            .and_then(Result::ok);
        }
        let result = match con.as_mut() {
            Some(c) => match tokio::time::timeout(FLUSH_TIMEOUT, write(c, &f)).await {
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
            counted: true,
        }
    }

    fn map_of(circuits: &[Uuid]) -> CircuitMap {
        CircuitMap {
            sessions: circuits.iter().map(|c| (*c, vec![])).collect(),
            ..CircuitMap::default()
        }
    }

    #[test]
    fn counts_last_access_sessions_and_restore() {
        let a = Activity::new();
        let (c, s1, s2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        a.set_map(
            CircuitMap {
                sessions: HashMap::from([(c, vec![s1, s2])]),
                ..CircuitMap::default()
            },
            0,
        );
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
    fn websockets_keep_circuits_active_until_their_record_arrives() {
        let a = Activity::new();
        let c = Uuid::new_v4();
        a.set_map(map_of(&[c]), 0);
        a.websocket_opened(c, "k1", "", 1_000);
        a.websocket_opened(c, "k2", "", 1_000);
        a.websocket_opened(c, "k2", "", 1_000);
        assert_eq!(a.take(10_000).circuits, vec![(c, 10_000, 0)]);
        a.apply(&ev(c, 11_000, true));
        a.websocket_ended(c, "k2");
        assert_eq!(a.open_websockets(c), 2, "a refcount per key");
        assert_eq!(a.take(20_000).circuits, vec![(c, 20_000, 1)]);
        a.websocket_ended(c, "k2");
        a.websocket_ended(c, "k2");
        a.websocket_ended(c, "unknown");
        assert_eq!(
            a.open_websockets(c),
            1,
            "never below zero, other keys untouched"
        );
        a.websocket_ended(c, "k1");
        assert_eq!(a.open_websockets(c), 0);
        assert!(
            a.take(40_000).circuits.is_empty(),
            "closed: idle from now on"
        );
    }

    #[test]
    fn websockets_of_deleted_circuits_are_dropped() {
        let a = Activity::new();
        let (gone, fresh, kept) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        a.set_map(map_of(&[gone, kept]), 0);
        a.websocket_opened(gone, "k", "", 1_000);
        a.websocket_opened(kept, "k", "", 1_000);
        // Opened before any map listed it: kept through a map that does not know it yet.
        a.websocket_opened(fresh, "k", "", 1_000);
        a.take(1_500);
        a.set_map(map_of(&[kept]), 2_000);
        assert_eq!(a.open_websockets(gone), 0, "deleted circuit");
        assert_eq!(a.open_websockets(kept), 1);
        assert_eq!(a.open_websockets(fresh), 1, "newer than the map");
        let mut want = vec![(fresh, 3_000, 0), (kept, 3_000, 0)];
        want.sort();
        assert_eq!(a.take(3_000).circuits, want);
        // Never listed for longer than the grace: taken for gone.
        a.set_map(map_of(&[kept]), 1_000 + UNMAPPED_GRACE_MS + 1);
        assert_eq!(a.open_websockets(fresh), 0);
    }

    #[test]
    fn tcp_connections_mark_their_circuit() {
        let a = Activity::new();
        let (c, idle) = (Uuid::new_v4(), Uuid::new_v4());
        a.set_map(
            CircuitMap {
                sessions: HashMap::from([(c, vec![]), (idle, vec![])]),
                tcp_ports: HashMap::from([(10205, c), (10206, idle)]),
                ..CircuitMap::default()
            },
            0,
        );
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

    #[test]
    fn forward_auth_requests_count_and_twin_records_only_move_the_clock() {
        let a = Activity::new();
        let c = Uuid::new_v4();
        a.set_map(map_of(&[c]), 0);
        a.request(c, 2_000);
        a.request(c, 3_000);
        let mut closed = ev(c, 9_000, true);
        closed.counted = false;
        a.apply(&closed);
        let f = a.take(10_000);
        assert_eq!(f.circuits, vec![(c, 9_000, 2)]);
    }
}
