//! The accept loops: HTTP/1.1 only, one task per connection, `TCP_NODELAY`, one
//! single-threaded runtime per serving thread.
//!
//! Traefik's ForwardAuth client keeps just two idle connections per host, so about half of
//! its calls arrive on a fresh connection (reference traefik.md §3). A connection must
//! therefore be cheap: no protocol sniffing or upgrade machinery (every client of authgate —
//! Traefik's ForwardAuth and OTLP exporter, the setup router, browsers on the API port over
//! plain HTTP — speaks HTTP/1.1), and answers go out at once rather than behind Nagle's
//! algorithm. Request headers must arrive within 30 s (slow-header connections are dropped).
//!
//! Threads do not share work: each has a listener of its own on the same port
//! (`SO_REUSEPORT`, the kernel spreads connections over them) and runs its connections to the
//! end, so a request never wakes a second thread (the work-stealing runtime made about one
//! futex wake-up per three requests behind Traefik; CPU per ForwardAuth call went from a
//! median 91 to 86 µs in the benchmark).

use std::{io, net::SocketAddr, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceExt;

/// `n` (at least one) listening sockets on `addr`, all on the same port: with more than one,
/// every socket has `SO_REUSEPORT`, and a port 0 in `addr` becomes the port the first got.
pub fn bind(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let one = |addr: SocketAddr| -> io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if n > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    // SO_REUSEPORT would let a second authgate (say, one never stopped) bind the same port
    // and silently take half of its connections. A plain socket first: an address in use
    // fails here as it would without the option.
    let addr = if n > 1 {
        let probe = std::net::TcpListener::bind(addr)?;
        probe.local_addr()?
    } else {
        addr
    };
    let first = one(addr)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n.max(1) {
        all.push(one(bound)?);
    }
    Ok(all)
}

/// A serving thread's runtime: single-threaded, its blocking threads named `authgate-w` too.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("authgate-w")
        .build()
}

/// Serve `app` on every listener until `shutdown` flips, then give open requests up to 5 s:
/// the first listener on the calling task's runtime, each other one on a thread of its own
/// (named `authgate-w`) with a single-threaded runtime.
pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
    app: Router,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut listeners = listeners.into_iter();
    let first = listeners
        .next()
        .ok_or_else(|| io::Error::other("no listener"))?;
    let mut done = Vec::new();
    for listener in listeners {
        let (app, shutdown) = (app.clone(), shutdown.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rt = runtime()?;
        std::thread::Builder::new()
            .name("authgate-w".into())
            .spawn(move || {
                rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => accept_loop(l, app, shutdown).await,
                        Err(e) => tracing::error!(error = %e, "listener rejected"),
                    }
                });
                let _ = tx.send(());
            })?;
        done.push(rx);
    }
    accept_loop(TcpListener::from_std(first)?, app, shutdown).await;
    for rx in done {
        let _ = tokio::time::timeout(Duration::from_secs(6), rx).await;
    }
    Ok(())
}

/// Until `shutdown` flips (the borrow of the value ends here: the loop's future stays `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await;
}

/// One listener's loop; returns after its connections finished (at most 5 s after shutdown).
async fn accept_loop(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = tcp.set_nodelay(true);
        // The peer's address for handlers that want it (`ConnectInfo<PeerAddr>`, as axum's
        // own server gives it): set on each request, the router shared (a clone is an `Arc`).
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            let info = axum::extract::ConnectInfo(appproxy_common::tls::PeerAddr(peer));
            req.extensions_mut().insert(info);
            app.clone().oneshot(req)
        });
        let conn = builder.serve_connection(TokioIo::new(NoShutdown(tcp)), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// A connection whose write-side shutdown is left to `close`: hyper shuts a connection down
/// before dropping it, and the `close` that follows at once sends the same FIN — one
/// syscall less per connection, and half of Traefik's ForwardAuth calls open one.
struct NoShutdown(tokio::net::TcpStream);

impl tokio::io::AsyncRead for NoShutdown {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for NoShutdown {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use axum::routing::get;

    use super::*;

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    #[test]
    fn threads_share_one_port() {
        let all = bind(loopback(), 3).unwrap();
        let ports: Vec<u16> = all.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0), "{ports:?}");
    }

    #[test]
    fn a_port_in_use_is_refused_with_or_without_reuseport() {
        let plain = std::net::TcpListener::bind(loopback()).unwrap();
        let taken = plain.local_addr().unwrap();
        for n in [1, 2] {
            let e = bind(taken, n).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "n={n}");
        }
        // A second authgate with SO_REUSEPORT must not join the first one's group either.
        let group = bind(loopback(), 2).unwrap();
        let e = bind(group[0].local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn every_thread_serves_and_all_stop_on_shutdown() {
        let listeners = bind(loopback(), 2).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let app = Router::new().route(
            "/who",
            get(|| async { std::thread::current().name().unwrap_or("?").to_string() }),
        );
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listeners, app, rx));
        // Fresh connections hash over both listeners; 64 of them reach both threads.
        let mut threads = std::collections::BTreeSet::new();
        appproxy_common::tls::install_provider();
        for _ in 0..64 {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let r = http.get(format!("http://{addr}/who")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            threads.insert(r.text().await.unwrap());
        }
        assert!(threads.contains("authgate-w"), "{threads:?}");
        assert_eq!(
            threads.len(),
            2,
            "one answer per serving thread: {threads:?}"
        );
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        assert!(reqwest::get(format!("http://{addr}/who")).await.is_err());
    }

    #[tokio::test]
    async fn a_closing_connection_delivers_the_whole_answer_then_eof() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listeners = bind(loopback(), 1).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let app = Router::new().route("/who", get(|| async { "x".repeat(100_000) }));
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listeners, app, rx));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection")
            .unwrap();
        let text = String::from_utf8(answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{}", &text[..40]);
        assert!(
            text.ends_with(&"x".repeat(100_000)),
            "the body arrived whole"
        );
        tx.send(true).unwrap();
        server.await.unwrap().unwrap();
    }
}
