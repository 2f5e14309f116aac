//! `TestIssuer`: an in-process OpenID provider on loopback that publishes a JWKS of the
//! fixture keys and mints tokens, plus helpers that craft the classic JWT attacks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::keys::KeyId;
use super::server::{handler, response, HttpServer};
use super::TEST_AUDIENCE;

/// `kid` of the key [`TestIssuer::mint_unpublished`] signs with (never in any JWKS).
pub const UNPUBLISHED_KID: &str = "unpublished";

/// Subject of [`TestIssuer::claims_for`] tokens.
pub const TEST_SUBJECT: &str = "test-user";

/// `client_id` of [`TestIssuer::claims_for`] tokens.
pub const TEST_CLIENT_ID: &str = "test-client";

/// An OpenID provider on `http://127.0.0.1:PORT`:
/// `/.well-known/openid-configuration` and `/jwks`.
pub struct TestIssuer {
    server: HttpServer,
    state: Arc<IssuerState>,
    /// A P-256 key made at start, never published: tokens with an unknown `kid`.
    unpublished: EncodingKey,
}

struct IssuerState {
    issuer_url: String,
    published: Mutex<Vec<KeyId>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    /// When set, `/jwks` answers this status instead of the key set.
    jwks_failure: Mutex<Option<u16>>,
    /// When set, `/jwks` waits this long before answering.
    jwks_delay: Mutex<Option<Duration>>,
    /// When set, the discovery documents answer this status instead of the metadata.
    discovery_failure: Mutex<Option<u16>>,
}

impl TestIssuer {
    /// Starts an issuer publishing every fixture key.
    pub fn start() -> Self {
        Self::start_with_keys(&KeyId::ALL)
    }

    /// Starts an issuer publishing only `keys`.
    pub fn start_with_keys(keys: &[KeyId]) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(IssuerState {
            issuer_url: format!("http://{addr}"),
            published: Mutex::new(keys.to_vec()),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            jwks_failure: Mutex::new(None),
            jwks_delay: Mutex::new(None),
            discovery_failure: Mutex::new(None),
        });
        let served = state.clone();
        let server = HttpServer::start_on(
            listener,
            handler(move |req| {
                let state = served.clone();
                async move { Ok(state.answer(req.method(), req.uri().path()).await) }
            }),
        );
        Self {
            server,
            state,
            unpublished: ephemeral_ec_key(),
        }
    }

    /// The `iss` value: `http://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer_url(&self) -> String {
        self.state.issuer_url.clone()
    }

    /// The JWKS location, as the discovery document gives it.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.state.issuer_url)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// How many times `/jwks` was requested (failed answers included).
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was requested.
    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Rotates: from now on the JWKS publishes exactly `keys`.
    pub fn set_keys(&self, keys: &[KeyId]) {
        *self.state.published.lock() = keys.to_vec();
    }

    /// The keys the JWKS currently publishes.
    pub fn published_keys(&self) -> Vec<KeyId> {
        self.state.published.lock().clone()
    }

    /// The JWKS document as currently served.
    pub fn jwks(&self) -> Value {
        self.state.jwks()
    }

    /// Makes `/jwks` answer `status` (e.g. 500) until called again with `None`.
    pub fn set_jwks_failure(&self, status: Option<u16>) {
        *self.state.jwks_failure.lock() = status;
    }

    /// Makes the discovery documents answer `status` (e.g. 503) until called again with
    /// `None`.
    pub fn set_discovery_failure(&self, status: Option<u16>) {
        *self.state.discovery_failure.lock() = status;
    }

    /// Makes `/jwks` answer only after `delay` (fetch timeout tests), until `None`.
    pub fn set_jwks_delay(&self, delay: Option<Duration>) {
        *self.state.jwks_delay.lock() = delay;
    }

    /// Stops answering and closes open connections (an IdP outage); the port stays reserved
    /// for [`TestIssuer::restart`] only by convention, so restart soon.
    pub async fn stop(&self) {
        self.server.stop().await;
    }

    /// Serves again on the same port, same keys and counters.
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        self.server.is_running()
    }

    /// Claims of a valid token: `iss` (this issuer), `aud` ([`TEST_AUDIENCE`]), `sub`,
    /// `client_id`, `iat`/`nbf` (now), `exp` (now + 300 s), a unique `jti`, `scope`, and
    /// `patient` when given. Edit the returned value to make it invalid.
    pub fn claims_for<'a>(&self, scope: &str, patient: impl Into<Option<&'a str>>) -> Value {
        let now = unix_now();
        let mut claims = json!({
            "iss": self.state.issuer_url,
            "aud": TEST_AUDIENCE,
            "sub": TEST_SUBJECT,
            "client_id": TEST_CLIENT_ID,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": unique_jti(),
            "scope": scope,
        });
        if let Some(patient) = patient.into() {
            claims["patient"] = Value::String(patient.to_owned());
        }
        claims
    }

    /// Signs `claims` with `key` (header `alg` of the key, `kid` set, `typ: JWT`).
    pub fn mint(&self, claims: Value, key: KeyId) -> String {
        self.mint_with_kid(claims, key, Some(key.kid()))
    }

    /// Signs with `key` but sets `kid` as given (`None`: no `kid` header), e.g. to sign with
    /// rsa2 while claiming rsa1.
    pub fn mint_with_kid(&self, claims: Value, key: KeyId, kid: Option<&str>) -> String {
        let mut header = Header::new(key.alg());
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &key.encoding_key()).expect("sign token")
    }

    /// Signs (ES256) with a key this issuer never publishes, `kid` [`UNPUBLISHED_KID`].
    pub fn mint_unpublished(&self, claims: Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(UNPUBLISHED_KID.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.unpublished).expect("sign token")
    }
}

// === impl IssuerState ===

impl IssuerState {
    async fn answer(
        &self,
        method: &http::Method,
        path: &str,
    ) -> http::Response<http_body_util::Full<Bytes>> {
        if method != http::Method::GET {
            return response(405, "text/plain", "method not allowed");
        }
        match path {
            "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server" => {
                self.discovery_fetches.fetch_add(1, Ordering::SeqCst);
                let failure = *self.discovery_failure.lock();
                match failure {
                    Some(status) => {
                        response(status, "application/json", r#"{"error":"unavailable"}"#)
                    }
                    None => response(200, "application/json", self.discovery().to_string()),
                }
            }
            "/jwks" => {
                self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                let delay = *self.jwks_delay.lock();
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                let failure = *self.jwks_failure.lock();
                match failure {
                    Some(status) => {
                        response(status, "application/json", r#"{"error":"unavailable"}"#)
                    }
                    None => response(200, "application/json", self.jwks().to_string()),
                }
            }
            _ => response(404, "text/plain", "not found"),
        }
    }

    fn discovery(&self) -> Value {
        let iss = &self.issuer_url;
        json!({
            "issuer": iss,
            "jwks_uri": format!("{iss}/jwks"),
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
            "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "fhirUser", "launch/patient", "offline_access"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        })
    }

    fn jwks(&self) -> Value {
        let keys = self.published.lock().iter().map(|k| k.jwk()).collect();
        serde_json::to_value(JwkSet { keys }).expect("JWKS serializes")
    }
}

// === attack helpers ===

/// An unsigned token: header `{"alg":"none","typ":"JWT"}`, empty signature (RFC 7519 §6).
pub fn unsigned_alg_none(claims: Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!("{}.{}.", b64_json(&header), b64_json(&claims))
}

/// The RS256 → HS256 key-confusion attack: HS256 with the RSA public key PEM bytes as the
/// HMAC secret, `kid` of that key.
pub fn hs256_with_public_key(claims: Value, key: KeyId) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid().to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(&key.public_pem()),
    )
    .expect("sign token")
}

/// The same token with one bit of its signature flipped.
pub fn with_bad_signature(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').expect("a JWS has three parts");
    let mut bytes = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("base64url signature");
    assert!(!bytes.is_empty(), "token has no signature to damage");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A token with the given raw header and claims and a signature of random bytes.
pub fn with_header(header: Value, claims: Value) -> String {
    let signature: [u8; 32] = rand::random();
    format!(
        "{}.{}.{}",
        b64_json(&header),
        b64_json(&claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Decodes the payload of a JWT without verifying it (for assertions in tests).
pub fn decode_claims_unverified(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
        .expect("JSON payload")
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn unique_jti() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("jti-{n}-{:016x}", rand::random::<u64>())
}

fn ephemeral_ec_key() -> EncodingKey {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 PEM");
    EncodingKey::from_ec_pem(pem.as_bytes()).expect("ephemeral key")
}
