//! The REST server loop: connections admitted through a [`Gate`] (caps per port
//! and per client address), served by hyper's HTTP/1.1 with a header timeout that
//! also closes idle keep-alives, request bodies that must arrive within a
//! deadline, and a graceful shutdown that lets in-flight requests finish.
//! `axum::serve` sets no timer, so none of its connections ever time out: 25,000
//! idle connections exhausted a primary's descriptors (see `api/listen.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Sleep;

use crate::api::listen::{self, Gate};

/// How a REST port admits and times its connections.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub handshake: Duration,
    pub header: Duration,
    pub body: Duration,
}

/// How one REST port serves: its gate, timeouts, TLS (optional) and who may use
/// its write routes.
#[derive(Clone)]
pub struct ServeOptions {
    pub gate: Gate,
    pub timeouts: Timeouts,
    pub tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    pub auth: std::sync::Arc<super::WriteAuth>,
}

/// In-flight requests get this long to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// A request body that fails once its deadline passes before its last frame: a
/// client that trickles a body cannot hold a connection and a handler forever.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(f) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(f);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body not received within limits.body_timeout_ms",
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn body_deadline(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let req = req.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
        })
    });
    // A body that misses its deadline fails its extractor: axum answers 400.
    next.run(req).await
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and
/// gives in-flight requests [`DRAIN`] to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let ServeOptions {
        gate,
        timeouts: t,
        tls,
        ..
    } = opts;
    let svc = app.layer(axum::middleware::from_fn_with_state(t.body, body_deadline));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            c = listen::accept(&listener, &gate, t.handshake) => c,
            () = &mut shutdown => break,
        };
        let (svc, tls, watcher) = (svc.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            // The handshake in the connection's own task: a slow one holds up no other.
            let Some(conn) = listen::Conn::open(conn, tls.as_deref(), t.handshake, "REST").await
            else {
                return;
            };
            let info = conn.info();
            let svc = tower::ServiceExt::map_request(
                svc,
                move |mut r: Request<hyper::body::Incoming>| {
                    r.extensions_mut().insert(info.clone());
                    r
                },
            );
            let c = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(t.header)
                .keep_alive(true)
                .serve_connection(
                    TokioIo::new(conn),
                    hyper_util::service::TowerToHyperService::new(svc),
                );
            // A connection's own errors (timeouts, resets, bad requests) end only it.
            let _ = watcher.watch(c).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("REST: in-flight requests did not finish within the drain time");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::listen::Caps;
    use crate::ha::health::Health;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;

    async fn server(
        t: Timeouts,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(Health::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let gate = Gate::new(
            "REST",
            Caps {
                total: 8,
                per_ip: 8,
            },
        );
        let app = super::super::router(rx, None);
        let opts = ServeOptions {
            gate,
            timeouts: t,
            tls: None,
            auth: Default::default(),
        };
        let h = tokio::spawn(serve(listener, app, opts, async {
            let _ = stop_rx.await;
        }));
        (addr, stop_tx, h)
    }

    const LONG: Timeouts = Timeouts {
        handshake: Duration::from_secs(60),
        header: Duration::from_secs(60),
        body: Duration::from_secs(60),
    };

    #[tokio::test]
    async fn serves_over_tcp_until_shutdown() {
        let (addr, stop, server) = server(LONG).await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"OPTIONS /liveness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.unwrap();
        // A node without a snapshot yet: not live (503), but answered.
        assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server stops after shutdown")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn with_tls_the_port_speaks_https_only() {
        let d = tempfile::tempdir().unwrap();
        crate::tls::init_ca(d.path(), "t", 30, false).unwrap();
        let (cert, key) = crate::tls::issue(&crate::tls::IssueRequest {
            dir: d.path().to_path_buf(),
            name: "n1".into(),
            hosts: vec!["127.0.0.1".into()],
            role: crate::tls::Role::Node,
            days: 30,
            force: false,
        })
        .unwrap();
        let tls = crate::tls::ServerTls::load(crate::tls::TlsPaths {
            ca: d.path().join("ca.crt"),
            cert,
            key,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(Health::default());
        let opts = ServeOptions {
            gate: Gate::new(
                "REST",
                Caps {
                    total: 8,
                    per_ip: 8,
                },
            ),
            timeouts: LONG,
            tls: Some(tls),
            auth: Default::default(),
        };
        let _server = tokio::spawn(serve(
            listener,
            super::super::router(rx, None),
            opts,
            std::future::pending(),
        ));
        // HTTPS: answered.
        let cfg = crate::tls::tests::client_config(d.path(), None);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        s.write_all(b"GET /liveness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
        // Plain HTTP on the TLS port: no HTTP answer, and the port still serves.
        let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /liveness HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got)).await;
        assert!(
            !String::from_utf8_lossy(&got).contains("HTTP/1.1 503"),
            "plaintext answered"
        );
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
        let (addr, _stop, _server) = server(Timeouts {
            header: Duration::from_millis(300),
            ..LONG
        })
        .await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /liveness HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // The reply, then EOF once the connection has idled past the header timeout.
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut reply))
            .await
            .expect("closed by the server")
            .unwrap();
        let reply = String::from_utf8_lossy(&reply);
        // A node without a snapshot yet: not live (503), but answered.
        assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
    }

    #[tokio::test]
    async fn a_request_head_sent_slowly_is_cut_off() {
        let (addr, _stop, _server) = server(Timeouts {
            header: Duration::from_millis(300),
            ..LONG
        })
        .await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /liveness HTTP/1.1\r\n").await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut reply))
            .await
            .expect("closed by the server")
            .ok();
        assert!(
            !String::from_utf8_lossy(&reply).contains("200 OK"),
            "no answer to an unfinished head"
        );
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_refused() {
        let (addr, _stop, _server) = server(Timeouts {
            body: Duration::from_millis(300),
            ..LONG
        })
        .await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(
            b"POST /switchover HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"leader\"",
        )
        .await
        .unwrap();
        let mut reply = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut reply))
            .await
            .expect("answered before the client sent the rest")
            .unwrap();
        let reply = String::from_utf8_lossy(&reply[..n]);
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    }
}
