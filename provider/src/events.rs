//! Session lifecycle from Backend.AI's own event bus: an unchanged Manager (26.9.6) never tells
//! the coordinator that a session ended, but it announces every status change on its Redis
//! (`../shared/reference/backendai-events.md`). The provider listens as a third party — a plain
//! `SUBSCRIBE events_all`, nothing the Manager owns changes — and removes the interactive
//! circuits of a session that ended, with their activity keys. Inference circuits stay: the
//! Manager manages an endpoint's replicas over HTTP, and a replica's session ending must not
//! take the endpoint down.
//!
//! Signals: `scheduling` with `status_transition` TERMINATED, CANCELLED or ERROR (the Manager),
//! and `kernel_terminated` (the Agent; circuits route to a session's main kernel, so its end
//! ends them). Pub/sub loses what is sent while disconnected, and the Manager sometimes marks a
//! session TERMINATED without an event: after every (re)connect and every minute, the last
//! `scheduling` envelope of each session we hold circuits for is read back
//! (`session_scheduler.<id>`, kept 300 s by the Manager) and applied. Malformed or unknown
//! events are counted (`bai_events_total{result}`) and skipped, never fatal.
//!
//! The wire format: a JSON envelope `{"name","source","payload","metadata"}` whose `payload` is
//! itself a JSON string; unknown fields are ignored, status names compared case-insensitively.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use uuid::Uuid;

use appproxy_common::redis_conn;

use crate::service::Circuits;

/// The pub/sub channel of Backend.AI's broadcast events.
pub const CHANNEL: &str = "events_all";

/// How long one catch-up read (an `MGET` of up to 500 sessions' last events) may wait for Redis.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// What an event means for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The session ended: its circuits go.
    SessionEnded { session_id: Uuid, why: String },
    /// A well-formed event that changes nothing here (RUNNING, other names).
    Ignored,
}

/// Why an event was skipped as malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Junk {
    #[error("not a JSON event envelope: {0}")]
    Envelope(String),
    #[error("{name}: payload is not the expected JSON: {error}")]
    Payload { name: String, error: String },
}

#[derive(Deserialize)]
struct Envelope {
    name: String,
    #[serde(default)]
    payload: Option<String>,
}

#[derive(Deserialize)]
struct Scheduling {
    session_id: Uuid,
    status_transition: String,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct KernelTerminated {
    session_id: Uuid,
    #[serde(default)]
    reason: String,
}

/// Decode one broadcast envelope (pure).
pub fn decode(raw: &[u8]) -> Result<Signal, Junk> {
    let env: Envelope = serde_json::from_slice(raw).map_err(|e| Junk::Envelope(e.to_string()))?;
    let payload = |name: &str| {
        env.payload.as_deref().ok_or_else(|| Junk::Payload {
            name: name.into(),
            error: "no payload".into(),
        })
    };
    let bad = |name: &str, e: serde_json::Error| Junk::Payload {
        name: name.into(),
        error: e.to_string(),
    };
    match env.name.as_str() {
        "scheduling" => {
            let ev: Scheduling =
                serde_json::from_str(payload("scheduling")?).map_err(|e| bad("scheduling", e))?;
            let status = ev.status_transition.to_ascii_uppercase();
            Ok(match status.as_str() {
                "TERMINATED" | "CANCELLED" | "ERROR" => Signal::SessionEnded {
                    session_id: ev.session_id,
                    why: format!("scheduling {status} ({})", ev.reason),
                },
                _ => Signal::Ignored,
            })
        }
        "kernel_terminated" => {
            let ev: KernelTerminated = serde_json::from_str(payload("kernel_terminated")?)
                .map_err(|e| bad("kernel_terminated", e))?;
            Ok(Signal::SessionEnded {
                session_id: ev.session_id,
                why: format!("kernel_terminated ({})", ev.reason),
            })
        }
        _ => Ok(Signal::Ignored),
    }
}

/// The listener acts through the circuits service of the provider's state.
pub struct Listener {
    pub state: crate::api::AppState,
}

impl Listener {
    fn circuits(&self) -> Circuits<'_> {
        self.state.circuits()
    }

    /// Apply one raw envelope; the metric label of what happened.
    pub async fn apply(&self, raw: &[u8]) -> &'static str {
        let (session_id, why) = match decode(raw) {
            Ok(Signal::SessionEnded { session_id, why }) => (session_id, why),
            Ok(Signal::Ignored) => return "ignored",
            Err(e) => {
                tracing::warn!(error = %e, "Skipping a malformed Backend.AI event");
                return "junk";
            }
        };
        match self.circuits().end_interactive_session(session_id).await {
            Ok(ids) if ids.is_empty() => "ended_none",
            Ok(ids) => {
                tracing::info!(session = %session_id, circuits = ids.len(), why, "Session ended: its circuits removed");
                "applied"
            }
            Err(e) => {
                tracing::warn!(session = %session_id, error = %e, "Could not remove an ended session's circuits");
                "failed"
            }
        }
    }

    fn count(&self, result: &str) {
        self.state
            .metrics
            .bai_events
            .with_label_values(&[result])
            .inc();
    }

    /// Read back the last `scheduling` envelope of every session we hold circuits for and
    /// apply it (catches what pub/sub lost).
    async fn catch_up(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let sessions = match self.state.store.interactive_session_ids().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "Event catch-up skipped: database unavailable");
                return Ok(());
            }
        };
        for chunk in sessions.chunks(500) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|s| format!("session_scheduler.{s}"))
                .collect();
            let envelopes: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(&keys).query_async(con).await?;
            for raw in envelopes.into_iter().flatten() {
                let result = self.apply(&raw).await;
                self.count(result);
            }
        }
        Ok(())
    }

    /// Subscribe, catch up, then follow the channel (catching up again every `every`) until
    /// the connection drops.
    async fn follow(&self, client: &redis::Client, every: Duration) -> redis::RedisResult<()> {
        use futures_util::StreamExt;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        let mut con = redis_conn::multiplexed(client, CATCH_UP_TIMEOUT).await?;
        self.state.metrics.bai_events_connected.set(1);
        tracing::info!("Following Backend.AI's session events");
        self.catch_up(&mut con).await?;
        let mut stream = pubsub.on_message();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let result = self.apply(msg.get_payload_bytes()).await;
                    self.count(result);
                }
                _ = tick.tick() => self.catch_up(&mut con).await?,
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "event subscription closed",
        )))
    }

    /// Run until `shutdown`, reconnecting with a bounded backoff.
    pub async fn run(self, client: redis::Client, shutdown: watch::Receiver<bool>) {
        let every = Duration::from_secs(60);
        appproxy_common::shutdown::reconnecting(Duration::from_secs(5), shutdown, || async {
            let r = self.follow(&client, every).await;
            self.state.metrics.bai_events_connected.set(0);
            if let Err(e) = r {
                tracing::warn!(error = %e, "Lost Backend.AI's event bus; reconnecting");
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from Backend.AI 26.9.6's EventProducer (the reference, "On the wire").
    const TERMINATED: &str = r#"{"name":"scheduling","source":"manager","payload":"{\"session_id\":\"8a0f3c6e-3b1e-4d55-9f0c-2f6f1d1e7a10\",\"creation_id\":\"c7Hq2b9V\",\"status_transition\":\"TERMINATED\",\"reason\":\"triggered-by-scheduler\"}","metadata":"{\"request_id\":null,\"user\":null,\"triggered_user\":null,\"traceparent\":null}"}"#;

    fn sid() -> Uuid {
        "8a0f3c6e-3b1e-4d55-9f0c-2f6f1d1e7a10".parse().unwrap()
    }

    #[test]
    fn the_managers_terminated_event_ends_the_session() {
        assert_eq!(
            decode(TERMINATED.as_bytes()),
            Ok(Signal::SessionEnded {
                session_id: sid(),
                why: "scheduling TERMINATED (triggered-by-scheduler)".into()
            })
        );
        for status in ["CANCELLED", "error", "Terminated"] {
            let raw = TERMINATED.replace("TERMINATED", status);
            assert!(
                matches!(decode(raw.as_bytes()), Ok(Signal::SessionEnded { .. })),
                "{status}"
            );
        }
        for status in ["RUNNING", "TERMINATING", "PENDING"] {
            let raw = TERMINATED.replace("TERMINATED", status);
            assert_eq!(decode(raw.as_bytes()), Ok(Signal::Ignored), "{status}");
        }
    }

    #[test]
    fn kernel_terminated_ends_its_session_and_other_names_are_ignored() {
        let raw = r#"{"name":"kernel_terminated","source":"i-agent-01","payload":"{\"kernel_id\":\"0b3f8a7e-1111-4222-8333-444455556666\",\"session_id\":\"8a0f3c6e-3b1e-4d55-9f0c-2f6f1d1e7a10\",\"reason\":\"user-requested\",\"exit_code\":-1}","metadata":"{}"}"#;
        assert!(
            matches!(decode(raw.as_bytes()), Ok(Signal::SessionEnded { session_id, .. }) if session_id == sid())
        );
        let started = r#"{"name":"kernel_started","source":"a","payload":"{}","metadata":"{}"}"#;
        assert_eq!(decode(started.as_bytes()), Ok(Signal::Ignored));
    }

    #[test]
    fn junk_is_an_error_never_a_panic() {
        for raw in [
            "",
            "not json",
            "[]",
            r#"{"payload":"{}"}"#,
            r#"{"name":"scheduling"}"#,
            r#"{"name":"scheduling","payload":"not json"}"#,
            r#"{"name":"scheduling","payload":"{\"session_id\":\"nope\",\"status_transition\":\"TERMINATED\"}"}"#,
            r#"{"name":"kernel_terminated","payload":"{}"}"#,
        ] {
            assert!(decode(raw.as_bytes()).is_err(), "{raw}");
        }
    }
}
