//! TLS for the internal links, with rustls (ring) and no OpenSSL: the PEM files an operator
//! names, checked at `--check-config` and at start; an HTTPS listener for axum whose
//! certificate is re-read when its files change; the Redis client for `rediss://` URLs.
//!
//! A link configured for TLS never falls back to plain text: a missing or unreadable file, a
//! file without the expected PEM block, or a certificate the peer does not accept is an error
//! that names the file or the link.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use serde::Deserialize;
use tokio::net::TcpListener;

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path}: {reason}")]
    Pem {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Install ring as the process's rustls provider (every TLS client and server here uses it).
/// Idempotent; both binaries call it first thing.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How a client checks the server of one link (and proves itself, for mutual TLS).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTls {
    /// PEM file of the CA certificates to trust for this link, instead of the system's.
    pub ca_file: Option<String>,
    /// PEM client certificate (chain) for mutual TLS; needs `key_file`.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
}

/// The PEM contents of a [`ClientTls`], read and checked.
#[derive(Debug, Clone, Default)]
pub struct ClientPem {
    pub ca: Option<Vec<u8>>,
    /// Certificate chain and key, as PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Whether any file is named (then the link must be a TLS one).
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Every problem with this section, prefixed with `section` (`[etcd.tls]`…): files that
    /// cannot be read or hold no certificate or key, a certificate without its key.
    pub fn check(&self, section: &str, errs: &mut Vec<String>) {
        if let Err(e) = self.load() {
            errs.push(format!("{section}: {e}"));
        }
    }

    /// Read the files.
    pub fn load(&self) -> Result<ClientPem, TlsError> {
        let ca = match &self.ca_file {
            Some(path) => {
                let pem = read("ca_file", path)?;
                certs("ca_file", path, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                let (cert, key) = (read("cert_file", c)?, read("key_file", k)?);
                certs("cert_file", c, &cert)?;
                private_key("key_file", k, &key)?;
                Some((cert, key))
            }
            (None, None) => None,
            _ => {
                return Err(TlsError::Invalid(
                    "cert_file and key_file go together (mutual TLS needs both)".into(),
                ));
            }
        };
        Ok(ClientPem { ca, identity })
    }
}

/// The certificate a server presents: PEM files, re-read when either changes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<String>,
    /// PEM private key of the leaf.
    pub key_file: Option<String>,
}

impl ServerTls {
    /// `Some((cert, key))` when the listener is to serve TLS.
    pub fn files(&self) -> Option<(&str, &str)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }

    /// Every problem with this section: one file without the other, files that do not load
    /// or whose key does not match the certificate.
    pub fn check(&self, section: &str, errs: &mut Vec<String>) {
        match (&self.cert_file, &self.key_file) {
            (None, None) => {}
            (Some(c), Some(k)) => {
                if let Err(e) = load_certified_key(c, k) {
                    errs.push(format!("{section}: {e}"));
                }
            }
            _ => errs.push(format!("{section}: cert_file and key_file go together")),
        }
    }
}

fn read(what: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.into(),
        source,
    })
}

fn certs(
    what: &'static str,
    path: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem {
        what,
        path: path.into(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn private_key(
    what: &'static str,
    path: &str,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what,
        path: path.into(),
        reason: format!("no usable PEM private key ({e})"),
    })
}

/// Load a certificate chain and its key, checking that they belong together.
pub fn load_certified_key(cert_file: &str, key_file: &str) -> Result<CertifiedKey, TlsError> {
    let chain = certs("cert_file", cert_file, &read("cert_file", cert_file)?)?;
    let key = private_key("key_file", key_file, &read("key_file", key_file)?)?;
    let provider = rustls::crypto::ring::default_provider();
    let ck = CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Pem {
        what: "key_file",
        path: key_file.into(),
        reason: e.to_string(),
    })?;
    Ok(ck)
}

/// Serves the certificate of a [`ServerTls`] and re-reads its files (at most every few
/// seconds, on a handshake) when their modification time changed: a renewed certificate is
/// used for new connections without a restart, and open connections are not touched. A
/// renewal that does not load keeps the previous certificate and logs why.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: String,
    key_file: String,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

const RECHECK: Duration = Duration::from_secs(5);

fn stamp(cert_file: &str, key_file: &str) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert_file), m(key_file))
}

impl ReloadingCert {
    pub fn new(cert_file: &str, key_file: &str) -> Result<ReloadingCert, TlsError> {
        let key = load_certified_key(cert_file, key_file)?;
        Ok(ReloadingCert {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            state: Mutex::new(Loaded {
                key: Arc::new(key),
                stamp: stamp(cert_file, key_file),
                checked: Instant::now(),
            }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.checked.elapsed() >= RECHECK {
            s.checked = Instant::now();
            let now = stamp(&self.cert_file, &self.key_file);
            if now != s.stamp {
                match load_certified_key(&self.cert_file, &self.key_file) {
                    Ok(k) => {
                        tracing::info!(cert_file = %self.cert_file, "TLS certificate reloaded");
                        s.key = Arc::new(k);
                        s.stamp = now;
                    }
                    // Half-written renewal: try again at the next check.
                    Err(e) => tracing::warn!(error = %e, "TLS certificate not reloaded"),
                }
            }
        }
        s.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The rustls server config for an HTTPS API: the (reloading) certificate, HTTP/2 and
/// HTTP/1.1 by ALPN.
pub fn server_config(cert_file: &str, key_file: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ReloadingCert::new(cert_file, key_file)?));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A listener for `axum::serve` that hands out TLS streams. Handshakes run on tasks of their
/// own (bounded by a timeout), so a client that stalls its handshake delays nobody else; a
/// failed handshake is logged and dropped.
pub struct TlsListener {
    local: SocketAddr,
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    _accept: tokio::task::JoinHandle<()>,
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight at most; a connection beyond them is closed at once (a flood of
/// clients that open and stall cannot make the listener hold unbounded tasks and sockets).
const MAX_HANDSHAKES: usize = 1024;

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "too many TLS handshakes in flight; closed");
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            rx,
            _accept: accept,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self._accept.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task ended (it does not while the listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The connecting peer's address, as `ConnectInfo` over plain and TLS listeners alike
/// (`into_make_service_with_connect_info::<PeerAddr>()`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A Redis client for `url`: `rediss://` URLs use TLS with `tls` (its CA instead of the
/// system's, its client certificate), `redis://` URLs must not name TLS files.
pub fn redis_client(url: &str, tls: &ClientTls) -> Result<redis::Client, TlsError> {
    let bad = |e: redis::RedisError| TlsError::Invalid(format!("redis {}: {e}", redact(url)));
    let secure = url.starts_with("rediss://");
    if !secure {
        if tls.is_set() {
            return Err(TlsError::Invalid(format!(
                "redis {}: TLS files are named for a redis:// URL (use rediss://)",
                redact(url)
            )));
        }
        return redis::Client::open(url).map_err(bad);
    }
    let pem = tls.load()?;
    if pem.ca.is_none() && pem.identity.is_none() {
        return redis::Client::open(url).map_err(bad);
    }
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: pem
                .identity
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
            root_cert: pem.ca,
        },
    )
    .map_err(bad)
}

/// Every problem with a Redis URL (`section` names it in messages) and its TLS section: the
/// scheme, TLS files named for a plain `redis://` URL, and files that do not load.
pub fn check_redis(section: &str, url: &str, tls: &ClientTls, errs: &mut Vec<String>) {
    if url.starts_with("rediss://") {
        tls.check(&format!("{section} TLS"), errs);
    } else if !url.starts_with("redis://") {
        errs.push(format!("{section} must start with redis:// or rediss://"));
    } else if tls.is_set() {
        errs.push(format!(
            "{section}: TLS files are named for a redis:// URL (use rediss://)"
        ));
    }
}

/// A URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// An error with its sources, `a: b: c` (reqwest and tonic errors name the
/// failed request alone; the reason, such as an unknown certificate issuer, is a source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}
