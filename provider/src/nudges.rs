//! Nudges between providers on one PostgreSQL (`LISTEN`/`NOTIFY` on `appproxy_nudges`): a
//! handler on any replica nudges its own reconciler, and the nudge is also sent here, so the
//! leader's reconciler hears of a follower's write within a round trip instead of at the next
//! resync. Every replica listens and marks what it hears; only the leader acts on the marks
//! (a new leader starts with a full pass anyway).
//!
//! A notification may be lost (the listener's connection dropped): after reconnecting the
//! listener asks for a full pass, and the periodic resync covers the rest. SQLite is
//! single-node and needs none of this.

use std::sync::Arc;

use sqlx::postgres::PgListener;
use tokio::{sync::mpsc, task::JoinHandle};
use uuid::Uuid;

use crate::{
    metrics::Metrics,
    reconcile::{Nudge, Reconciler},
    store::Store,
};

const CHANNEL: &str = "appproxy_nudges";

/// At most this many nudges per notification (PostgreSQL caps a payload at 8000 bytes; a
/// circuit nudge is 76).
const BATCH: usize = 90;

/// One notification's payload: the sender's instance id, then a nudge per line.
pub fn encode(from: Uuid, nudges: &[Nudge]) -> String {
    let mut out = format!("from {}", from.simple());
    for n in nudges {
        out.push('\n');
        match n {
            Nudge::All => out.push('a'),
            Nudge::Worker(w) => out.push_str(&format!("w {}", w.simple())),
            Nudge::Circuit { worker, circuit } => {
                out.push_str(&format!("c {} {}", worker.simple(), circuit.simple()))
            }
        }
    }
    out
}

/// The sender and nudges of a payload; lines that do not parse are skipped (a malformed
/// notification from another version asks for a full pass instead).
pub fn decode(payload: &str) -> Option<(Uuid, Vec<Nudge>)> {
    let mut lines = payload.lines();
    let from = Uuid::parse_str(lines.next()?.strip_prefix("from ")?).ok()?;
    let mut nudges = Vec::new();
    for line in lines {
        let mut parts = line.split(' ');
        let id = |p: Option<&str>| p.and_then(|s| Uuid::parse_str(s).ok());
        let n = match parts.next() {
            Some("a") => Some(Nudge::All),
            Some("w") => id(parts.next()).map(Nudge::Worker),
            Some("c") => id(parts.next())
                .zip(id(parts.next()))
                .map(|(worker, circuit)| Nudge::Circuit { worker, circuit }),
            _ => None,
        };
        nudges.push(n.unwrap_or(Nudge::All));
    }
    Some((from, nudges))
}

/// Start sending this replica's nudges and marking the others' (PostgreSQL only; `None` for
/// SQLite). The tasks end when aborted.
pub fn start(
    url: &str,
    store: &Store,
    reconciler: &Arc<Reconciler>,
    metrics: &Metrics,
) -> Option<Vec<JoinHandle<()>>> {
    if !(url.starts_with("postgres:") || url.starts_with("postgresql:")) {
        return None;
    }
    let me = Uuid::new_v4();
    let (tx, rx) = mpsc::unbounded_channel();
    reconciler.broadcast_to(tx);
    let send = tokio::spawn(send(me, rx, store.clone(), metrics.clone()));
    let listen = tokio::spawn(listen(
        me,
        url.to_string(),
        reconciler.clone(),
        metrics.clone(),
    ));
    Some(vec![send, listen])
}

/// Send queued nudges, batched: whatever queued up while the last notification went out
/// goes in the next.
async fn send(me: Uuid, mut rx: mpsc::UnboundedReceiver<Nudge>, store: Store, metrics: Metrics) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let payload = encode(me, &batch);
        match store.notify(CHANNEL, &payload).await {
            Ok(()) => metrics.nudges_sent.inc_by(batch.len() as u64),
            // The leader's resync (or its next full pass) catches up.
            Err(e) => tracing::warn!(error = %e, "Cannot send nudges to the other providers"),
        }
        batch.clear();
    }
}

/// Mark the other replicas' nudges; after a lost connection, ask for a full pass.
async fn listen(me: Uuid, url: String, reconciler: Arc<Reconciler>, metrics: Metrics) {
    let mut listener = loop {
        match connect(&url).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for nudges; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => match decode(n.payload()) {
                Some((from, _)) if from == me => {}
                Some((_, nudges)) => {
                    metrics.nudges_received.inc_by(nudges.len() as u64);
                    for n in nudges {
                        reconciler.mark(n);
                    }
                }
                None => reconciler.nudge_all(),
            },
            // Reconnected after losing the connection: something may have been missed.
            Ok(None) => reconciler.nudge_all(),
            Err(e) => {
                tracing::warn!(error = %e, "Nudge listener lost PostgreSQL; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                reconciler.nudge_all();
            }
        }
    }
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect(url).await?;
    l.listen(CHANNEL).await?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_junk_asks_for_a_full_pass() {
        let (me, w, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let nudges = vec![
            Nudge::All,
            Nudge::Worker(w),
            Nudge::Circuit {
                worker: w,
                circuit: c,
            },
        ];
        let payload = encode(me, &nudges);
        assert_eq!(decode(&payload), Some((me, nudges)));
        let full: Vec<Nudge> = (0..BATCH)
            .map(|_| Nudge::Circuit {
                worker: w,
                circuit: c,
            })
            .collect();
        assert!(
            encode(me, &full).len() < 8000,
            "a full batch fits a payload"
        );
        assert_eq!(
            decode(&format!("from {}\nc nope\nz", me.simple())),
            Some((me, vec![Nudge::All, Nudge::All]))
        );
        assert_eq!(decode("hello"), None);
    }
}
