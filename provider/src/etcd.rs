//! Thin etcd shell: read a prefix, apply one (fenced) transaction, watch a prefix; the
//! leader key's campaign, lease and watch for [`crate::leader`]. `KvError` is this layer's
//! error.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};

use crate::config::EtcdConfig;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd transaction was not applied")]
    NotApplied,
    /// The write was fenced off: this process is not (or no longer) the leader.
    #[error("not the leader: the write was fenced off")]
    Fenced,
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd TLS: {0}")]
    Tls(String),
}

/// What makes a leader's writes safe: each transaction requires the leader key to still have
/// the create revision it had when this process won it. A paused ex-leader's key expired with
/// its lease (and maybe was created again by the next leader), so its writes fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub revision: i64,
}

/// The outcome of one campaign for the leader key.
#[derive(Debug)]
pub enum Campaign {
    /// We hold the key now, bound to `lease`.
    Won { lease: i64, fence: Fence },
    /// Someone holds it: their value (node id), its create revision, and the revision the
    /// answer was read at (watch from the next one).
    Held {
        leader: String,
        created: i64,
        revision: i64,
    },
}

/// A change to the leader key seen by [`Kv::watch_key`].
#[derive(Debug, PartialEq, Eq)]
pub enum KeyEvent {
    Deleted,
    /// Put with (value, create revision).
    Put(String, i64),
}

/// Whether etcd can take writes, as this process last probed it (see `background`): a
/// create is refused with a 503 while not, instead of being acknowledged and left unpublished.
#[derive(Clone)]
pub struct Quorum(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Default for Quorum {
    fn default() -> Self {
        Quorum(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
            true,
        )))
    }
}

impl Quorum {
    pub fn ok(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Record a probe; whether that changed the state.
    pub fn set(&self, ok: bool) -> bool {
        self.0.swap(ok, std::sync::atomic::Ordering::AcqRel) != ok
    }
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, String),
    Delete(String),
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put(k, _) | Op::Delete(k) => k,
        }
    }
}

/// TLS for `https://` endpoints: the CA file's certificates (or the system's), and the
/// client certificate when one is named.
fn tls_options(tls: &appproxy_common::tls::ClientTls) -> Result<etcd_client::TlsOptions, KvError> {
    let pem = tls.load().map_err(|e| KvError::Tls(e.to_string()))?;
    let mut opts = etcd_client::TlsOptions::new();
    opts = match pem.ca {
        Some(ca) => opts.ca_certificate(etcd_client::Certificate::from_pem(ca)),
        None => opts.with_native_roots(),
    };
    if let Some((cert, key)) = pem.identity {
        opts = opts.identity(etcd_client::Identity::from_pem(cert, key));
    }
    Ok(opts)
}

/// A cheap-to-clone etcd handle.
#[derive(Clone)]
pub struct Kv {
    client: Client,
}

impl Kv {
    pub async fn connect(cfg: &EtcdConfig) -> Result<Kv, KvError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
            opts = opts.with_user(u.clone(), p.clone());
        }
        if cfg.secure() {
            opts = opts.with_tls(tls_options(&cfg.tls)?);
        }
        let client = Client::connect(&cfg.endpoints, Some(opts)).await?;
        let kv = Kv { client };
        if cfg.secure() {
            kv.check_tls().await?;
        }
        Ok(kv)
    }

    /// One request at start over TLS: a certificate etcd's CA does not match (or a client
    /// certificate etcd refuses) ends the start with the reason, instead of a provider that
    /// retries forever. An etcd that is merely down is not an error here.
    async fn check_tls(&self) -> Result<(), KvError> {
        let mut client = self.client.clone();
        match tokio::time::timeout(Duration::from_secs(5), client.status()).await {
            Ok(Err(e)) => {
                let chain = appproxy_common::tls::error_chain(&e);
                let lower = chain.to_lowercase();
                if ["certificate", "tls", "handshake", "unknownissuer"]
                    .iter()
                    .any(|w| lower.contains(w))
                {
                    return Err(KvError::Tls(chain));
                }
                tracing::warn!(error = %chain, "etcd did not answer at start");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Every key under `prefix`, with values (as UTF-8; other bytes are replaced).
    pub async fn get_prefix(&self, prefix: &str) -> Result<BTreeMap<String, String>, KvError> {
        let mut client = self.client.clone();
        let resp = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect())
    }

    /// Apply `ops` atomically; returns the revision the transaction created.
    pub async fn txn(&self, ops: &[Op]) -> Result<i64, KvError> {
        self.txn_fenced(ops, None).await
    }

    /// Apply `ops` atomically if `fence` still holds (`Fenced` otherwise); returns the
    /// revision the transaction created.
    pub async fn txn_fenced(&self, ops: &[Op], fence: Option<&Fence>) -> Result<i64, KvError> {
        let mut client = self.client.clone();
        let txn_ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(k.as_str(), v.as_str(), None),
                Op::Delete(k) => TxnOp::delete(k.as_str(), None),
            })
            .collect();
        let mut txn = Txn::new();
        if let Some(f) = fence {
            txn = txn.when(vec![Compare::create_revision(
                f.key.as_str(),
                CompareOp::Equal,
                f.revision,
            )]);
        }
        let resp = client.txn(txn.and_then(txn_ops)).await?;
        if !resp.succeeded() {
            return Err(if fence.is_some() {
                KvError::Fenced
            } else {
                KvError::NotApplied
            });
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Try to create `key` = `node`, bound to a new lease of `ttl`; the lease is revoked
    /// again when someone else holds the key.
    pub async fn campaign(
        &self,
        key: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Campaign, KvError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(ttl.as_secs().max(1) as i64, None)
            .await?
            .id();
        let put = PutOptions::new().with_lease(lease);
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key, node, Some(put))])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = client.txn(txn).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.succeeded() {
            let fence = Fence {
                key: key.to_string(),
                revision,
            };
            return Ok(Campaign::Won { lease, fence });
        }
        let _ = client.lease_revoke(lease).await;
        let held = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                let leader = String::from_utf8_lossy(kv.value()).into_owned();
                (leader, kv.create_revision())
            }),
            _ => None,
        });
        // Deleted between the compare and the read: an empty holder makes the caller retry.
        let (leader, created) = held.unwrap_or_default();
        Ok(Campaign::Held {
            leader,
            created,
            revision,
        })
    }

    /// Keep `lease` alive: send with the keeper, read answers (TTL 0: expired) from the stream.
    pub async fn keep_alive(
        &self,
        lease: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), KvError> {
        let mut client = self.client.clone();
        Ok(client.lease_keep_alive(lease).await?)
    }

    /// Give `lease` up (its keys go at once); errors are ignored.
    pub async fn revoke(&self, lease: i64) {
        let mut client = self.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
    }

    /// Delete `key` if it still has create revision `created` (a stale key of our own).
    pub async fn delete_if_created(&self, key: &str, created: i64) -> Result<bool, KvError> {
        let mut client = self.client.clone();
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key,
                CompareOp::Equal,
                created,
            )])
            .and_then(vec![TxnOp::delete(key, None)]);
        Ok(client.txn(txn).await?.succeeded())
    }

    /// Watch one key from `revision` on.
    pub async fn watch_key(&self, key: &str, revision: i64) -> Result<KeyWatch, KvError> {
        let mut client = self.client.clone();
        let opts = WatchOptions::new().with_start_revision(revision);
        let stream = client.watch(key, Some(opts)).await?;
        Ok(KeyWatch { stream })
    }

    /// A read that needs a quorum (etcd's reads are linearizable by default), bounded by
    /// `limit`: whether the cluster can take writes now.
    pub async fn quorum(&self, key: &str, limit: Duration) -> Result<(), KvError> {
        let mut client = self.client.clone();
        match tokio::time::timeout(limit, client.get(key, None)).await {
            Ok(r) => r.map(|_| ()).map_err(KvError::from),
            Err(_) => Err(KvError::Timeout(limit)),
        }
    }

    /// Watch every key under `prefix`.
    pub async fn watch_prefix(&self, prefix: &str) -> Result<WatchStream, KvError> {
        let mut client = self.client.clone();
        Ok(client
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await?)
    }

    /// Cheap liveness probe.
    pub async fn ping(&self) -> Result<(), KvError> {
        let mut client = self.client.clone();
        client.status().await?;
        Ok(())
    }
}

/// A watch on one key.
pub struct KeyWatch {
    stream: WatchStream,
}

impl KeyWatch {
    /// The next changes; `None` when the watch ended (then watch again).
    pub async fn next(&mut self) -> Option<Vec<KeyEvent>> {
        let resp = self.stream.message().await.ok()??;
        if resp.canceled() {
            return None;
        }
        Some(
            resp.events()
                .iter()
                .map(|ev| match (ev.event_type(), ev.kv()) {
                    (EventType::Put, Some(kv)) => KeyEvent::Put(
                        String::from_utf8_lossy(kv.value()).into_owned(),
                        kv.create_revision(),
                    ),
                    _ => KeyEvent::Deleted,
                })
                .collect(),
        )
    }
}
