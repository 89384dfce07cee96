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
