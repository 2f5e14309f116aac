// Shared fixtures: the e2e policy, a started issuer+backend+gateway stack, refusal assertions, a raw HTTP/1.1 client.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// The realm every challenge of a default-configured gateway names.
pub const REALM: &str = "fhirwall";

/// The patient every patient-context token of these tests is launched for.
pub const PATIENT: &str = "123";

/// The policy of the end-to-end tests, under `/fhir`:
/// public metadata, patient-bound reads and searches, a write, and a legacy wildcard route.
pub const POLICY: &str = r#"version: 1
base_path: /fhir
routes:
  - id: metadata
    methods: [GET]
    path: /metadata
    public: true
  - id: patient-read
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [patient/Patient.r, user/Patient.r] }
    patient: { segment: id }
  - id: observation-search
    methods: [GET]
    path: /Observation
    scopes: { any_of: [patient/Observation.rs, user/Observation.rs] }
    patient: { query: patient }
  - id: observation-create
    methods: [POST]
    path: /Observation
    scopes: { any_of: [user/Observation.c] }
  - id: legacy-api
    methods: [GET]
    path: /api/{*rest}
    scopes: { all_of: [user/Observation.rs, user/Patient.rs] }
"#;

/// An issuer, a recording backend and a gateway in front of it, started for one test.
pub struct Stack {
    /// The token issuer the gateway trusts.
    pub issuer: TestIssuer,
    /// The upstream.
    pub backend: TestBackend,
    /// The gateway under test.
    pub gateway: Gateway,
    /// A client that never follows redirects nor uses proxies.
    pub client: reqwest::Client,
}

impl Stack {
    /// Issuer publishing every fixture key, echoing backend, gateway with [`POLICY`], ready.
    pub async fn start() -> Stack {
        Stack::start_with(|b| b).await
    }

    /// Like [`Stack::start`], with extra builder settings (config overrides).
    pub async fn start_with(configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder) -> Stack {
        Stack::start_with_issuer(TestIssuer::start(), configure).await
    }

    /// Like [`Stack::start_with`], with a given issuer.
    pub async fn start_with_issuer(
        issuer: TestIssuer,
        configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
    ) -> Stack {
        let backend = TestBackend::start();
        let builder = Gateway::builder()
            .backend(&backend)
            .issuer(&issuer)
            .policy_yaml(POLICY);
        let gateway = configure(builder).start().await;
        Stack {
            issuer,
            backend,
            gateway,
            client: http_client(),
        }
    }

    /// A gateway URL.
    pub fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    /// A valid token (rsa1) with these scopes, for [`PATIENT`] when `patient` is true.
    pub fn token(&self, scope: &str, patient: bool) -> String {
        let patient = if patient { Some(PATIENT) } else { None };
        self.issuer
            .mint(self.issuer.claims_for(scope, patient), KeyId::Rsa1)
    }

    /// `GET path` with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Asserts the backend received nothing at all.
    pub fn assert_backend_untouched(&self) {
        let requests = self.backend.requests();
        assert!(
            requests.is_empty(),
            "the backend must receive nothing, got {:?}",
            requests.iter().map(|r| &r.target).collect::<Vec<_>>()
        );
    }
}

/// A refusal written by the gateway itself, checked and taken apart.
#[derive(Debug)]
pub struct Refusal {
    /// `WWW-Authenticate`, when present.
    pub challenge: Option<String>,
    /// `Retry-After`, when present.
    pub retry_after: Option<String>,
}

/// Checks `response` is a gateway refusal with `status` and an OperationOutcome whose first
/// issue has `issue_code`; returns its parts.
pub async fn refusal(response: reqwest::Response, status: u16, issue_code: &str) -> Refusal {
    let headers = response.headers().clone();
    let got = response.status().as_u16();
    let text = response.text().await.expect("response body");
    assert_eq!(got, status, "status; body: {text}");
    assert_eq!(
        header(&headers, "content-type").as_deref(),
        Some(FHIR_JSON),
        "content type of a refusal"
    );
    let request_id = header(&headers, "x-request-id").expect("every answer has X-Request-Id");
    assert!(!request_id.is_empty());
    let challenges: Vec<_> = headers.get_all("www-authenticate").iter().collect();
    assert!(
        challenges.len() <= 1,
        "at most one challenge: {challenges:?}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("refusal body is not JSON ({e}): {text}"));
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["severity"], "error", "{body}");
    assert_eq!(body["issue"][0]["code"], issue_code, "{body}");
    let diagnostics = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(
        !diagnostics.is_empty(),
        "diagnostics explain the refusal: {body}"
    );
    Refusal {
        challenge: header(&headers, "www-authenticate"),
        retry_after: header(&headers, "retry-after"),
    }
}

/// Asserts `challenge` is `Bearer realm="fhirwall", error="<error>", error_description="..."`
/// with a non-empty description, optionally followed by exactly `, scope="<scope>"`.
pub fn assert_challenge(challenge: Option<&str>, error: &str, scope: Option<&str>) {
    let challenge = challenge.expect("a WWW-Authenticate challenge");
    let prefix = format!(r#"Bearer realm="{REALM}", error="{error}", error_description=""#);
    let rest = challenge
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("challenge {challenge:?} does not start with {prefix:?}"));
    let description_end = rest
        .find('"')
        .unwrap_or_else(|| panic!("unterminated error_description in {challenge:?}"));
    assert!(
        description_end > 0,
        "error_description must not be empty: {challenge:?}"
    );
    let tail = &rest[description_end + 1..];
    match scope {
        Some(scope) => assert_eq!(tail, format!(r#", scope="{scope}""#), "{challenge:?}"),
        None => assert_eq!(tail, "", "nothing after the description: {challenge:?}"),
    }
}

/// The first value of a header, as text.
pub fn header(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
}

/// True for a fhirwall-generated request id: 32 lowercase or uppercase hex digits.
pub fn is_generated_request_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A response read off a raw TCP connection.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code of the status line.
    pub status: u16,
    /// The status line and headers, as text.
    pub head: String,
    /// What followed the headers (as sent: not de-chunked).
    pub body: String,
}

impl RawResponse {
    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }
}

/// Sends `GET {target} HTTP/1.1` with `headers` on a fresh TCP connection, byte for byte (no
/// client-side normalization or encoding), and reads the answer until the server closes.
pub async fn raw_get(addr: SocketAddr, target: &[u8], headers: &[(&str, &str)]) -> RawResponse {
    let mut request = Vec::with_capacity(256);
    request.extend_from_slice(b"GET ");
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: fhirwall.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    raw_exchange(addr, &request).await
}

/// Writes `request` as is on a fresh TCP connection and reads until the server closes (5 s
/// at most), returning the status line and headers.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the gateway");
        stream.write_all(request).await.expect("write request");
        let mut received = Vec::new();
        // A server may reset instead of closing cleanly after answering; what was read counts.
        let _ = stream.read_to_end(&mut received).await;
        received
    };
    let received = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no complete answer within 5 s to {:?}",
                String::from_utf8_lossy(request)
            )
        });
    let text = String::from_utf8_lossy(&received).into_owned();
    let (head, body) = match text.split_once("\r\n\r\n") {
        Some((head, body)) => (head.to_owned(), body.to_owned()),
        None => (text.clone(), String::new()),
    };
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no HTTP status line in the answer to {:?}: {text:?}",
                String::from_utf8_lossy(request)
            )
        });
    RawResponse { status, head, body }
}
