//! RFC 7662 token introspection for opaque access tokens, with a circuit breaker, and the
//! RFC 7009 revocation pass-through that uses the same client credentials.
//!
//! One [`Introspector`] per issuer that configures `introspection`. It is only called on a
//! token-cache miss (the [`super::Authenticator`] caches its answers: active ones until
//! `min(exp, cache_max_ttl)`, inactive ones for `negative_ttl`), so the provider is off the
//! hot path. Every answer is read fail-closed: anything but a well-formed `200` with
//! `"active": true` and matching `iss`/`aud` is a refusal, and anything that is not an
//! answer at all (transport error, timeout, 5xx, 4xx about our own credentials, an open
//! circuit) is [`AuthError::IntrospectionUnavailable`] (503), never an allow.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use parking_lot::Mutex;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde_json::{Map, Value};

use super::{jwks, jwt, AuthError, Principal};
use crate::config::{ClientAuth, IntrospectionConfig, IssuerConfig, SecretSource};
use crate::metrics::Metrics;

/// Largest introspection or metadata answer read (bytes); real ones are well under 4 KiB.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Lifetime of a `private_key_jwt` client assertion.
const ASSERTION_LIFETIME: u64 = 60;

/// Why an introspector could not be built (a startup error).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The environment variable holding a secret is not set (or not UTF-8).
    #[error(
        "issuer {issuer}: environment variable {var} (the introspection client secret) is not set"
    )]
    MissingEnv {
        /// The issuer.
        issuer: String,
        /// The variable.
        var: String,
    },
    /// A secret or key file cannot be read.
    #[error("issuer {issuer}: cannot read {path}: {source}")]
    File {
        /// The issuer.
        issuer: String,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The secret is empty.
    #[error("issuer {issuer}: the introspection client secret is empty")]
    EmptySecret {
        /// The issuer.
        issuer: String,
    },
    /// The private key is not a usable PEM key for the algorithm.
    #[error("issuer {issuer}: the private key in {path} is not a PEM key for {alg:?}: {source}")]
    Key {
        /// The issuer.
        issuer: String,
        /// The file.
        path: String,
        /// The configured algorithm.
        alg: jsonwebtoken::Algorithm,
        /// Why.
        source: jsonwebtoken::errors::Error,
    },
}

/// Reads a secret from where the configuration says (surrounding whitespace trimmed).
pub(crate) fn read_secret(source: &SecretSource) -> Result<String, String> {
    match source {
        SecretSource::Env(var) => std::env::var(var)
            .map(|s| s.trim().to_owned())
            .map_err(|_| format!("environment variable {var} is not set")),
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
    }
}

/// The introspection client of one issuer.
pub(crate) struct Introspector {
    issuer: Arc<str>,
    audiences: Box<[Box<str>]>,
    patient_claim: Box<str>,
    client_id: Box<str>,
    credentials: Credentials,
    /// The configured endpoint, else the discovered one (kept once found).
    endpoint: Mutex<Option<Arc<str>>>,
    /// The configured revocation endpoint; else discovery's, if any.
    revocation_endpoint: Option<Arc<str>>,
    configured_endpoint: bool,
    timeout: Duration,
    /// Longest life of an active result in the token cache.
    pub(crate) cache_max_ttl: Duration,
    /// Life of an inactive result in the negative cache.
    pub(crate) negative_ttl: Duration,
    http: reqwest::Client,
    breaker: Breaker,
    last_error: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
}

/// Resolved client credentials (RFC 6749 §2.3, OIDC Core §9).
enum Credentials {
    Basic(Box<str>),
    Post(Box<str>),
    PrivateKeyJwt {
        key: EncodingKey,
        alg: jsonwebtoken::Algorithm,
        kid: Option<String>,
    },
}

/// Circuit breaker state; see [`Breaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else is refused until it reports.
    HalfOpen,
}

/// Stops piling calls onto a dead provider: after `threshold` consecutive failures the
/// circuit opens for `open_for` (calls fail at once); then one probe is let through, and
/// its outcome closes or re-opens the circuit.
struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: AtomicU32,
    state: Mutex<State>,
}

/// A call admitted by the breaker; a guard dropped without an outcome (the request was
/// cancelled mid-call) counts as a failure, so a cancelled probe cannot wedge the circuit
/// half-open.
struct Admitted<'a> {
    breaker: &'a Breaker,
    done: bool,
}

/// Introspection state of one issuer, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrospectionStatus {
    /// The issuer.
    pub issuer: Arc<str>,
    /// `closed`, `open` or `half-open`.
    pub circuit: &'static str,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// The last failure, if the last call failed.
    pub last_error: Option<String>,
}

/// Why a call failed (for logs and `/readyz`; the client only sees 503).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0}")]
    Transport(String),
    #[error("the endpoint answered HTTP {0}")]
    Status(u16),
    #[error("the answer is not an introspection response: {0}")]
    Body(String),
    #[error("discovery: {0}")]
    Discovery(String),
}

// === impl Introspector ===

impl Introspector {
    /// The introspector of `issuer`, secrets and keys read now.
    pub(crate) fn new(
        issuer: &IssuerConfig,
        cfg: &IntrospectionConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SetupError> {
        let name = issuer.issuer.clone();
        let secret = |source: &SecretSource| -> Result<Box<str>, SetupError> {
            let value = match source {
                SecretSource::Env(var) => {
                    std::env::var(var).map_err(|_| SetupError::MissingEnv {
                        issuer: name.clone(),
                        var: var.clone(),
                    })?
                }
                SecretSource::File(path) => {
                    std::fs::read_to_string(path).map_err(|source| SetupError::File {
                        issuer: name.clone(),
                        path: path.display().to_string(),
                        source,
                    })?
                }
            };
            let value = value.trim();
            if value.is_empty() {
                return Err(SetupError::EmptySecret {
                    issuer: name.clone(),
                });
            }
            Ok(value.into())
        };
        let credentials = match &cfg.auth {
            ClientAuth::SecretBasic(s) => Credentials::Basic(secret(s)?),
            ClientAuth::SecretPost(s) => Credentials::Post(secret(s)?),
            ClientAuth::PrivateKeyJwt { key_file, alg, kid } => {
                let path = key_file.display().to_string();
                let pem = std::fs::read(key_file).map_err(|source| SetupError::File {
                    issuer: name.clone(),
                    path: path.clone(),
                    source,
                })?;
                let key = match alg {
                    jsonwebtoken::Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
                    _ => EncodingKey::from_rsa_pem(&pem),
                }
                .map_err(|source| SetupError::Key {
                    issuer: name.clone(),
                    path,
                    alg: *alg,
                    source,
                })?;
                Credentials::PrivateKeyJwt {
                    key,
                    alg: *alg,
                    kid: kid.clone(),
                }
            }
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("fhirwall/", env!("CARGO_PKG_VERSION")))
            // The token goes only where the configuration or discovery says.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            // Keep connections to the provider warm: a miss should cost one round trip.
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("the HTTP client for introspection can be built");
        metrics
            .introspection_circuit_state
            .with_label_values(&[&name])
            .set(0);
        Ok(Introspector {
            issuer: name.as_str().into(),
            audiences: issuer.audiences.iter().map(|a| a.as_str().into()).collect(),
            patient_claim: issuer.patient_claim.as_str().into(),
            client_id: cfg.client_id.as_str().into(),
            credentials,
            endpoint: Mutex::new(cfg.endpoint.as_deref().map(Into::into)),
            revocation_endpoint: cfg.revocation_endpoint.as_deref().map(Into::into),
            configured_endpoint: cfg.endpoint.is_some(),
            timeout: cfg.timeout,
            cache_max_ttl: cfg.cache_max_ttl,
            negative_ttl: cfg.negative_ttl,
            http,
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_open_for),
            last_error: Mutex::new(None),
            metrics,
        })
    }

    /// Asks the provider about `token` (RFC 7662 §2.1) and reads the answer into a
    /// principal. [`AuthError::Inactive`] (or another 401 error) when the provider or the
    /// answer refuses it; [`AuthError::IntrospectionUnavailable`] when no answer could be had.
    pub(crate) async fn introspect(&self, token: &str) -> Result<Principal, AuthError> {
        let Some(mut admitted) = self.breaker.admit() else {
            self.metrics
                .introspection_circuit_rejections
                .with_label_values(&[&self.issuer])
                .inc();
            return Err(AuthError::IntrospectionUnavailable);
        };
        self.publish_state();
        let started = Instant::now();
        let result = self.call(token).await;
        self.metrics
            .introspection_duration
            .with_label_values(&[&self.issuer])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(claims) => {
                admitted.succeeded();
                *self.last_error.lock() = None;
                self.publish_state();
                let verdict = self.principal(claims, unix_now());
                let label = if verdict.is_ok() {
                    "active"
                } else {
                    "inactive"
                };
                self.metrics
                    .introspection_requests
                    .with_label_values(&[&self.issuer, label])
                    .inc();
                verdict
            }
            Err(e) => {
                admitted.failed();
                self.publish_state();
                tracing::warn!(issuer = %self.issuer, error = %e, "token introspection failed");
                *self.last_error.lock() = Some(e.to_string());
                self.metrics
                    .introspection_requests
                    .with_label_values(&[&self.issuer, "error"])
                    .inc();
                Err(AuthError::IntrospectionUnavailable)
            }
        }
    }

    /// RFC 7009 §2.1: asks the provider to revoke `token`. `Ok(false)` when no revocation
    /// endpoint is configured or discovered.
    pub(crate) async fn revoke_at_provider(&self, token: &str) -> Result<bool, String> {
        let endpoint = match &self.revocation_endpoint {
            Some(e) => Some(Arc::clone(e)),
            None => self
                .metadata_member("revocation_endpoint")
                .await
                .map_err(|e| e.to_string())?
                .map(Into::into),
        };
        let Some(endpoint) = endpoint else {
            return Ok(false);
        };
        let response = self
            .authenticated_post(&endpoint, token)
            .send()
            .await
            .map_err(|e| transport(&e))?;
        // RFC 7009 §2.2: 200 whether or not the token was valid.
        match response.status().as_u16() {
            200 => Ok(true),
            status => {
                let body = read_limited(response).await.unwrap_or_default();
                Err(format!(
                    "the revocation endpoint answered HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ))
            }
        }
    }

    /// State for `/readyz`.
    pub(crate) fn status(&self) -> IntrospectionStatus {
        IntrospectionStatus {
            issuer: Arc::clone(&self.issuer),
            circuit: self.breaker.state_name(),
            consecutive_failures: self.breaker.failures.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
        }
    }

    fn publish_state(&self) {
        let value = match self.breaker.state_name() {
            "open" => 1,
            "half-open" => 2,
            _ => 0,
        };
        self.metrics
            .introspection_circuit_state
            .with_label_values(&[&self.issuer])
            .set(value);
    }

    /// One introspection call: the JSON object of a `200` answer.
    async fn call(&self, token: &str) -> Result<Map<String, Value>, CallError> {
        let endpoint = self.endpoint().await?;
        let response = self
            .authenticated_post(&endpoint, token)
            .send()
            .await
            .map_err(|e| CallError::Transport(transport(&e)))?;
        let status = response.status().as_u16();
        if status != 200 {
            // 401/403 are about our own credentials (RFC 7662 §2.3), not the token: the
            // token cannot be judged, so this is an outage, not a refusal.
            return Err(CallError::Status(status));
        }
        let body = read_limited(response).await.map_err(CallError::Transport)?;
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(CallError::Body("not a JSON object".into())),
            Err(e) => Err(CallError::Body(e.to_string())),
        }
    }

    /// A POST of `token` (with `token_type_hint=access_token`) to `url`, authenticated as
    /// the configured client.
    fn authenticated_post(&self, url: &str, token: &str) -> reqwest::RequestBuilder {
        let mut form: Vec<(&str, String)> = vec![
            ("token", token.to_owned()),
            ("token_type_hint", "access_token".to_owned()),
        ];
        let mut request = self
            .http
            .post(url)
            .timeout(self.timeout)
            .header(ACCEPT, "application/json");
        match &self.credentials {
            Credentials::Basic(secret) => {
                // RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
                let id = form_encode(&self.client_id);
                let secret = form_encode(secret);
                let basic =
                    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
                request = request.header(AUTHORIZATION, format!("Basic {basic}"));
            }
            Credentials::Post(secret) => {
                form.push(("client_id", self.client_id.to_string()));
                form.push(("client_secret", secret.to_string()));
            }
            Credentials::PrivateKeyJwt { key, alg, kid } => {
                form.push(("client_id", self.client_id.to_string()));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ));
                form.push((
                    "client_assertion",
                    self.assertion(key, *alg, kid.clone(), url),
                ));
            }
        }
        request.form(&form)
    }

    /// RFC 7523 §3 client assertion: `iss` = `sub` = client id, `aud` = the endpoint, a
    /// fresh `jti`, one minute of life.
    fn assertion(
        &self,
        key: &EncodingKey,
        alg: jsonwebtoken::Algorithm,
        kid: Option<String>,
        audience: &str,
    ) -> String {
        let now = unix_now();
        let jti: [u8; 16] = rand::random();
        let claims = serde_json::json!({
            "iss": &*self.client_id,
            "sub": &*self.client_id,
            "aud": audience,
            "jti": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        let mut header = Header::new(alg);
        header.kid = kid;
        // The key was checked for `alg` at startup.
        jsonwebtoken::encode(&header, &claims, key).unwrap_or_default()
    }

    /// The introspection endpoint: configured, or `introspection_endpoint` of the
    /// issuer's metadata (RFC 8414 §2), looked up once.
    async fn endpoint(&self) -> Result<Arc<str>, CallError> {
        if let Some(e) = self.endpoint.lock().clone() {
            return Ok(e);
        }
        let found = self
            .metadata_member("introspection_endpoint")
            .await?
            .ok_or_else(|| {
                CallError::Discovery("the metadata has no introspection_endpoint".into())
            })?;
        let found: Arc<str> = found.into();
        if !self.configured_endpoint {
            *self.endpoint.lock() = Some(Arc::clone(&found));
        }
        Ok(found)
    }

    /// A string member of the issuer's discovery document, checking the document is the
    /// issuer's own (RFC 8414 §3.3).
    async fn metadata_member(&self, member: &str) -> Result<Option<String>, CallError> {
        let mut last = String::from("no discovery URL");
        for url in jwks::discovery_urls(&self.issuer) {
            let response = match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    last = format!("{url}: HTTP {}", r.status().as_u16());
                    continue;
                }
                Err(e) => {
                    last = format!("{url}: {}", transport(&e));
                    continue;
                }
            };
            let body = read_limited(response).await.map_err(CallError::Discovery)?;
            let doc: Value = serde_json::from_slice(&body)
                .map_err(|e| CallError::Discovery(format!("{url}: {e}")))?;
            if doc.get("issuer").and_then(Value::as_str) != Some(&*self.issuer) {
                return Err(CallError::Discovery(format!(
                    "{url}: the metadata is for another issuer"
                )));
            }
            return Ok(doc.get(member).and_then(Value::as_str).map(str::to_owned));
        }
        Err(CallError::Discovery(last))
    }

    /// Reads an RFC 7662 §2.2 answer, fail-closed.
    fn principal(&self, mut claims: Map<String, Value>, now: u64) -> Result<Principal, AuthError> {
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Err(AuthError::Inactive);
        }
        // A refresh token is active too, but it is not an access token.
        if let Some(t) = claims.get("token_type").and_then(Value::as_str) {
            if t.eq_ignore_ascii_case("refresh_token") {
                return Err(AuthError::Inactive);
            }
        }
        match claims.get("iss") {
            None | Some(Value::Null) => {}
            Some(Value::String(iss)) if *iss == *self.issuer => {}
            Some(_) => return Err(AuthError::UntrustedIssuer),
        }
        // The provider says the token is active, not that it is meant for us: the audience
        // is required, as for a JWT.
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => self.audiences.iter().any(|x| **x == *a),
            Some(Value::Array(items)) => items.iter().any(|v| {
                v.as_str()
                    .is_some_and(|a| self.audiences.iter().any(|x| **x == *a))
            }),
            None | Some(Value::Null) => return Err(AuthError::MissingClaim("aud")),
            Some(_) => return Err(AuthError::Malformed),
        };
        if !aud_ok {
            return Err(AuthError::WrongAudience);
        }
        let number = |v: Option<&Value>| v.and_then(Value::as_f64).map(|f| f.max(0.0) as u64);
        if let Some(nbf) = number(claims.get("nbf")) {
            if nbf > now {
                return Err(AuthError::NotYetValid);
            }
        }
        match claims.get("exp") {
            Some(v) if !v.is_null() => {
                if number(Some(v)).ok_or(AuthError::Malformed)? <= now {
                    return Err(AuthError::Expired);
                }
            }
            // RFC 7662 makes `exp` optional: without it the answer is trusted for
            // `cache_max_ttl` only.
            _ => {
                claims.insert(
                    "exp".into(),
                    Value::from(now + self.cache_max_ttl.as_secs().max(1)),
                );
            }
        }
        let issuer = Arc::clone(&self.issuer);
        jwt::principal(&issuer, &self.patient_claim, &claims)
    }
}

// === impl Breaker ===

impl Breaker {
    fn new(threshold: u32, open_for: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            failures: AtomicU32::new(0),
            state: Mutex::new(State::Closed),
        }
    }

    /// Lets a call through, or not (open circuit, or a probe already in flight).
    fn admit(&self) -> Option<Admitted<'_>> {
        let mut state = self.state.lock();
        match *state {
            State::Closed => {}
            State::Open { until } if Instant::now() >= until => *state = State::HalfOpen,
            State::Open { .. } | State::HalfOpen => return None,
        }
        Some(Admitted {
            breaker: self,
            done: false,
        })
    }

    fn state_name(&self) -> &'static str {
        match *self.state.lock() {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half-open",
        }
    }

    fn on_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        *self.state.lock() = State::Closed;
    }

    fn on_failure(&self) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let mut state = self.state.lock();
        let reopen = match *state {
            State::HalfOpen => true,
            State::Closed => failures >= self.threshold,
            // Calls admitted before the circuit opened report late: keep the later deadline.
            State::Open { .. } => false,
        };
        if reopen {
            *state = State::Open {
                until: Instant::now() + self.open_for,
            };
        }
    }
}

// === impl Admitted ===

impl Admitted<'_> {
    fn succeeded(&mut self) {
        self.done = true;
        self.breaker.on_success();
    }

    fn failed(&mut self) {
        self.done = true;
        self.breaker.on_failure();
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.on_failure();
        }
    }
}

/// A transport error without the URL's query (there is none here) or the request body.
fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        // No URL in the message: it is the configured endpoint, known to the operator.
        let mut text = e.to_string();
        if let Some(url) = e.url() {
            text = text.replace(url.as_str(), "the endpoint");
        }
        text
    }
}

/// The body, refusing more than [`MAX_RESPONSE_BYTES`].
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 Appendix B).
fn form_encode(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    // Everything but ALPHA / DIGIT / "*" / "-" / "." / "_" (the WHATWG form serializer).
    const FORM: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'*')
        .remove(b'-')
        .remove(b'.')
        .remove(b'_');
    utf8_percent_encode(s, FORM).to_string()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::issuer_config;
    use serde_json::json;

    const ISS: &str = "https://idp.test";

    fn introspector() -> Introspector {
        let issuer = issuer_config(ISS, None);
        std::env::set_var("FHIRWALL_UNIT_INTROSPECTION_SECRET", "s3cret");
        let cfg = IntrospectionConfig {
            endpoint: Some("http://127.0.0.1:9/introspect".into()),
            revocation_endpoint: None,
            client_id: "gw".into(),
            auth: ClientAuth::SecretBasic(SecretSource::Env(
                "FHIRWALL_UNIT_INTROSPECTION_SECRET".into(),
            )),
            timeout: Duration::from_secs(1),
            cache_max_ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            default_for_opaque: false,
            breaker_failures: 2,
            breaker_open_for: Duration::from_millis(100),
        };
        Introspector::new(&issuer, &cfg, Arc::default()).unwrap()
    }

    fn answer(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn an_active_answer_becomes_a_principal() {
        let p = introspector()
            .principal(
                answer(json!({
                    "active": true, "iss": ISS, "aud": ["x", crate::auth::test_support::AUDIENCE],
                    "exp": NOW + 60, "client_id": "app", "sub": "u1", "scope": "system/Patient.rs",
                    "patient": "p1", "fhirUser": "Practitioner/1", "token_type": "Bearer"
                })),
                NOW,
            )
            .unwrap();
        assert_eq!(p.expires_at, NOW + 60);
        assert_eq!(p.client_id.as_deref(), Some("app"));
        assert_eq!(p.subject.as_deref(), Some("u1"));
        assert_eq!(p.patient.as_deref(), Some("p1"));
        assert_eq!(p.fhir_user.as_deref(), Some("Practitioner/1"));
        assert_eq!(p.scopes.iter().count(), 1);
    }

    #[test]
    fn anything_but_a_clear_active_answer_for_us_is_refused() {
        let i = introspector();
        let aud = crate::auth::test_support::AUDIENCE;
        let cases = [
            (json!({"active": false}), AuthError::Inactive),
            (json!({"active": "true", "aud": aud}), AuthError::Inactive),
            (json!({}), AuthError::Inactive),
            (
                json!({"active": true, "aud": aud, "token_type": "refresh_token"}),
                AuthError::Inactive,
            ),
            (
                json!({"active": true, "aud": aud, "iss": "https://evil"}),
                AuthError::UntrustedIssuer,
            ),
            (json!({"active": true}), AuthError::MissingClaim("aud")),
            (
                json!({"active": true, "aud": "someone-else"}),
                AuthError::WrongAudience,
            ),
            (
                json!({"active": true, "aud": aud, "exp": NOW}),
                AuthError::Expired,
            ),
            (
                json!({"active": true, "aud": aud, "nbf": NOW + 100}),
                AuthError::NotYetValid,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(
                i.principal(answer(v.clone()), NOW).unwrap_err(),
                want,
                "{v}"
            );
        }
    }

    #[test]
    fn without_exp_an_answer_lives_cache_max_ttl() {
        let p = introspector()
            .principal(
                answer(json!({"active": true, "aud": crate::auth::test_support::AUDIENCE})),
                NOW,
            )
            .unwrap();
        assert_eq!(p.expires_at, NOW + 30);
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_lets_one_probe_through() {
        let b = Breaker::new(2, Duration::from_millis(100));
        b.admit().unwrap().failed();
        assert_eq!(b.state_name(), "closed");
        b.admit().unwrap().succeeded();
        b.admit().unwrap().failed();
        b.admit().unwrap().failed();
        assert_eq!(b.state_name(), "open");
        assert!(b.admit().is_none());
        std::thread::sleep(Duration::from_millis(120));
        let probe = b.admit().expect("one probe after open_for");
        assert_eq!(b.state_name(), "half-open");
        assert!(b.admit().is_none(), "only one probe at a time");
        drop(probe); // cancelled: counts as a failure
        assert_eq!(b.state_name(), "open");
        std::thread::sleep(Duration::from_millis(120));
        b.admit().unwrap().succeeded();
        assert_eq!(b.state_name(), "closed");
        assert!(b.admit().is_some());
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unavailable_not_a_refusal() {
        let i = introspector();
        for _ in 0..2 {
            assert_eq!(
                i.introspect("opaque").await.unwrap_err(),
                AuthError::IntrospectionUnavailable
            );
        }
        assert_eq!(i.status().circuit, "open");
        assert_eq!(i.status().consecutive_failures, 2);
        assert!(i.status().last_error.is_some());
        assert_eq!(
            i.introspect("opaque").await.unwrap_err(),
            AuthError::IntrospectionUnavailable
        );
    }

    #[test]
    fn form_encoding_keeps_unreserved_characters() {
        assert_eq!(form_encode("a-b_c.d*e"), "a-b_c.d*e");
        assert_eq!(form_encode("a:b c+"), "a%3Ab%20c%2B");
    }
}
