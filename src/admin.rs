//! The admin listener: `/metrics`, `/healthz` and `/readyz` on their own port.
//!
//! A small hyper HTTP/1.1 server, apart from the proxy so that scraping and probes work
//! whatever the proxy is doing, and so the port can stay on a private interface:
//!
//! - `GET /metrics`: the Prometheus text exposition (format 0.0.4).
//! - `GET /healthz`: liveness; `200 ok` as long as the process can answer.
//! - `GET /readyz`: readiness; 200 when every [`Check`] of the [`HealthSource`] passes,
//!   else 503, with `{"ready":bool,"checks":[{"name","ok","detail"}]}` as the body. It also
//!   sets the `fhirwall_ready` gauge.
//!
//! - `POST /admin/revoke` (only when [`RevokeEndpoint`] is given, i.e. an admin token is
//!   configured): revokes a token, a `jti`, or every token of a client or subject, in this
//!   instance at once and, when Redis is configured, in every instance. Authenticated by
//!   `Authorization: Bearer <admin token>`, compared in constant time. Body (JSON, one
//!   target): `{"token": "..."}`, `{"token_sha256": "<hex>"}`, `{"jti": "..."}`,
//!   `{"client_id": "..."}` or `{"sub": "..."}`; optional `"ttl"` (seconds, default
//!   `revocation.entry_ttl`) and `"at_provider": true` (token only: RFC 7009 pass-through).
//!
//! Any other path is 404; a known path with the wrong method is 405.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::auth::{Authenticator, Revocation, Target};
use crate::metrics::Metrics;

/// Largest `POST /admin/revoke` body accepted.
const MAX_REVOKE_BODY: usize = 16 * 1024;

/// Longest revocation a request may ask for (30 days).
const MAX_REVOKE_TTL: u64 = 30 * 24 * 3600;

/// Content type of the Prometheus text exposition format, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a client may take to send a request head; an idle keep-alive connection is
/// closed after the same time (hyper applies it to every request head).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`policy`, `issuer:<name>`, `audit`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Operator-facing detail.
    pub detail: String,
}

/// Something that can say whether the gateway is ready.
pub trait HealthSource: Send + Sync {
    /// Every readiness check; ready when all pass.
    fn readiness(&self) -> Vec<Check>;
}

/// A closure is a health source: `Arc::new(move || vec![sink.readiness_check()])`.
impl<F> HealthSource for F
where
    F: Fn() -> Vec<Check> + Send + Sync,
{
    fn readiness(&self) -> Vec<Check> {
        self()
    }
}

/// The `/readyz` body.
#[derive(Serialize)]
struct Readiness<'a> {
    ready: bool,
    checks: &'a [Check],
}

/// Publishes a revocation to the other gateway instances (Redis pub/sub).
pub trait Propagate: Send + Sync {
    /// Sends `revocation` on; `Err` says why it could not be (the local revocation stands).
    fn publish<'a>(
        &'a self,
        revocation: &'a Revocation,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// What `POST /admin/revoke` needs.
pub struct RevokeEndpoint {
    /// SHA-256 of the admin bearer token (compared digest to digest, in constant time).
    token_digest: [u8; 32],
    /// Where revocations are applied.
    pub auth: Arc<Authenticator>,
    /// Revocation lifetime when the request names none.
    pub default_ttl: Duration,
    /// Other instances, when configured.
    pub propagate: Option<Arc<dyn Propagate>>,
}

/// The `POST /admin/revoke` request body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    token: Option<String>,
    token_sha256: Option<String>,
    jti: Option<String>,
    client_id: Option<String>,
    sub: Option<String>,
    ttl: Option<u64>,
    #[serde(default)]
    at_provider: bool,
}

/// What every connection needs.
struct Admin {
    metrics: Arc<Metrics>,
    health: Arc<dyn HealthSource>,
    revoke: Option<Arc<RevokeEndpoint>>,
}

/// Serves the admin endpoints on `listener` until the process ends.
///
/// Only returns early on a listener failure that cannot be retried.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn HealthSource>,
) -> std::io::Result<()> {
    serve_until(listener, metrics, health, std::future::pending()).await
}

/// Like [`serve`], but stops accepting and closes open connections once `shutdown`
/// completes.
pub async fn serve_until(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn HealthSource>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with_revocation(listener, metrics, health, None, shutdown).await
}

/// Like [`serve_until`], with `POST /admin/revoke` served by `revoke` (404 when `None`).
pub async fn serve_with_revocation(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn HealthSource>,
    revoke: Option<Arc<RevokeEndpoint>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let admin = Arc::new(Admin {
        metrics,
        health,
        revoke,
    });
    // Connection tasks live in the set so they end with the server; it is reaped as they
    // finish so it does not grow with the number of connections ever served.
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return Ok(()),
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) if is_transient(&e) => {
                // Out of file descriptors or a connection reset before accept: back off a
                // little instead of spinning, and keep serving.
                tracing::warn!(error = %e, "admin listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let admin = admin.clone();
        connections.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let admin = admin.clone();
                async move {
                    let response = if req.uri().path() == "/admin/revoke" {
                        admin.revoke(req).await
                    } else {
                        admin.respond(&req)
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let result = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                // Client hang-ups and timeouts: nothing the operator can act on.
                tracing::debug!(error = %e, client.addr = %peer, "admin connection ended with an error");
            }
        });
    }
}

/// Accept errors that concern one connection or a passing resource shortage, not the
/// listener itself.
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || matches!(e.raw_os_error(), Some(code) if code == 23 || code == 24) // ENFILE, EMFILE
}

// === impl Check ===

impl Check {
    /// A passing check.
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    /// A failing check.
    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

// === impl RevokeEndpoint ===

impl RevokeEndpoint {
    /// The endpoint, accepting `admin_token` as the bearer token.
    pub fn new(
        admin_token: &str,
        auth: Arc<Authenticator>,
        default_ttl: Duration,
        propagate: Option<Arc<dyn Propagate>>,
    ) -> Self {
        RevokeEndpoint {
            token_digest: digest(admin_token.as_bytes()),
            auth,
            default_ttl,
            propagate,
        }
    }

    /// Whether `Authorization` carries the admin token. Both sides are hashed first, so the
    /// comparison takes the same time whatever the presented length and content.
    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(presented) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // RFC 6750 §2.1: the scheme is case-insensitive.
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
        else {
            return false;
        };
        let presented = digest(presented.as_bytes());
        presented
            .iter()
            .zip(self.token_digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}

// === impl Admin ===

impl Admin {
    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        // HEAD is answered like GET; hyper omits the body and keeps Content-Length.
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            // RFC 9110 §15.5.6: a 405 must list the allowed methods.
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/metrics" => body(
                StatusCode::OK,
                METRICS_CONTENT_TYPE,
                Bytes::from(self.metrics.render()),
            ),
            "/healthz" => plain(StatusCode::OK, "ok\n"),
            _ => self.readyz(),
        }
    }

    /// `POST /admin/revoke`.
    async fn revoke(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        use http_body_util::BodyExt;
        let Some(endpoint) = &self.revoke else {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        };
        if req.method() != Method::POST {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        if !endpoint.authorized(&req) {
            tracing::warn!("admin revoke refused: missing or wrong admin token");
            let mut response = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
            // RFC 6750 §3.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fhirwall-admin\""),
            );
            return response;
        }
        let bytes = match http_body_util::Limited::new(req.into_body(), MAX_REVOKE_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body too large or unreadable\n",
                )
            }
        };
        let request: RevokeRequest = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return bad_request(&format!("invalid JSON body: {e}")),
        };
        let RevokeRequest {
            token,
            token_sha256,
            jti,
            client_id,
            sub,
            ttl,
            at_provider,
        } = request;
        let named = [&token, &token_sha256, &jti, &client_id, &sub]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if named != 1 {
            return bad_request("name exactly one of token, token_sha256, jti, client_id, sub");
        }
        if at_provider && token.is_none() {
            return bad_request("at_provider needs the token itself");
        }
        let target = match (&token, token_sha256, jti, client_id, sub) {
            (Some(t), ..) if !t.is_empty() => Target::token(t),
            (_, Some(h), ..) => match Target::token_sha256_hex(&h) {
                Some(t) => t,
                None => return bad_request("token_sha256 must be 64 hex digits"),
            },
            (_, _, Some(v), ..) if !v.is_empty() => Target::Jti(v),
            (_, _, _, Some(v), _) if !v.is_empty() => Target::Client(v),
            (_, _, _, _, Some(v)) if !v.is_empty() => Target::Subject(v),
            _ => return bad_request("the value to revoke is empty"),
        };
        let ttl_secs = match ttl {
            None => endpoint.default_ttl.as_secs().max(1),
            Some(t) if (1..=MAX_REVOKE_TTL).contains(&t) => t,
            Some(_) => return bad_request("ttl must be between 1 and 2592000 seconds"),
        };
        let revocation = Revocation { target, ttl_secs };
        endpoint.auth.revoke(&revocation, "admin").await;
        tracing::info!(
            kind = revocation.target.kind(),
            ttl_secs,
            "revocation applied in this instance"
        );
        let propagated = match &endpoint.propagate {
            None => serde_json::Value::Null,
            Some(p) => match p.publish(&revocation).await {
                Ok(()) => serde_json::Value::Bool(true),
                Err(e) => {
                    tracing::error!(error = %e, "revocation not propagated to other instances");
                    serde_json::Value::String(format!("error: {e}"))
                }
            },
        };
        let provider = match (at_provider, &token) {
            (true, Some(t)) => match endpoint.auth.revoke_at_provider(t).await {
                None => "no introspection client for this token's issuer".to_owned(),
                Some(Ok(true)) => "revoked".to_owned(),
                Some(Ok(false)) => "no revocation endpoint".to_owned(),
                Some(Err(e)) => format!("error: {e}"),
            }
            .into(),
            _ => serde_json::Value::Null,
        };
        let answer = serde_json::json!({
            "revoked": revocation,
            "propagated": propagated,
            "provider": provider,
        });
        body(
            StatusCode::OK,
            "application/json",
            Bytes::from(answer.to_string()),
        )
    }

    fn readyz(&self) -> Response<Full<Bytes>> {
        let checks = self.health.readiness();
        let ready = checks.iter().all(|c| c.ok);
        self.metrics.ready.set(i64::from(ready));
        let json = serde_json::to_vec(&Readiness {
            ready,
            checks: &checks,
        })
        .expect("strings and bools always serialize");
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        body(status, "application/json", Bytes::from(json))
    }
}

fn bad_request(why: &str) -> Response<Full<Bytes>> {
    let json = serde_json::json!({ "error": why }).to_string();
    body(
        StatusCode::BAD_REQUEST,
        "application/json",
        Bytes::from(json),
    )
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    body(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

fn body(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Probes and scrapes must see the current state, never a cached one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;

    use parking_lot::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Checks that the test can change while the server runs.
    struct Switchable(Mutex<Vec<Check>>);

    impl HealthSource for Switchable {
        fn readiness(&self) -> Vec<Check> {
            self.0.lock().clone()
        }
    }

    struct Server {
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        health: Arc<Switchable>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start(checks: Vec<Check>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Switchable(Mutex::new(checks)));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_until(
            listener,
            metrics.clone(),
            health.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            metrics,
            health,
            stop: Some(stop),
            task,
        }
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    impl Server {
        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_prometheus_text_format() {
        let server = start(vec![]).await;
        server.metrics.audit_records.inc_by(3);
        let response = client().get(server.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = response.text().await.unwrap();
        assert!(text.contains("fhirwall_audit_records_total 3"), "{text}");
        assert!(text.contains("fhirwall_build_info{version="), "{text}");
    }

    #[tokio::test]
    async fn healthz_answers_ok_even_when_not_ready() {
        let server = start(vec![Check::fail("policy", "not loaded")]).await;
        let response = client().get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok\n");
    }

    #[tokio::test]
    async fn readyz_is_200_with_every_check_when_all_pass_and_sets_the_gauge() {
        let server = start(vec![
            Check::pass("policy", "version abc"),
            Check::pass("audit", "writing to stdout"),
        ])
        .await;
        let response = client().get(server.url("/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "ready": true,
                "checks": [
                    {"name": "policy", "ok": true, "detail": "version abc"},
                    {"name": "audit", "ok": true, "detail": "writing to stdout"},
                ]
            })
        );
        assert_eq!(server.metrics.ready.get(), 1);
    }

    #[tokio::test]
    async fn readyz_is_503_when_any_check_fails_and_recovers_with_it() {
        let server = start(vec![
            Check::pass("policy", "version abc"),
            Check::fail("issuer:idp", "no keys loaded"),
        ])
        .await;
        let response = client().get(server.url("/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["ready"], false);
        assert_eq!(body["checks"][1]["name"], "issuer:idp");
        assert_eq!(body["checks"][1]["ok"], false);
        assert_eq!(body["checks"][1]["detail"], "no keys loaded");
        assert_eq!(server.metrics.ready.get(), 0);

        server.health.0.lock()[1] = Check::pass("issuer:idp", "2 keys");
        let response = client().get(server.url("/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(server.metrics.ready.get(), 1);
    }

    #[tokio::test]
    async fn a_closure_can_be_the_health_source() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health: Arc<dyn HealthSource> = Arc::new(|| vec![Check::fail("audit", "stopped")]);
        tokio::spawn(serve(listener, Arc::new(Metrics::new()), health));
        let response = client()
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        let server = start(vec![]).await;
        for path in ["/", "/metrics/", "/readyz/x", "/favicon.ico"] {
            let response = client().get(server.url(path)).send().await.unwrap();
            assert_eq!(response.status(), 404, "{path}");
        }
    }

    #[tokio::test]
    async fn a_query_string_does_not_change_the_endpoint() {
        let server = start(vec![]).await;
        let response = client()
            .get(server.url("/healthz?verbose=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn methods_other_than_get_and_head_are_405_with_allow() {
        let server = start(vec![]).await;
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let response = client()
                .request(method.clone(), server.url("/metrics"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 405, "{method}");
            assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
        }
    }

    #[tokio::test]
    async fn head_answers_like_get_without_a_body() {
        let server = start(vec![Check::fail("policy", "x")]).await;
        let response = client().head(server.url("/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert!(response.bytes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn requests_on_one_kept_alive_connection_are_all_answered() {
        let server = start(vec![]).await;
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let request = b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n";
        let mut received = Vec::new();
        for round in 1..=2 {
            stream.write_all(request).await.unwrap();
            // Each answer is small and ends with the `ok\n` body.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while String::from_utf8_lossy(&received)
                .matches("\r\n\r\nok\n")
                .count()
                < round
            {
                let mut chunk = [0u8; 1024];
                let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                    .await
                    .expect("answer in time")
                    .unwrap();
                assert!(n > 0, "connection closed after {round} requests");
                received.extend_from_slice(&chunk[..n]);
            }
        }
        assert_eq!(
            String::from_utf8_lossy(&received)
                .matches("HTTP/1.1 200 OK")
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn serve_until_returns_when_told_to_stop() {
        let mut server = start(vec![]).await;
        server.stop.take().unwrap().send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), &mut server.task)
            .await
            .expect("server stops")
            .unwrap();
        assert!(result.is_ok());
        assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
    }
}
