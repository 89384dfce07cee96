//! The accept loop: HTTP/1.1 only, one task per connection, `TCP_NODELAY`.
//!
//! Traefik's ForwardAuth client keeps just two idle connections per host, so about half of
//! its calls arrive on a fresh connection (reference traefik.md §3). A connection must
//! therefore be cheap: no protocol sniffing or upgrade machinery (every client of authgate —
//! Traefik's ForwardAuth and OTLP exporter, the setup router, browsers on the API port over
//! plain HTTP — speaks HTTP/1.1), and answers go out at once rather than behind Nagle's
//! algorithm. Request headers must arrive within 30 s (slow-header connections are dropped).

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};

/// Serve `app` on `listener` until `shutdown` flips, then give open requests up to 5 s.
pub async fn serve(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|v| *v) => break,
        };
        let _ = tcp.set_nodelay(true);
        let conn =
            builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}
