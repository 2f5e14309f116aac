//! A minimal in-process HTTP/1.1 server on loopback, shared by the test issuer and backend.
//!
//! It runs on the kit's own runtime (see [`super::runtime`]) so it keeps answering whatever
//! the test thread does, and it can be stopped and started again on the same port to
//! simulate an outage. Stopping closes every open connection too, so a client's pooled
//! keep-alive connection cannot keep talking to a "down" server.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// What a handler decides: a response, or to drop the connection without one.
pub type Outcome = Result<Response<Full<Bytes>>, Hangup>;

/// A request handler: gets the whole request (body collected) and answers.
pub type Handler =
    Arc<dyn Fn(Request<Bytes>) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// Returned by a handler to close the connection without answering.
#[derive(Debug)]
pub struct Hangup;

impl std::fmt::Display for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("test server hung up on purpose")
    }
}

impl std::error::Error for Hangup {}

/// A running (or stopped) loopback HTTP server.
pub struct HttpServer {
    addr: SocketAddr,
    handler: Handler,
    task: Mutex<Option<Running>>,
}

/// The accept loop and the way to stop it.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub fn start(handler: Handler) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Self::start_on(listener, handler)
    }

    /// Starts serving on an already bound listener (so the caller knows the port first).
    pub fn start_on(listener: std::net::TcpListener, handler: Handler) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let task = spawn_accept_loop(listener, handler.clone());
        Self {
            addr,
            handler,
            task: Mutex::new(Some(task)),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether it is currently serving.
    pub fn is_running(&self) -> bool {
        self.task.lock().is_some()
    }

    /// Stops listening and closes every open connection; returns once the port is free
    /// and every connection is closed.
    pub async fn stop(&self) {
        let running = self.task.lock().take();
        if let Some(Running { stop, task }) = running {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Starts serving again on the same port (after [`HttpServer::stop`]).
    pub async fn restart(&self) {
        if self.is_running() {
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        *self.task.lock() = Some(spawn_accept_loop(listener, self.handler.clone()));
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(running) = self.task.lock().take() {
            running.task.abort();
        }
    }
}

fn spawn_accept_loop(listener: std::net::TcpListener, handler: Handler) -> Running {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let (stop, mut stopped) = oneshot::channel();
    let task = super::runtime().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        // Connections live in the set: aborting this task drops the set, which aborts them.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    drop(listener);
                    // Abort every connection and wait until each socket is closed.
                    connections.shutdown().await;
                    return;
                }
                Some(_) = connections.join_next() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(serve_connection(stream, handler.clone()));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
            }
        }
    });
    Running { stop, task }
}

async fn serve_connection(stream: tokio::net::TcpStream, handler: Handler) {
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return Err(Hangup),
            };
            handler(Request::from_parts(parts, body)).await
        }
    });
    // A handler's `Hangup` makes hyper drop the connection without writing a response.
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// A response with a body and content type.
pub fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}
