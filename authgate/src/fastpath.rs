//! The fast path's state directory (`[fast_path] dir`): what the plugin inside Traefik reads,
//! through a read-only mount, to decide cookie circuits without asking authgate.
//!
//! - `keys/<circuit>`: the circuit's derived cookie key (hex), written before authgate mints
//!   the circuit's first cookie (at `/setup`) and for every circuit of the map; removed when
//!   the circuit leaves it. Never the cookie secret itself.
//! - `state.json`: the revocation set, whether it was ever loaded, the login URL, the leeway,
//!   the provider's public key (inference tokens) and whether the app sees them, with the
//!   revocation set's version; rewritten within [`TICK`] of a change.
//! - `alive`: `<epoch seconds> <version>`, rewritten every second (the version is
//!   `<authgate's start, ms>-<revocation set version>`). The plugin refuses
//!   everything private once it is `appproxy_fastpath::STALE_SECS` (3 s) old: authgate gone means
//!   fail closed, as with ForwardAuth.
//!
//! - `counts/` (read-write for the plugin): one file per plugin instance,
//!   `<circuit>.<instance>`, one byte per request it let through; [`counter`] adds each file's
//!   growth to the circuit's activity (the circuit's router writes no access-log record).
//!
//! Every file authgate writes goes to a temporary name and is renamed, so a reader never sees
//! half of one.

use std::{
    collections::{HashMap, HashSet},
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{revocation::Revocations, token::Keys};

/// How often the writer looks for a changed revocation set.
pub const TICK: Duration = Duration::from_millis(200);

pub struct FastPath {
    dir: PathBuf,
    keys: Keys,
    /// What `state.json` carries besides the revocations: the login URL, the leeway, the
    /// provider's public key (hex) and whether inference tokens reach the app.
    settings: Settings,
    /// Circuits whose key file is written, and when.
    written: Mutex<HashMap<Uuid, std::time::Instant>>,
    /// When this authgate started (ms): the first half of every state version, so a
    /// restarted authgate's state is never taken for the one before.
    epoch: i64,
    /// `state.json` and `alive` were written with a loaded revocation set.
    synced_written: std::sync::atomic::AtomicBool,
}

/// Write `bytes` to `path` through a temporary file of its own (`<path>.<n>.tmp`: two
/// writers of one file never share one) and a rename.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{n}.tmp"));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A key written this recently stays even when the map does not list its circuit yet (a
/// circuit created after the map was fetched gets its key at `/setup`).
const KEY_GRACE: Duration = Duration::from_secs(60);

fn epoch_secs() -> i64 {
    crate::activity::now_ms() / 1000
}

/// The settings the plugin shares with authgate.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub login_url: Option<String>,
    pub leeway: u64,
    /// The provider's Ed25519 public key (raw), for inference tokens.
    pub provider_key: Option<[u8; 32]>,
    pub forward_authorization: bool,
}

/// The raw 32-byte key of an Ed25519 public key in PEM (SubjectPublicKeyInfo).
pub fn ed25519_public_raw(pem: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    let key = der.strip_prefix(&SPKI_PREFIX[..])?;
    key.try_into().ok()
}

impl FastPath {
    /// Create the directory (and `keys/`); keys left from an earlier run are rewritten as
    /// circuits come (the secret may have changed).
    pub fn new(dir: &Path, keys: Keys, settings: Settings) -> io::Result<FastPath> {
        std::fs::create_dir_all(dir.join("keys"))?;
        std::fs::create_dir_all(dir.join("counts"))?;
        Ok(FastPath {
            dir: dir.to_path_buf(),
            keys,
            settings,
            written: Mutex::default(),
            epoch: crate::activity::now_ms(),
            synced_written: Default::default(),
        })
    }

    /// Whether the plugin can see this authgate's loaded revocation set (`/health`).
    pub fn synced_written(&self) -> bool {
        self.synced_written
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn key_path(&self, circuit: Uuid) -> PathBuf {
        self.dir
            .join("keys")
            .join(circuit.as_hyphenated().to_string())
    }

    /// Make sure the plugin can check `circuit`'s cookies (before minting one).
    pub fn ensure_key(&self, circuit: Uuid) -> io::Result<()> {
        let written = self.written.lock().expect("fast path lock");
        if written.contains_key(&circuit) {
            return Ok(());
        }
        drop(written);
        let hex = appproxy_gatecore::session::key_to_hex(&self.keys.cookie_key(circuit));
        replace(&self.key_path(circuit), hex.as_bytes())?;
        let now = std::time::Instant::now();
        self.written
            .lock()
            .expect("fast path lock")
            .insert(circuit, now);
        Ok(())
    }

    /// The map's circuits have keys; circuits gone from it lose theirs (unless written in the
    /// last [`KEY_GRACE`]: newer than the map).
    pub fn sync_keys(&self, circuits: &HashSet<Uuid>) {
        for c in circuits {
            if let Err(e) = self.ensure_key(*c) {
                tracing::error!(error = %e, circuit = %c, "Fast-path key not written");
            }
        }
        let recent: HashSet<Uuid> = {
            let mut written = self.written.lock().expect("fast path lock");
            written.retain(|c, at| circuits.contains(c) || at.elapsed() < KEY_GRACE);
            written.keys().copied().collect()
        };
        let Ok(entries) = std::fs::read_dir(self.dir.join("keys")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            // Another writer's temporary file: its rename is its own business.
            if name.ends_with(".tmp") {
                continue;
            }
            let keep = Uuid::parse_str(name).is_ok_and(|id| recent.contains(&id));
            if !keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn write_state(&self, revoked: &Revocations) -> io::Result<u64> {
        let (version, revocations) = revoked.snapshot();
        let state = json!({
            "version": format!("{}-{version}", self.epoch),
            "synced": revoked.synced(),
            "login_url": self.settings.login_url,
            "leeway": self.settings.leeway,
            "provider_key": self.settings.provider_key.as_ref().map(appproxy_gatecore::session::key_to_hex),
            "forward_authorization": self.settings.forward_authorization,
            "revocations": revocations,
        });
        replace(&self.dir.join("state.json"), state.to_string().as_bytes())?;
        Ok(version)
    }

    fn write_alive(&self, version: u64) -> io::Result<()> {
        replace(
            &self.dir.join("alive"),
            format!("{} {}-{version}\n", epoch_secs(), self.epoch).as_bytes(),
        )
    }
}

/// With `[fast_path] dir`: the state directory and its two tasks (the writer of `state.json`
/// and `alive`, the counter of `counts/`), stopped with `shutdown`.
pub fn start(
    config: &crate::config::Config,
    keys: &Keys,
    revoked: &Arc<Revocations>,
    activity: &Arc<crate::activity::Activity>,
    shutdown: &watch::Receiver<bool>,
) -> io::Result<Option<Arc<FastPath>>> {
    let Some(dir) = &config.fast_path.dir else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(&config.keys.provider_public_key_file)?;
    let settings = Settings {
        login_url: config.session.login_url.clone(),
        leeway: config.session.leeway_seconds,
        provider_key: ed25519_public_raw(&pem),
        forward_authorization: config.session.forward_inference_authorization,
    };
    let fp = Arc::new(FastPath::new(dir, keys.clone(), settings)?);
    tokio::spawn(writer(fp.clone(), revoked.clone(), shutdown.clone()));
    tokio::spawn(counter(fp.clone(), activity.clone(), shutdown.clone()));
    Ok(Some(fp))
}

/// A count file unchanged this long is taken away (its instance is gone: Traefik drops idle
/// instances within a few of Go's forced collections, every two minutes).
pub const COUNT_IDLE: Duration = Duration::from_secs(600);
/// A count file this large is taken too (one byte per request: a million requests).
pub const COUNT_ROTATE_BYTES: u64 = 1 << 20;
/// A taken file is read a last time and deleted after this long (an instance notices within a
/// second that its file was taken and opens a new one).
const TAKEN_GRACE: Duration = Duration::from_secs(3);

/// What the counter knows of one count file.
struct Seen {
    len: u64,
    changed_ms: i64,
    /// When it was renamed to `…taken`.
    taken_ms: Option<i64>,
}

/// The circuit of a count file's name (`<circuit>.<instance>[.taken]`).
fn circuit_of(name: &str) -> Option<Uuid> {
    Uuid::parse_str(name.split('.').next()?).ok()
}

/// One look at `counts/`: the growth of every file since the last look goes to its circuit
/// (the last write's time as its last access); idle and large files are taken away, taken ones
/// deleted after [`TAKEN_GRACE`]. `first`: files already there count from their present length (an
/// earlier authgate counted what they hold).
fn count_once(
    dir: &Path,
    seen: &mut HashMap<String, Seen>,
    activity: &crate::activity::Activity,
    now_ms: i64,
    first: bool,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut present = HashSet::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let (Some(circuit), Ok(meta)) = (circuit_of(&name), e.metadata()) else {
            continue;
        };
        present.insert(name.clone());
        let len = meta.len();
        let at_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(now_ms, |d| d.as_millis() as i64);
        let s = seen.entry(name.clone()).or_insert(Seen {
            len: if first { len } else { 0 },
            changed_ms: now_ms,
            taken_ms: name.ends_with(".taken").then_some(now_ms),
        });
        if len > s.len {
            activity.requests(circuit, len - s.len, at_ms.min(now_ms));
            s.len = len;
            s.changed_ms = now_ms;
        }
        match s.taken_ms {
            Some(t) if now_ms - t >= TAKEN_GRACE.as_millis() as i64 => {
                let _ = std::fs::remove_file(e.path());
                present.remove(&name);
            }
            // Idle (its instance is gone), or large (a busy circuit's file would grow without
            // end): taken; its instance opens a new one within a second.
            None if now_ms - s.changed_ms >= COUNT_IDLE.as_millis() as i64
                || s.len >= COUNT_ROTATE_BYTES =>
            {
                let taken = format!("{name}.taken");
                if std::fs::rename(e.path(), dir.join(&taken)).is_ok() {
                    let len = s.len;
                    present.insert(taken.clone());
                    seen.insert(
                        taken,
                        Seen {
                            len,
                            changed_ms: now_ms,
                            taken_ms: Some(now_ms),
                        },
                    );
                }
            }
            _ => {}
        }
    }
    seen.retain(|name, _| present.contains(name));
}

/// Count the fast path's requests every second until shutdown (a last look then). Each look
/// (a `stat` per count file: hundreds with `scope = "all"`) runs on the blocking pool, not on
/// a thread that serves ForwardAuth.
pub async fn counter(
    fp: Arc<FastPath>,
    activity: Arc<crate::activity::Activity>,
    mut shutdown: watch::Receiver<bool>,
) {
    let dir = fp.dir.join("counts");
    // `None`: the next look counts files from their present length (at start, and after a
    // look that panicked — none is known — rather than counting their contents twice).
    let look = |seen: Option<HashMap<String, Seen>>| {
        let (dir, activity) = (dir.clone(), activity.clone());
        async move {
            let now = crate::activity::now_ms();
            let first = seen.is_none();
            let mut seen = seen.unwrap_or_default();
            tokio::task::spawn_blocking(move || {
                count_once(&dir, &mut seen, &activity, now, first);
                seen
            })
            .await
            .ok()
        }
    };
    let mut seen = None;
    loop {
        seen = look(seen).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => break,
        }
    }
    look(seen).await;
}

/// Keep `state.json` and `alive` current until shutdown; then remove `alive`, so the plugin
/// fails closed at once rather than after `appproxy_fastpath::STALE_SECS` (3 s).
pub async fn writer(
    fp: Arc<FastPath>,
    revoked: Arc<Revocations>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut written: Option<(u64, bool)> = None;
    let mut alive_at = i64::MIN;
    loop {
        let now = (revoked.version(), revoked.synced());
        if written != Some(now) {
            match fp.write_state(&revoked) {
                Ok(v) => {
                    written = Some((v, now.1));
                    alive_at = i64::MIN;
                }
                Err(e) => tracing::error!(error = %e, "Fast-path state not written"),
            }
        }
        if let Some((v, _)) = written
            && epoch_secs() != alive_at
        {
            match fp.write_alive(v) {
                Ok(()) => {
                    alive_at = epoch_secs();
                    let synced = written.is_some_and(|(_, s)| s);
                    fp.synced_written
                        .store(synced, std::sync::atomic::Ordering::Release);
                }
                Err(e) => tracing::error!(error = %e, "Fast-path heartbeat not written"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => break,
        }
    }
    let _ = std::fs::remove_file(fp.dir.join("alive"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_files_grow_into_requests_and_idle_ones_are_taken_then_deleted() {
        let dir = std::env::temp_dir().join(format!("counts-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, other) = (Uuid::new_v4(), Uuid::new_v4());
        let a = dir.join(format!("{c}.01"));
        std::fs::write(&a, b"\n\n").unwrap();
        std::fs::write(dir.join("junk"), b"\n").unwrap();
        let activity = crate::activity::Activity::new();
        let mut seen = HashMap::new();
        // At start: what is there was counted before.
        count_once(&dir, &mut seen, &activity, 1_000, true);
        assert_eq!(activity.pending(c), 0);
        std::fs::write(&a, b"\n\n\n\n\n").unwrap();
        std::fs::write(dir.join(format!("{other}.02")), b"\n").unwrap();
        count_once(&dir, &mut seen, &activity, 2_000, false);
        assert_eq!((activity.pending(c), activity.pending(other)), (3, 1));
        // Idle for COUNT_IDLE: taken; a late write is still counted; then deleted.
        let idle = 2_000 + COUNT_IDLE.as_millis() as i64;
        count_once(&dir, &mut seen, &activity, idle, false);
        let taken = dir.join(format!("{c}.01.taken"));
        assert!(taken.exists() && !a.exists());
        std::fs::write(&taken, b"\n\n\n\n\n\n").unwrap();
        count_once(&dir, &mut seen, &activity, idle + 1_000, false);
        assert_eq!(activity.pending(c), 4);
        count_once(&dir, &mut seen, &activity, idle + 3_000, false);
        assert!(!taken.exists());
        // A busy circuit's file is taken once large, counted to its last byte.
        let big = dir.join(format!("{other}.02"));
        std::fs::write(&big, vec![b'\n'; COUNT_ROTATE_BYTES as usize]).unwrap();
        count_once(&dir, &mut seen, &activity, idle + 4_000, false);
        assert!(!big.exists() && dir.join(format!("{other}.02.taken")).exists());
        assert_eq!(activity.pending(other), 1 + COUNT_ROTATE_BYTES);
        assert!(dir.join("junk").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_follow_the_map_but_a_fresh_one_outlives_an_older_map() {
        let dir = std::env::temp_dir().join(format!("fp-keys-{}", Uuid::new_v4().simple()));
        let keys = crate::token::Keys::new(
            crate::decision::tests::PROVIDER_PUBLIC.as_bytes(),
            crate::decision::tests::COOKIE_SECRET,
            0,
        )
        .unwrap();
        let fp = FastPath::new(&dir, keys.clone(), Settings::default()).unwrap();
        let (mapped, fresh, gone) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        // A key left by an earlier run for a circuit no map lists any more.
        std::fs::write(dir.join(format!("keys/{gone}")), "00").unwrap();
        // Set up a moment ago, not in the map this poll fetched.
        fp.ensure_key(fresh).unwrap();
        fp.sync_keys(&HashSet::from([mapped]));
        let read = |c: Uuid| std::fs::read_to_string(dir.join(format!("keys/{c}"))).ok();
        assert_eq!(
            read(mapped).as_deref(),
            Some(appproxy_gatecore::session::key_to_hex(&keys.cookie_key(mapped)).as_str())
        );
        assert!(read(fresh).is_some() && read(gone).is_none());
        // Two writers of one key never trip over each other's temporary file.
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| replace(&dir.join("keys/x"), b"v").unwrap());
            }
        });
        assert!(
            std::fs::read_dir(dir.join("keys"))
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_raw_key_comes_out_of_a_pem_public_key_and_nothing_else_does() {
        let pem = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAwv4NvpdVm2hfnQPOS24NSaIw16e3tCnOWPkbJ3HIMGo=
-----END PUBLIC KEY-----
";
        let raw = super::ed25519_public_raw(pem).unwrap();
        assert_eq!(raw[0], 0xc2);
        assert_eq!(raw[31], 0x6a);
        assert!(
            super::ed25519_public_raw("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_none()
        );
        assert!(super::ed25519_public_raw("junk").is_none());
    }
}
