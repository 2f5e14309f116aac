// The one runner of the SMART conformance tables: a case format, a stack (issuer + FHIR backend
// + the real gateway) per table, and a check of every case that collects all deviations.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde_json::Value;

use crate::support::fhir_backend::{FhirBackend, FHIR_BASE};
use crate::support::*;

/// The realm of every challenge (the gateway's default).
pub const REALM: &str = "fhirwall";

/// Which credentials a case presents.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A valid token with these scopes and this `patient` claim.
    Bearer {
        /// The `scope` claim.
        scopes: &'static str,
        /// The `patient` claim.
        patient: Option<&'static str>,
    },
    /// No `Authorization` header.
    None,
    /// `Bearer not-a-jwt`.
    Garbage,
    /// A token that expired an hour ago.
    Expired,
    /// A token whose signature does not verify.
    BadSignature,
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    /// `application/fhir+json`.
    Json(Value),
    /// `application/x-www-form-urlencoded` (POST `_search`).
    Form(&'static str),
    /// Exactly these bytes with this content type.
    Raw(&'static str, Vec<u8>),
}

/// What the gateway must do with a case's request.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Not set yet (a table bug).
    Unset,
    /// Forwarded as sent (the backend received this method and target), answered `status`.
    Allow(u16),
    /// Answered `status`, by the gateway or the backend (discovery endpoints).
    Public(u16),
    /// Refused by the gateway before anything reached the backend.
    Deny {
        /// Acceptable statuses (the spec sometimes allows two, e.g. 400/404).
        statuses: &'static [u16],
        /// The `WWW-Authenticate` it must carry.
        challenge: Challenge,
        /// Text the OperationOutcome diagnostics must contain (e.g. `entry`).
        mention: Option<&'static str>,
        /// The challenge's `scope` attribute: the minimal set that would suffice, in the
        /// token's context (RFC 6750 §3; SMART-SEMANTICS 11 / A18).
        scope: Option<&'static str>,
    },
    /// Forwarded, but the response failed fhirwall's check: 403 `forbidden` instead, and the
    /// body carries none of the resource (no `secret-`, not this text).
    Withheld(&'static str),
    /// Refused after reading the stored version: 403, the backend got reads but never the
    /// case's own (write) request; with `read`, it must have read the target's stored version
    /// (the refusal rests on data only the backend has).
    DenyAfterCheck {
        /// The stored version must have been read.
        read: bool,
    },
    /// Forwarded with the query narrowed by fhirwall (`granular_search: narrow`): the backend
    /// received the case's method and path, every query item of the case, and `param=value`.
    Narrowed {
        /// Status answered.
        status: u16,
        /// The added parameter.
        param: &'static str,
        /// Its value (decoded).
        value: &'static str,
    },
    /// A batch answered 200 with a batch-response whose entries have these statuses (in the
    /// original order; `400` stands for any 4xx refusal, as the spec only says "its own 4xx
    /// entry"); the backend got one batch with `forwarded` entries (none when 0); the
    /// response does not contain `absent` (when not empty).
    Batch {
        /// One status per entry.
        statuses: &'static [u16],
        /// Entries forwarded upstream.
        forwarded: usize,
        /// Text that must not appear in the response.
        absent: &'static str,
    },
}

/// The `WWW-Authenticate` header a refusal must carry (RFC 6750 §3).
#[derive(Debug, Clone, Copy)]
pub enum Challenge {
    /// None at all (a malformed path is not about credentials).
    Absent,
    /// Exactly `Bearer realm="fhirwall"`: no credentials, no error code (RFC 6750 §3.1).
    Bare,
    /// `Bearer realm="fhirwall", error="<code>", ...`.
    Error(&'static str),
    /// Not checked (the spec allows several answers).
    Any,
}

/// One row of a conformance table.
#[derive(Debug, Clone)]
pub struct Case {
    /// What it shows, unique in its table.
    pub name: &'static str,
    /// The rule it checks (`SAL2 §scopes: r = read`, `SMART-SEMANTICS 3.3`).
    pub rule: &'static str,
    /// The credentials.
    pub auth: Auth,
    /// The method.
    pub method: &'static str,
    /// Path and query below [`FHIR_BASE`] (`/Patient/123`, `?_type=Observation`, ``).
    pub url: String,
    /// Extra request headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Option<Body>,
    /// The expected outcome.
    pub expect: Expect,
}

/// Starts a case: no token, `GET` of the base, no expectation yet.
pub fn case(name: &'static str, rule: &'static str) -> Case {
    Case {
        name,
        rule,
        auth: Auth::None,
        method: "GET",
        url: String::new(),
        headers: Vec::new(),
        body: None,
        expect: Expect::Unset,
    }
}

// === impl Case ===

impl Case {
    /// A valid token with `scopes` and no patient claim.
    pub fn scopes(mut self, scopes: &'static str) -> Self {
        let patient = match self.auth {
            Auth::Bearer { patient, .. } => patient,
            _ => None,
        };
        self.auth = Auth::Bearer { scopes, patient };
        self
    }

    /// Sets the token's `patient` claim (launch context).
    pub fn patient(mut self, id: &'static str) -> Self {
        let scopes = match self.auth {
            Auth::Bearer { scopes, .. } => scopes,
            _ => "",
        };
        self.auth = Auth::Bearer {
            scopes,
            patient: Some(id),
        };
        self
    }

    /// Other credentials.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    fn request(mut self, method: &'static str, url: &str) -> Self {
        self.method = method;
        self.url = url.to_owned();
        self
    }

    /// `GET url`.
    pub fn get(self, url: &str) -> Self {
        self.request("GET", url)
    }
    /// `HEAD url`.
    pub fn head(self, url: &str) -> Self {
        self.request("HEAD", url)
    }
    /// `POST url`.
    pub fn post(self, url: &str) -> Self {
        self.request("POST", url)
    }
    /// `PUT url`.
    pub fn put(self, url: &str) -> Self {
        self.request("PUT", url)
    }
    /// `PATCH url`.
    pub fn patch(self, url: &str) -> Self {
        self.request("PATCH", url)
    }
    /// `DELETE url`.
    pub fn delete(self, url: &str) -> Self {
        self.request("DELETE", url)
    }

    /// Adds a request header.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// A FHIR JSON body.
    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(Body::Json(body));
        self
    }

    /// A form body (`POST _search`).
    pub fn form(mut self, body: &'static str) -> Self {
        self.body = Some(Body::Form(body));
        self
    }

    /// A body of any type.
    pub fn raw(mut self, content_type: &'static str, body: Vec<u8>) -> Self {
        self.body = Some(Body::Raw(content_type, body));
        self
    }

    /// Expect: forwarded unchanged, answered `status`.
    pub fn allow(mut self, status: u16) -> Self {
        self.expect = Expect::Allow(status);
        self
    }

    /// Expect: answered `status` (discovery; forwarding not required).
    pub fn public(mut self, status: u16) -> Self {
        self.expect = Expect::Public(status);
        self
    }

    /// Expect: 403 `insufficient_scope` (RFC 6750 §3.1), nothing forwarded.
    pub fn deny(self) -> Self {
        self.deny_with(&[403], Challenge::Error("insufficient_scope"))
    }

    /// Expect: refused with one of `statuses` and `challenge`, nothing forwarded.
    pub fn deny_with(mut self, statuses: &'static [u16], challenge: Challenge) -> Self {
        self.expect = Expect::Deny {
            statuses,
            challenge,
            mention: None,
            scope: None,
        };
        self
    }

    /// Expect: 400 for an unsafe path (SMART-SEMANTICS 12), nothing forwarded.
    pub fn bad_path(self) -> Self {
        self.deny_with(&[400], Challenge::Absent)
    }

    /// Expect: refused (400, 403 or 404: SMART-SEMANTICS 12 "unknown types (400/404)"),
    /// nothing forwarded.
    pub fn refused(self) -> Self {
        self.deny_with(&[400, 403, 404], Challenge::Any)
    }

    /// Adds: the OperationOutcome diagnostics mention `text`.
    pub fn mentioning(mut self, text: &'static str) -> Self {
        if let Expect::Deny { mention, .. } = &mut self.expect {
            *mention = Some(text);
        }
        self
    }

    /// Adds: the challenge names exactly `needed` as its `scope` attribute.
    pub fn needing(mut self, needed: &'static str) -> Self {
        if let Expect::Deny { scope, .. } = &mut self.expect {
            *scope = Some(needed);
        }
        self
    }

    /// Expect: the response is withheld (403) and does not contain `leak`.
    pub fn withheld(mut self, leak: &'static str) -> Self {
        self.expect = Expect::Withheld(leak);
        self
    }

    /// Expect: refused after the stored version was read (before-check).
    pub fn deny_after_check(mut self) -> Self {
        self.expect = Expect::DenyAfterCheck { read: false };
        self
    }

    /// Expect: refused after the target's stored version was read (SMART-SEMANTICS A23).
    pub fn deny_after_read(mut self) -> Self {
        self.expect = Expect::DenyAfterCheck { read: true };
        self
    }

    /// Expect: forwarded with `param=value` added to the query, answered `status`.
    pub fn narrowed(mut self, status: u16, param: &'static str, value: &'static str) -> Self {
        self.expect = Expect::Narrowed {
            status,
            param,
            value,
        };
        self
    }

    /// Expect: a batch-response with these entry statuses, `forwarded` entries sent upstream.
    pub fn batch(
        mut self,
        statuses: &'static [u16],
        forwarded: usize,
        absent: &'static str,
    ) -> Self {
        self.expect = Expect::Batch {
            statuses,
            forwarded,
            absent,
        };
        self
    }
}

/// What came back for one case.
#[derive(Debug)]
pub struct Exchange {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Exchange {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// An issuer, the FHIR backend and the gateway (with `tests/fixtures/smart-policy.yaml`),
/// shared by every case of one table.
pub struct Table {
    /// Table name, for failure messages.
    pub name: &'static str,
    /// The token issuer.
    pub issuer: TestIssuer,
    /// The FHIR backend.
    pub backend: FhirBackend,
    /// The gateway under test.
    pub gateway: Gateway,
    client: Client<HttpConnector, Full<Bytes>>,
    tokens: Mutex<HashMap<(&'static str, Option<&'static str>), String>>,
}

impl Table {
    /// Starts the stack with `tests/fixtures/smart-policy.yaml`.
    pub async fn start(name: &'static str) -> Table {
        Table::start_with_policy(name, "smart-policy.yaml").await
    }

    /// Starts the stack with the policy `tests/fixtures/{policy}`.
    pub async fn start_with_policy(name: &'static str, policy: &str) -> Table {
        let issuer = TestIssuer::start();
        let backend = FhirBackend::start();
        let gateway = Gateway::builder()
            .upstream(backend.base_url())
            .issuer(&issuer)
            .policy_file(fixture_path(policy))
            .start()
            .await;
        let client = Client::builder(TokioExecutor::new()).build_http();
        Table {
            name,
            issuer,
            backend,
            gateway,
            client,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A token for these scopes and patient (minted once per pair).
    pub fn token(&self, scopes: &'static str, patient: Option<&'static str>) -> String {
        self.tokens
            .lock()
            .entry((scopes, patient))
            .or_insert_with(|| {
                self.issuer
                    .mint(self.issuer.claims_for(scopes, patient), KeyId::Rsa1)
            })
            .clone()
    }

    /// The `Authorization` value of `auth`, if any.
    fn authorization(&self, auth: &Auth) -> Option<String> {
        let token = match auth {
            Auth::None => return None,
            Auth::Garbage => "not-a-jwt".to_owned(),
            Auth::Bearer { scopes, patient } => self.token(scopes, *patient),
            Auth::Expired => {
                let mut claims = self.issuer.claims_for("user/*.cruds", None);
                let now = unix_now();
                claims["iat"] = (now - 7200).into();
                claims["nbf"] = (now - 7200).into();
                claims["exp"] = (now - 3600).into();
                self.issuer.mint(claims, KeyId::Rsa1)
            }
            Auth::BadSignature => with_bad_signature(&self.token("user/*.cruds", None)),
        };
        Some(format!("Bearer {token}"))
    }

    /// Sends a case's request exactly as written (no client-side path normalization).
    pub async fn send(&self, case: &Case) -> Result<Exchange, String> {
        self.send_target(case, &format!("{FHIR_BASE}{}", case.url))
            .await
    }

    /// Sends a case's request to `target` (path and query from the server root).
    pub async fn send_target(&self, case: &Case, target: &str) -> Result<Exchange, String> {
        let uri = format!("http://{}{target}", self.gateway.addr());
        let mut builder = http::Request::builder().method(case.method).uri(&uri);
        if let Some(value) = self.authorization(&case.auth) {
            builder = builder.header(http::header::AUTHORIZATION, value);
        }
        for (name, value) in &case.headers {
            builder = builder.header(*name, value.as_str());
        }
        let body = match &case.body {
            None => Bytes::new(),
            Some(Body::Json(v)) => {
                builder = builder.header(http::header::CONTENT_TYPE, FHIR_JSON);
                Bytes::from(v.to_string())
            }
            Some(Body::Form(f)) => {
                builder = builder.header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                );
                Bytes::from_static(f.as_bytes())
            }
            Some(Body::Raw(ct, bytes)) => {
                builder = builder.header(http::header::CONTENT_TYPE, *ct);
                Bytes::from(bytes.clone())
            }
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request {target:?}: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the body failed: {e}"))?
                .to_bytes();
            Ok(Exchange {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(15), exchange)
            .await
            .map_err(|_| "no answer within 15 s".to_owned())?
    }

    /// Runs one case: sends it and checks the outcome.
    pub async fn run_case(&self, case: &Case) -> Result<(), String> {
        self.backend.clear_requests();
        let exchange = self.send(case).await?;
        self.check(case, &exchange)
    }

    /// Checks an exchange against the case's expectation.
    pub fn check(&self, case: &Case, got: &Exchange) -> Result<(), String> {
        let seen = self.backend.requests();
        let target = format!("{FHIR_BASE}{}", case.url);
        let own_request_forwarded = seen
            .iter()
            .any(|r| r.method.as_str() == case.method && r.target == target);
        match &case.expect {
            Expect::Unset => Err("the case has no expectation".into()),
            Expect::Allow(status) => {
                if got.status != *status {
                    return Err(format!(
                        "expected {status} from the backend, got {}: {}",
                        got.status,
                        snippet(got)
                    ));
                }
                if !own_request_forwarded {
                    return Err(format!(
                        "the backend did not receive `{} {target}` (it saw {:?})",
                        case.method,
                        seen.iter()
                            .map(|r| format!("{} {}", r.method, r.target))
                            .collect::<Vec<_>>()
                    ));
                }
                Ok(())
            }
            Expect::Public(status) => {
                if got.status != *status {
                    return Err(format!(
                        "expected {status}, got {}: {}",
                        got.status,
                        snippet(got)
                    ));
                }
                Ok(())
            }
            Expect::Deny {
                statuses,
                challenge,
                mention,
                scope,
            } => {
                if !statuses.contains(&got.status) {
                    return Err(format!(
                        "expected a refusal {statuses:?}, got {}: {}",
                        got.status,
                        snippet(got)
                    ));
                }
                let diagnostics = operation_outcome(got, case.method)?;
                check_challenge(got, *challenge)?;
                if let Some(needed) = scope {
                    let value = got.header("www-authenticate").unwrap_or_default();
                    if !value.contains(&format!("scope=\"{needed}\"")) {
                        return Err(format!(
                            "the challenge must name scope=\"{needed}\": {value:?}"
                        ));
                    }
                }
                if let Some(text) = mention {
                    if !diagnostics.contains(text) {
                        return Err(format!(
                            "the diagnostics do not mention {text:?}: {diagnostics:?}"
                        ));
                    }
                }
                if !seen.is_empty() {
                    return Err(format!(
                        "refused, but the backend was called: {:?}",
                        seen.iter()
                            .map(|r| format!("{} {}", r.method, r.target))
                            .collect::<Vec<_>>()
                    ));
                }
                Ok(())
            }
            Expect::Withheld(leak) => {
                if got.status != 403 {
                    return Err(format!(
                        "expected the response withheld (403), got {}",
                        got.status
                    ));
                }
                operation_outcome(got, case.method)?;
                let text = got.text();
                if text.contains("secret-") || (!leak.is_empty() && text.contains(leak)) {
                    return Err(format!("the 403 leaks the withheld resource: {text}"));
                }
                if seen.is_empty() {
                    return Err(
                        "a response check needs the backend's answer, but nothing was forwarded"
                            .into(),
                    );
                }
                Ok(())
            }
            Expect::Narrowed {
                status,
                param,
                value,
            } => {
                if got.status != *status {
                    return Err(format!(
                        "expected {status} from the backend, got {}: {}",
                        got.status,
                        snippet(got)
                    ));
                }
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let wanted = decoded_pairs(query);
                let forwarded = seen.iter().find(|r| {
                    r.method.as_str() == case.method && r.path == path && {
                        let got = decoded_pairs(r.query.as_deref().unwrap_or(""));
                        wanted.iter().all(|w| got.contains(w))
                            && got.contains(&((*param).to_owned(), (*value).to_owned()))
                    }
                });
                match forwarded {
                    Some(_) => Ok(()),
                    None => Err(format!(
                        "the backend did not receive `{} {path}` with {wanted:?} and {param}={value} (it saw {:?})",
                        case.method,
                        seen.iter().map(|r| format!("{} {}", r.method, r.target)).collect::<Vec<_>>()
                    )),
                }
            }
            Expect::DenyAfterCheck { read } => {
                let path = target.split('?').next().unwrap_or_default();
                if *read
                    && !seen
                        .iter()
                        .any(|r| r.method == http::Method::GET && r.path == path)
                {
                    return Err(format!(
                        "the refusal must rest on the stored version, but `GET {path}` was not sent (the backend saw {:?})",
                        seen.iter().map(|r| format!("{} {}", r.method, r.target)).collect::<Vec<_>>()
                    ));
                }
                if got.status != 403 {
                    return Err(format!(
                        "expected 403 after the stored-version check, got {}",
                        got.status
                    ));
                }
                operation_outcome(got, case.method)?;
                if got.text().contains("secret-") {
                    return Err(format!("the 403 leaks the stored resource: {}", got.text()));
                }
                let writes: Vec<_> = seen
                    .iter()
                    .filter(|r| r.method.as_str() == case.method)
                    .map(|r| format!("{} {}", r.method, r.target))
                    .collect();
                if !writes.is_empty() {
                    return Err(format!("the refused write reached the backend: {writes:?}"));
                }
                Ok(())
            }
            Expect::Batch {
                statuses,
                forwarded,
                absent,
            } => check_batch(got, &seen, statuses, *forwarded, absent),
        }
    }

    /// Runs every case, then fails once listing every deviation (table, case, rule, why).
    pub async fn run_all(&self, cases: Vec<Case>) {
        let mut names = std::collections::HashSet::new();
        for c in &cases {
            assert!(
                names.insert(c.name),
                "duplicate case name {:?} in table {}",
                c.name,
                self.name
            );
        }
        let mut failures = Vec::new();
        let mut answered = Vec::new();
        for c in &cases {
            self.backend.clear_requests();
            let outcome = match self.send(c).await {
                Ok(got) => match got.header(X_REQUEST_ID) {
                    Some(id) => {
                        answered.push((c, id));
                        self.check(c, &got)
                    }
                    None => Err("the answer carries no X-Request-Id".to_owned()),
                },
                Err(why) => Err(why),
            };
            if let Err(why) = outcome {
                failures.push(format!("{}/{} [{}]: {why}", self.name, c.name, c.rule));
            }
        }
        failures.extend(self.check_audit(&answered).await);
        report(self.name, cases.len(), failures);
    }

    /// One audit record per request, with the decision the client saw, and never a bearer
    /// token in the trail (fhirwall's audit contract; common.md "Never log or audit a bearer
    /// token").
    async fn check_audit(&self, answered: &[(&Case, String)]) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let records = loop {
            let records = self.gateway.audit_lines();
            let found = answered
                .iter()
                .filter(|(_, id)| records.iter().any(|r| r["request_id"] == id.as_str()))
                .count();
            if found == answered.len() || tokio::time::Instant::now() >= deadline {
                break records;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut failures = Vec::new();
        for (case, id) in answered {
            let mine: Vec<&Value> = records
                .iter()
                .filter(|r| r["request_id"] == id.as_str())
                .collect();
            let [record] = mine.as_slice() else {
                failures.push(format!(
                    "{}/{} [audit: one record per request]: {} records for request {id}",
                    self.name,
                    case.name,
                    mine.len()
                ));
                continue;
            };
            let wanted = match case.expect {
                Expect::Allow(_) | Expect::Narrowed { .. } => Some("allow"),
                Expect::Deny { .. } => Some("deny"),
                _ => None,
            };
            if let Some(wanted) = wanted {
                if record["decision"] != wanted {
                    failures.push(format!(
                        "{}/{} [audit: the record carries the decision]: expected {wanted}, got {}",
                        self.name, case.name, record["decision"]
                    ));
                }
            }
        }
        let trail = std::fs::read_to_string(self.gateway.audit_path()).unwrap_or_default();
        for token in self.tokens.lock().values() {
            if trail.contains(token.as_str()) {
                failures.push(format!(
                    "{} [audit: never a bearer token]: a token appears in the audit trail",
                    self.name
                ));
                break;
            }
        }
        failures
    }
}

/// The request id header every answer carries.
const X_REQUEST_ID: &str = "x-request-id";

/// Query items, percent-decoded (`+` is a space in forms).
fn decoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// The start of a response body, for failure messages.
fn snippet(got: &Exchange) -> String {
    got.text().chars().take(300).collect()
}

/// Panics with every failure, if any.
pub fn report(table: &str, total: usize, failures: Vec<String>) {
    if failures.is_empty() {
        return;
    }
    let mut text = format!(
        "{} of {total} cases of table `{table}` deviate:\n",
        failures.len()
    );
    for f in &failures {
        let shown: String = f.chars().take(900).collect();
        let _ = writeln!(text, "  - {shown}");
    }
    panic!("{text}");
}

/// Checks a gateway-written OperationOutcome (R4 http.html: failures carry one); returns
/// its diagnostics. HEAD answers have no body.
fn operation_outcome(got: &Exchange, method: &str) -> Result<String, String> {
    if method == "HEAD" {
        return Ok(String::new());
    }
    let ct = got.header("content-type").unwrap_or_default();
    if !ct.starts_with(FHIR_JSON) {
        return Err(format!(
            "a refusal is application/fhir+json, got {ct:?}: {}",
            got.text()
        ));
    }
    let body = got.json();
    if body["resourceType"] != "OperationOutcome" || body["issue"][0]["severity"] != "error" {
        return Err(format!(
            "a refusal carries an error OperationOutcome: {}",
            got.text()
        ));
    }
    if got.status == 403 && body["issue"][0]["code"] != "forbidden" {
        return Err(format!(
            "a 403 OperationOutcome has issue code `forbidden`: {}",
            got.text()
        ));
    }
    Ok(body["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["diagnostics"].as_str())
        .collect::<Vec<_>>()
        .join(" | "))
}

fn check_challenge(got: &Exchange, challenge: Challenge) -> Result<(), String> {
    let all: Vec<_> = got.headers.get_all("www-authenticate").iter().collect();
    if all.len() > 1 {
        return Err(format!("at most one challenge, got {all:?}"));
    }
    let value = got.header("www-authenticate");
    match (challenge, value.as_deref()) {
        (Challenge::Any, _) => Ok(()),
        (Challenge::Absent, None) => Ok(()),
        (Challenge::Absent, Some(v)) => Err(format!("no challenge expected, got {v:?}")),
        (Challenge::Bare, Some(v)) if v == format!("Bearer realm=\"{REALM}\"") => Ok(()),
        (Challenge::Bare, v) => Err(format!(
            "expected the bare challenge `Bearer realm=\"{REALM}\"` (RFC 6750 §3.1), got {v:?}"
        )),
        (Challenge::Error(code), Some(v))
            if v.starts_with(&format!("Bearer realm=\"{REALM}\""))
                && v.contains(&format!("error=\"{code}\"")) =>
        {
            Ok(())
        }
        (Challenge::Error(code), v) => Err(format!(
            "expected a challenge with error=\"{code}\", got {v:?}"
        )),
    }
}

fn check_batch(
    got: &Exchange,
    seen: &[RecordedRequest],
    statuses: &[u16],
    forwarded: usize,
    absent: &str,
) -> Result<(), String> {
    if got.status != 200 {
        return Err(format!(
            "a batch is answered 200, got {}: {}",
            got.status,
            got.text()
        ));
    }
    let body = got.json();
    if body["resourceType"] != "Bundle" || body["type"] != "batch-response" {
        return Err(format!("expected a batch-response Bundle: {}", got.text()));
    }
    let entries = body["entry"].as_array().cloned().unwrap_or_default();
    let got_statuses: Vec<String> = entries
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or("?").to_owned())
        .collect();
    let ok = entries.len() == statuses.len()
        && got_statuses.iter().zip(statuses).all(|(g, want)| {
            if *want == 400 {
                g.starts_with('4')
            } else {
                g.starts_with(&want.to_string())
            }
        });
    if !ok {
        return Err(format!(
            "entry statuses in order: expected {statuses:?}, got {got_statuses:?}"
        ));
    }
    for (i, (entry, want)) in entries.iter().zip(statuses).enumerate() {
        if *want >= 400 {
            if entry["response"]["outcome"]["resourceType"] != "OperationOutcome" {
                return Err(format!(
                    "refused entry {i} carries an OperationOutcome: {entry}"
                ));
            }
            if entry.get("resource").is_some_and(|r| !r.is_null()) {
                return Err(format!("refused entry {i} carries a resource: {entry}"));
            }
        }
    }
    if !absent.is_empty() && got.text().contains(absent) {
        return Err(format!(
            "the batch-response contains {absent:?}: {}",
            got.text()
        ));
    }
    let batches: Vec<&RecordedRequest> = seen
        .iter()
        .filter(|r| r.method == http::Method::POST && r.path == FHIR_BASE)
        .collect();
    let sizes: Vec<usize> = batches
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|b| b["entry"].as_array().map(Vec::len))
                .unwrap_or(0)
        })
        .collect();
    match (forwarded, sizes.as_slice()) {
        (0, []) | (0, [0]) => Ok(()),
        (n, [m]) if n == *m => Ok(()),
        _ => Err(format!(
            "expected one upstream batch with {forwarded} entries, the backend got batches of {sizes:?}"
        )),
    }
}
