//! Leader election over an etcd lease. Every provider campaigns for `<control_prefix>leader`
//! (a key bound to a lease of `ha.lease_ttl_seconds`, value = the node id); the one that
//! creates it leads until it cannot renew the lease, sees the key change, or shuts down
//! (then it revokes the lease, so a successor takes over at once). Followers watch the key
//! and campaign again when it goes.
//!
//! The leader's duties (reconciler, reaper, liveness, grant GC, Backend.AI events) start and
//! stop with [`Role`] (see `background`). Its etcd writes carry a [`Fence`]: the key's create
//! revision when it won. A leader paused past its lease (GC, SIGSTOP, a slow VM) may still
//! believe it leads when it wakes; its key is gone by then, so every write it attempts fails
//! the compare — nothing it does after losing the lease reaches Traefik.
//!
//! Stepping down on time does not depend on the fence: a leader whose last renewal older than
//! the TTL minus one second stops its duties itself.

use std::time::Duration;

use tokio::{
    sync::watch,
    time::{Instant, sleep, sleep_until},
};

use crate::etcd::{Campaign, Fence, KeyEvent, Kv, KvError};

/// What this replica is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not leading; the leader's node id when known.
    Follower { leader: Option<String> },
    /// Leading, with the fence of this term's writes.
    Leader(Fence),
}

/// This replica's view of the election, for handlers (`/status`) and the background duties.
#[derive(Clone)]
pub struct Leadership {
    node: String,
    role: watch::Receiver<Role>,
}

impl Leadership {
    /// A handle and the sender the election loop drives.
    pub fn new(node: String) -> (watch::Sender<Role>, Leadership) {
        let (tx, role) = watch::channel(Role::Follower { leader: None });
        (tx, Leadership { node, role })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn is_leader(&self) -> bool {
        matches!(*self.role.borrow(), Role::Leader(_))
    }

    /// The leader's node id, when known.
    pub fn leader(&self) -> Option<String> {
        match &*self.role.borrow() {
            Role::Leader(_) => Some(self.node.clone()),
            Role::Follower { leader } => leader.clone(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }
}

/// The election's settings.
pub struct Election {
    pub kv: Kv,
    pub key: String,
    pub node: String,
    pub ttl: Duration,
}

/// Why a term ended.
enum TermEnd {
    Lost(&'static str),
    Shutdown,
}

impl Election {
    /// Campaign, lead, follow, until `shutdown`; publishes every change of role on `tx`.
    pub async fn run(self, tx: watch::Sender<Role>, mut shutdown: watch::Receiver<bool>) {
        // Only at start: a key with our own name is our previous process's (killed before it
        // could revoke its lease); take it over instead of waiting out its TTL.
        let mut take_over_own = true;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let step = self.campaign_once(&tx, &mut take_over_own, &mut shutdown);
            match step.await {
                Ok(Some(TermEnd::Shutdown)) => return,
                Ok(Some(TermEnd::Lost(why))) => {
                    tracing::warn!(node = %self.node, why, "Leadership lost");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Leader election: etcd failed; retrying");
                    tx.send_replace(Role::Follower { leader: None });
                    tokio::select! {
                        _ = sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// One campaign: lead a term if we win (returns how it ended), else follow until the key
    /// is free again (`None`).
    async fn campaign_once(
        &self,
        tx: &watch::Sender<Role>,
        take_over_own: &mut bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<TermEnd>, KvError> {
        match self.kv.campaign(&self.key, &self.node, self.ttl).await? {
            Campaign::Won { lease, fence } => {
                *take_over_own = false;
                tracing::info!(node = %self.node, revision = fence.revision, "Elected leader");
                tx.send_replace(Role::Leader(fence.clone()));
                let end = self.hold(lease, &fence, shutdown).await;
                tx.send_replace(Role::Follower { leader: None });
                self.kv.revoke(lease).await;
                Ok(Some(end))
            }
            Campaign::Held { leader, .. } if leader.is_empty() => Ok(None),
            Campaign::Held {
                leader, created, ..
            } if leader == self.node && *take_over_own => {
                *take_over_own = false;
                tracing::info!(node = %self.node, "Taking over the leader key of this node's previous process");
                self.kv.delete_if_created(&self.key, created).await?;
                Ok(None)
            }
            Campaign::Held {
                leader, revision, ..
            } => {
                *take_over_own = false;
                tx.send_replace(Role::Follower {
                    leader: Some(leader),
                });
                self.follow(tx, revision + 1, shutdown).await
            }
        }
    }

    /// Follow until the leader key is deleted (or at most one TTL: campaign again anyway, in
    /// case an event was missed).
    async fn follow(
        &self,
        tx: &watch::Sender<Role>,
        from: i64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<TermEnd>, KvError> {
        let mut watch = self.kv.watch_key(&self.key, from).await?;
        let deadline = Instant::now() + self.ttl;
        loop {
            tokio::select! {
                events = watch.next() => match events {
                    None => return Ok(None),
                    Some(events) => for ev in events {
                        match ev {
                            KeyEvent::Deleted => return Ok(None),
                            KeyEvent::Put(leader, _) => {
                                tx.send_replace(Role::Follower { leader: Some(leader) });
                            }
                        }
                    },
                },
                _ = sleep_until(deadline) => return Ok(None),
                _ = shutdown.changed() => return Ok(Some(TermEnd::Shutdown)),
            }
        }
    }

    /// Lead: renew the lease every third of the TTL; end when a renewal is refused, when
    /// none succeeded for the TTL minus a second, when the key changes, or on shutdown.
    async fn hold(
        &self,
        lease: i64,
        fence: &Fence,
        shutdown: &mut watch::Receiver<bool>,
    ) -> TermEnd {
        let Ok((mut keeper, mut answers)) = self.kv.keep_alive(lease).await else {
            return TermEnd::Lost("cannot keep the lease alive");
        };
        let Ok(mut watch) = self.kv.watch_key(&self.key, fence.revision + 1).await else {
            return TermEnd::Lost("cannot watch the leader key");
        };
        let margin = self.ttl.saturating_sub(Duration::from_secs(1));
        let mut renewed = Instant::now();
        let mut sent: Option<Instant> = None;
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // The renewal's time is when it was sent: the lease runs from there.
                    let at = Instant::now();
                    if keeper.keep_alive().await.is_err() {
                        return TermEnd::Lost("lease renewal failed");
                    }
                    sent.get_or_insert(at);
                }
                answer = answers.message() => match answer {
                    Ok(Some(a)) if a.ttl() > 0 => {
                        if let Some(at) = sent.take() {
                            renewed = at;
                        }
                    }
                    Ok(Some(_)) => return TermEnd::Lost("the lease expired"),
                    Ok(None) | Err(_) => return TermEnd::Lost("the lease stream ended"),
                },
                events = watch.next() => match events {
                    None => return TermEnd::Lost("the leader key watch ended"),
                    Some(events) => {
                        let ours = |ev: &KeyEvent| matches!(ev, KeyEvent::Put(_, c) if *c == fence.revision);
                        if !events.iter().all(ours) {
                            return TermEnd::Lost("the leader key changed");
                        }
                    }
                },
                _ = sleep_until(renewed + margin) => return TermEnd::Lost("no lease renewal within the TTL"),
                _ = shutdown.changed() => return TermEnd::Shutdown,
            }
        }
    }
}
