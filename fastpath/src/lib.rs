//! The fast path: the per-request decision of a cookie-authorized circuit, run inside Traefik
//! as an http-wasm middleware instead of a ForwardAuth round trip to authgate. The decision is
//! [`appproxy_gatecore::decision::decide`], the same code authgate runs; this crate adds what
//! the plugin needs around it, pure and testable on the host:
//!
//! - [`Config`]: the middleware's dynamic config from etcd (circuit, generation, mode, extra
//!   origins, public) — nothing secret. Cookie circuits check their cookie (the circuit's own
//!   key), inference circuits their bearer token (the provider's public key, `bearer.rs`);
//!   public circuits are only counted (their routers then export no access-log record either).
//! - The worker's state directory, which authgate writes and Traefik mounts read-only into the
//!   plugin (`/appproxy`): `keys/<circuit>` (the circuit's derived cookie key, hex), `state.json`
//!   (the revocation set, whether it is synced, the login URL, the provider's public key; a
//!   version), `alive` (epoch seconds and the state's version, rewritten every second).
//!   [`Gate`] reads the key once, looks at `alive` on every request (reads it when replaced),
//!   the state again when its version moved. A missing or stale `alive` (authgate gone for
//!   [`STALE_SECS`]) fails closed.
//! - [`Gate::handle`]: a request in, [`Outcome`] out: the headers to set or remove and go on,
//!   or the refusal to write.
//!
//! `src/abi.rs` is the thin ABI shell, compiled for `wasm32-wasip1` only: the crate's `cdylib`
//! is the plugin (a WASI reactor: Traefik runs its `_initialize`, then calls its exports).

use std::{cell::RefCell, collections::HashMap, path::PathBuf};

use appproxy_gatecore::{
    TokenError,
    answer::{Refusal, wants_json},
    decision::{self, Allow, Bearer, Credentials, Deny, Forwarded, Mode, Settings, Target},
    remembered::Remembered,
    revocation,
    session::{self, SessionClaims},
};
use serde::Deserialize;
use uuid::Uuid;

/// `alive` older than this (authgate stopped writing): nothing private is let through.
pub const STALE_SECS: i64 = 3;
/// Where Traefik mounts the state directory in the guest (read-only).
pub const MOUNT: &str = "/appproxy";
/// Where Traefik mounts the counts directory in the guest (read-write, `count.rs`).
pub const COUNTS_MOUNT: &str = "/appproxy-counts";
/// A cached key that fails a signature is read again after this long (a rotated secret).
const KEY_RELOAD_SECS: i64 = 5;

/// A config value as Traefik hands it over: etcd gives strings, a file provider may give
/// numbers and booleans.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Number(i64),
    Flag(bool),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Number(n) => n.to_string(),
            Scalar::Flag(b) => b.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    circuit: Scalar,
    generation: Scalar,
    mode: Scalar,
    #[serde(default)]
    origins: Option<Scalar>,
    #[serde(default)]
    public: Option<Scalar>,
    #[serde(default)]
    state_dir: Option<Scalar>,
    #[serde(default)]
    counts_dir: Option<Scalar>,
}

/// The middleware's dynamic config: `circuit`, `generation`, `mode` (`interactive`: cookies,
/// `inference`: bearer tokens), `origins` (extra allowed origins, comma-separated), `public`
/// (`true`: a public circuit, only counted — nothing is checked, no header changed),
/// `stateDir` and `countsDir` (tests only; else [`MOUNT`] and [`COUNTS_MOUNT`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub target: Target,
    pub origins: Vec<String>,
    pub state_dir: PathBuf,
    /// Where each allowed request is counted (read-write).
    pub counts_dir: PathBuf,
}

impl Config {
    pub fn parse(json: &[u8]) -> Result<Config, String> {
        let raw: RawConfig =
            serde_json::from_slice(json).map_err(|e| format!("fast-path config: {e}"))?;
        let circuit = Uuid::parse_str(&raw.circuit.text())
            .map_err(|_| "fast-path config: circuit is not a UUID".to_string())?;
        let generation = raw
            .generation
            .text()
            .parse()
            .map_err(|_| "fast-path config: generation is not a number".to_string())?;
        let mode = match raw.mode.text().as_str() {
            "interactive" => Mode::Interactive,
            "inference" => Mode::Inference,
            other => return Err(format!("fast-path config: mode {other:?} is not served")),
        };
        let origins = raw
            .origins
            .map(Scalar::text)
            .unwrap_or_default()
            .split(',')
            .filter_map(appproxy_gatecore::origin::normalize_origin)
            .collect();
        let public = match raw.public.map(Scalar::text).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("fast-path config: public {other:?} is not a bool")),
        };
        Ok(Config {
            target: Target {
                circuit,
                generation,
                mode,
                public,
            },
            origins,
            counts_dir: raw
                .counts_dir
                .map_or_else(|| PathBuf::from(COUNTS_MOUNT), |d| PathBuf::from(d.text())),
            state_dir: raw
                .state_dir
                .map_or_else(|| PathBuf::from(MOUNT), |d| PathBuf::from(d.text())),
        })
    }
}

/// `state.json`, as authgate writes it.
#[derive(Debug, Default, Deserialize)]
pub struct State {
    /// `<authgate's start, ms>-<revocation set version>`: never the same for two different
    /// sets, across authgate restarts too.
    pub version: String,
    /// The revocation set was loaded from Redis at least once.
    pub synced: bool,
    #[serde(default)]
    pub login_url: Option<String>,
    /// Seconds of clock skew allowed on a credential's `nbf` and `exp`.
    #[serde(default)]
    pub leeway: i64,
    /// The provider's Ed25519 public key (hex): inference tokens are checked against it.
    #[serde(default)]
    pub provider_key: Option<String>,
    /// authgate's `[session] forward_inference_authorization`: the app sees the token.
    #[serde(default)]
    pub forward_authorization: bool,
    /// `u:<user>` / `l:<login session hash>` → epoch seconds of the revocation.
    #[serde(default)]
    pub revocations: HashMap<String, i64>,
}

/// `alive`: `<epoch seconds> <state version>`.
pub fn parse_alive(s: &str) -> Option<(i64, &str)> {
    let (at, version) = s.trim().split_once(' ')?;
    Some((at.parse().ok()?, version))
}

/// What the request comes with. Values that are not UTF-8 are `Err(())`.
pub trait Request {
    fn method(&self) -> String;
    fn uri(&self) -> String;
    fn header(&self, name: &str) -> Vec<Result<String, ()>>;
}

/// What to do with the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Go on to the app with these request headers set (`Some`) or removed (`None`).
    Allow(Vec<(&'static str, Option<String>)>),
    /// Answer with this instead.
    Refuse {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
}

/// One plugin instance: its config and what it read from the state directory.
pub struct Gate {
    config: Config,
    key: Option<(session::Key, i64)>,
    state: State,
    /// The modification time and size of the `alive` last read.
    alive_stamp: Option<(Option<std::time::SystemTime>, u64)>,
    /// The epoch seconds that `alive` said (`None`: missing or unreadable).
    alive_at: Option<i64>,
    /// The provider's key, decoded from the state.
    provider_key: Option<[u8; 32]>,
    bearers: RefCell<bearer::Bearers>,
    /// Cookies verified lately (value → claims) with the key they verified under, so a
    /// browser's repeated requests skip base64, HMAC and JSON; expiry is checked on every hit.
    sessions: RefCell<Remembered<(session::Key, SessionClaims)>>,
    counter: count::Counter,
}

/// Most cookies one instance remembers before it starts over.
const SESSIONS_MAX: usize = 64;

/// What one decision checks against.
struct Creds<'a> {
    key: Option<session::Key>,
    state: &'a State,
    provider_key: Option<[u8; 32]>,
    bearers: &'a RefCell<bearer::Bearers>,
    sessions: &'a RefCell<Remembered<(session::Key, SessionClaims)>>,
    now: i64,
    ready: bool,
}

impl Gate {
    pub fn new(config: Config) -> Gate {
        Gate {
            counter: count::Counter::new(&config.counts_dir, config.target.circuit),
            config,
            key: None,
            state: State::default(),
            alive_stamp: None,
            alive_at: None,
            provider_key: None,
            bearers: RefCell::default(),
            sessions: RefCell::new(Remembered::new(SESSIONS_MAX)),
        }
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.config.state_dir.join(rel)).ok()
    }

    /// Look at `alive` on every request (its time and size: one call) and read it when it was
    /// replaced (authgate writes a new one every second, after `state.json`), then the state
    /// when its version moved. Every instance sees a revocation from the first request after
    /// authgate wrote it: none lets through what another already refused.
    fn refresh(&mut self) {
        let stamp = std::fs::metadata(self.config.state_dir.join("alive"))
            .ok()
            .map(|m| (m.modified().ok(), m.len()));
        if stamp.is_some() && stamp == self.alive_stamp && self.state.synced {
            return;
        }
        self.alive_stamp = stamp;
        let alive = self.read("alive");
        let Some((at, version)) = alive.as_deref().and_then(parse_alive) else {
            self.alive_at = None;
            return;
        };
        self.alive_at = Some(at);
        if version != self.state.version || !self.state.synced {
            match self
                .read("state.json")
                .and_then(|s| serde_json::from_str::<State>(&s).ok())
            {
                Some(s) => {
                    self.provider_key = s.provider_key.as_deref().and_then(session::key_from_hex);
                    self.state = s;
                }
                None => self.alive_at = None,
            }
        }
    }

    fn ready(&self, now: i64) -> bool {
        self.state.synced && self.alive_at.is_some_and(|at| now - at <= STALE_SECS)
    }

    /// The circuit's key: read once; again after a failed signature once it is a few seconds
    /// old.
    fn key(&mut self, now: i64, reload: bool) -> Option<session::Key> {
        let stale = self
            .key
            .is_none_or(|(_, at)| reload && now - at >= KEY_RELOAD_SECS);
        if stale {
            let name = format!("keys/{}", self.config.target.circuit.as_hyphenated());
            if let Some(k) = self.read(&name).as_deref().and_then(session::key_from_hex) {
                self.key = Some((k, now));
            }
        }
        self.key.map(|(k, _)| k)
    }

    /// The decision with the circuit's `key` (the config's origins borrowed, not copied).
    fn decide(
        &self,
        f: &Forwarded<'_>,
        key: Option<session::Key>,
        now: i64,
    ) -> Result<Allow, Deny> {
        let creds = Creds {
            key,
            ready: self.ready(now),
            state: &self.state,
            provider_key: self.provider_key,
            bearers: &self.bearers,
            sessions: &self.sessions,
            now,
        };
        let settings = Settings {
            forward_inference_authorization: self.state.forward_authorization,
            extra_origins: &self.config.origins,
        };
        decision::decide(f, self.config.target, &creds, &settings)
    }

    /// Decide one request at `now` (epoch seconds).
    pub fn handle(&mut self, req: &impl Request, now: i64) -> Outcome {
        if self.config.target.public {
            return self.count_only(req, now);
        }
        self.refresh();
        let method = vec![Ok(req.method())];
        let uri = vec![Ok(req.uri())];
        let h = |n: &str| req.header(n);
        let owned = [
            h("host"),
            h("cookie"),
            h("authorization"),
            h("referer"),
            h("x-forwarded-proto"),
            h("origin"),
            h("sec-fetch-site"),
            h("access-control-request-method"),
            h("sec-websocket-key"),
            h("content-length"),
            h("transfer-encoding"),
        ];
        fn view(v: &[Result<String, ()>]) -> Vec<Result<&str, ()>> {
            v.iter().map(|r| r.as_deref().map_err(|_| ())).collect()
        }
        let f = Forwarded {
            method: view(&method),
            uri: view(&uri),
            host: view(&owned[0]),
            cookies: view(&owned[1]),
            authorization: view(&owned[2]),
            referer: view(&owned[3]),
            proto: view(&owned[4]),
            origin: view(&owned[5]),
            fetch_site: view(&owned[6]),
            preflight_method: view(&owned[7]),
            websocket_key: view(&owned[8]),
            content_length: view(&owned[9]),
            transfer_encoding: view(&owned[10]),
        };
        let target = self.config.target;
        let key = self.key(now, false);
        let mut verdict = self.decide(&f, key, now);
        if verdict == Err(Deny::BadCookie(TokenError::Signature)) {
            let key = self.key(now, true);
            verdict = self.decide(&f, key, now);
        }
        // What is let through is counted here (the router writes no access-log record for
        // it); a request that cannot be counted is not let through.
        if verdict.is_ok() && !self.counter.count(now) {
            verdict = Err(Deny::NotReady);
        }
        match verdict {
            Ok(a) => {
                // Only what changes: each set or removal is a call into Traefik.
                let sent = |name: &str| match name {
                    "Cookie" => Some(owned[1].as_slice()),
                    "Authorization" => Some(owned[2].as_slice()),
                    "Referer" => Some(owned[3].as_slice()),
                    _ => None,
                };
                let changes = (a.into_app_headers(target.mode).into_iter())
                    .filter(|(name, value)| match (value, sent(name)) {
                        (None, Some([])) => false,
                        (Some(v), Some([Ok(was)])) => v != was,
                        _ => true,
                    })
                    .collect();
                Outcome::Allow(changes)
            }
            Err(d) => self.refuse(d, req),
        }
    }

    /// A public circuit: let through as it came (no credential, no header changed, so the app
    /// sees what a public route without the plugin shows it) and counted. Nothing of authgate's
    /// state is looked at: a public route stays up while authgate is down, its requests
    /// counted in the files authgate reads when it is back. Only a request that cannot be
    /// counted is refused, as on private circuits.
    fn count_only(&mut self, req: &impl Request, now: i64) -> Outcome {
        if self.counter.count(now) {
            Outcome::Allow(Vec::new())
        } else {
            self.refuse(Deny::NotReady, req)
        }
    }

    /// The answer to a denied request (JSON or HTML as the client accepts; a login link when
    /// the browser's access is gone).
    fn refuse(&self, d: Deny, req: &impl Request) -> Outcome {
        let lost = matches!(d, Deny::Revoked | Deny::NoCookie | Deny::BadCookie(_));
        let link = self.state.login_url.as_deref().filter(|_| lost);
        let accept: String = req
            .header("accept")
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(",");
        let (ctype, body) = Refusal {
            status: d.status(),
            code: d.code(),
            msg: d.message(),
            link,
        }
        .body(wants_json(&accept));
        let mut headers = vec![
            ("Content-Type", ctype.to_string()),
            ("Cache-Control", "no-store".to_string()),
            ("Referrer-Policy", "no-referrer".to_string()),
        ];
        if d.status() == 503 {
            headers.push(("Retry-After", "1".to_string()));
        }
        Outcome::Refuse {
            status: d.status(),
            headers,
            body,
        }
    }
}

impl Credentials for Creds<'_> {
    fn session(
        &self,
        token: &str,
        circuit: Uuid,
        generation: i64,
    ) -> Result<SessionClaims, TokenError> {
        // No key file (authgate has not written it): no cookie of this circuit can verify.
        let key = self.key.ok_or(TokenError::Signature)?;
        let leeway = self.state.leeway;
        // The audience was checked when the cookie was (this instance serves one circuit and
        // generation; the key is the circuit's own).
        if let Some((k, c)) = self.sessions.borrow().get(token)
            && *k == key
        {
            return session::within(c.nbf, c.exp, self.now, leeway).map(|()| c.clone());
        }
        let c = session::verify(token, &key, circuit, generation, self.now, leeway)?;
        self.sessions.borrow_mut().put(token, (key, c.clone()));
        Ok(c)
    }

    fn inference(&self, token: &str, circuit: Uuid) -> Result<Bearer, TokenError> {
        self.bearers.borrow_mut().verify(
            token,
            self.provider_key.as_ref(),
            circuit,
            self.now,
            self.state.leeway,
        )
    }

    fn is_revoked(&self, user: &str, ls: &str, iat: i64) -> bool {
        let set = &self.state.revocations;
        revocation::is_revoked(|f| set.get(f).copied(), user, ls, iat)
    }

    fn ready(&self) -> bool {
        self.ready
    }
}

#[cfg(target_arch = "wasm32")]
mod abi;
mod bearer;
mod count;

#[cfg(test)]
mod tests;
