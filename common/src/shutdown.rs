//! Process shutdown: SIGTERM or Ctrl-C flips a watch channel that the services wait on.

use tokio::sync::watch;

/// A receiver that turns `true` on SIGTERM or SIGINT. Call inside a Tokio runtime.
pub fn on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// When a periodic job first runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    /// At once, then every interval.
    Now,
    /// After one interval.
    AfterInterval,
}

/// Run `job` every `interval` until `shutdown` turns `true` (a job in progress finishes; no
/// new one starts). The one way both binaries run periodic background work.
pub async fn every<F, Fut>(
    interval: std::time::Duration,
    first: First,
    mut shutdown: watch::Receiver<bool>,
    mut job: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if first == First::AfterInterval && !pause(interval, &mut shutdown).await {
        return;
    }
    loop {
        if *shutdown.borrow() {
            return;
        }
        job().await;
        if !pause(interval, &mut shutdown).await {
            return;
        }
    }
}

/// Sleep `d`; `false` when shutdown came first.
/// Keep a connection-bound task running until `shutdown`: `attempt` runs until its connection
/// ends (it logs why), then again after a backoff that doubles from 100 ms up to `max`. The
/// one way both binaries follow a Redis subscription (revocations; Backend.AI's events).
pub async fn reconnecting<F, Fut>(
    max: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
    mut attempt: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = attempt() => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        if !pause(backoff, &mut shutdown).await {
            return;
        }
        backoff = (backoff * 2).min(max);
    }
}

async fn pause(d: std::time::Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.wait_for(|v| *v) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicU32, Ordering},
        },
        time::Duration,
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_runs_on_schedule_and_stops_on_shutdown() {
        for (first, want) in [(First::Now, 4), (First::AfterInterval, 3)] {
            let (tx, rx) = watch::channel(false);
            let n = Arc::new(AtomicU32::new(0));
            let m = n.clone();
            let task = tokio::spawn(every(Duration::from_secs(10), first, rx, move || {
                let m = m.clone();
                async move {
                    m.fetch_add(1, Ordering::SeqCst);
                }
            }));
            tokio::time::sleep(Duration::from_secs(35)).await;
            tx.send(true).unwrap();
            task.await.unwrap();
            assert_eq!(n.load(Ordering::SeqCst), want, "{first:?}");
        }
    }
}
