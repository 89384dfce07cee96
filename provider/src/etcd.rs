//! Thin etcd shell: read a prefix, apply one transaction, watch a prefix. `KvError` is this
//! layer's error.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{Client, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions, WatchStream};

use crate::config::EtcdConfig;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd transaction was not applied")]
    NotApplied,
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
        let client = Client::connect(&cfg.endpoints, Some(opts)).await?;
        Ok(Kv { client })
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
        let mut client = self.client.clone();
        let txn_ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(k.as_str(), v.as_str(), None),
                Op::Delete(k) => TxnOp::delete(k.as_str(), None),
            })
            .collect();
        let resp = client.txn(Txn::new().and_then(txn_ops)).await?;
        if !resp.succeeded() {
            return Err(KvError::NotApplied);
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
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
