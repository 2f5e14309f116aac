//! `TestBackend`: an in-process FHIR server stand-in that records every request it gets and
//! answers as told (echo, a status, a delay, or hanging up).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Version};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::server::{handler, response, Hangup, HttpServer, Outcome};

/// Response header naming what the backend saw: `METHOD path?query`.
pub const ECHO_HEADER: &str = "x-test-backend-saw";

/// FHIR JSON content type.
pub const FHIR_JSON: &str = "application/fhir+json";

/// How the backend answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// 200 with a small FHIR resource echoing the request (the default).
    Echo,
    /// This status with a FHIR OperationOutcome body.
    Status(u16),
    /// Wait this long, then echo (for upstream timeout tests).
    Delay(Duration),
    /// Close the connection without answering.
    Hangup,
    /// Exactly this response.
    Custom {
        /// Status code.
        status: u16,
        /// `Content-Type`.
        content_type: String,
        /// Body.
        body: Bytes,
    },
}

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Method.
    pub method: Method,
    /// Request target as sent (path and query, e.g. `/Patient/1?_format=json`).
    pub target: String,
    /// Path only.
    pub path: String,
    /// Query, without `?`.
    pub query: Option<String>,
    /// HTTP version.
    pub version: Version,
    /// Every header as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// The recording backend on `http://127.0.0.1:PORT`.
pub struct TestBackend {
    server: HttpServer,
    state: Arc<BackendState>,
}

#[derive(Default)]
struct BackendState {
    requests: Mutex<Vec<RecordedRequest>>,
    reply: Mutex<Option<Reply>>,
    per_path: Mutex<HashMap<String, Reply>>,
}

impl TestBackend {
    /// Starts a backend that echoes.
    pub fn start() -> Self {
        let state = Arc::new(BackendState::default());
        let served = state.clone();
        let server = HttpServer::start(handler(move |req| {
            let state = served.clone();
            async move { state.answer(req).await }
        }));
        Self { server, state }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash): the gateway's `upstream.url`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().clone()
    }

    /// The most recent request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.state.requests.lock().last().cloned()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().len()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state.requests.lock().clear();
    }

    /// Sets how every request is answered (unless a path has its own reply).
    pub fn set_reply(&self, reply: Reply) {
        *self.state.reply.lock() = Some(reply);
    }

    /// Sets the reply for requests to exactly `path` (query ignored).
    pub fn set_reply_for_path(&self, path: &str, reply: Reply) {
        self.state.per_path.lock().insert(path.to_owned(), reply);
    }

    /// Back to echoing everything.
    pub fn reset_replies(&self) {
        *self.state.reply.lock() = None;
        self.state.per_path.lock().clear();
    }

    /// Waits until at least `n` requests were received (10 s, then panics).
    pub async fn wait_for_requests(&self, n: usize) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "backend got {} requests, expected {n}",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops answering and closes open connections (upstream down).
    pub async fn stop(&self) {
        self.server.stop().await;
    }

    /// Serves again on the same port.
    pub async fn restart(&self) {
        self.server.restart().await;
    }
}

// === impl RecordedRequest ===

impl RecordedRequest {
    /// The first value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

// === impl BackendState ===

impl BackendState {
    async fn answer(&self, req: Request<Bytes>) -> Outcome {
        let (parts, body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| parts.uri.to_string());
        let recorded = RecordedRequest {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            target,
            version: parts.version,
            headers: parts.headers,
            body,
        };
        let reply = self
            .per_path
            .lock()
            .get(&recorded.path)
            .cloned()
            .or_else(|| self.reply.lock().clone())
            .unwrap_or(Reply::Echo);
        let saw = format!("{} {}", recorded.method, recorded.target);
        self.requests.lock().push(recorded);

        let mut response = match reply {
            Reply::Echo => echo(&saw),
            Reply::Delay(delay) => {
                tokio::time::sleep(delay).await;
                echo(&saw)
            }
            Reply::Hangup => return Err(Hangup),
            Reply::Status(status) => response(
                status,
                FHIR_JSON,
                operation_outcome(&format!("test backend answered {status}")).to_string(),
            ),
            Reply::Custom {
                status,
                content_type,
                body,
            } => response(status, &content_type, body),
        };
        if let Ok(value) = http::HeaderValue::from_str(&saw) {
            response.headers_mut().insert(ECHO_HEADER, value);
        }
        Ok(response)
    }
}

/// A valid FHIR R4 `Basic` resource whose `code.text` is `METHOD target`.
fn echo(saw: &str) -> http::Response<http_body_util::Full<Bytes>> {
    let body = json!({
        "resourceType": "Basic",
        "id": "test-backend-echo",
        "code": { "text": saw },
    });
    response(200, FHIR_JSON, body.to_string())
}

/// What the backend echoed in a response body (`code.text`), if it is an echo.
pub fn echoed(body: &Value) -> Option<&str> {
    body.get("code")?.get("text")?.as_str()
}

fn operation_outcome(text: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "error", "code": "processing", "diagnostics": text }],
    })
}
