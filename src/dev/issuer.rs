//! The development token issuer of `fhirwall dev`: an OAuth 2.0 `client_credentials` token
//! endpoint that signs SMART-style JWT access tokens with an ephemeral ES256 key.
//!
//! NEVER USE IN PRODUCTION: anyone who can reach it gets any scope for any patient (there is
//! no client authentication). It binds to loopback only and its key lives in memory for one
//! run.
//!
//! Endpoints: `GET /.well-known/openid-configuration` and
//! `GET /.well-known/oauth-authorization-server` (RFC 8414 metadata), `GET /jwks` (RFC 7517),
//! `POST /token` (RFC 6749 §4.4 form request; §5.1 response; §5.2 errors).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use super::httputil::{self, Body};
use super::random_uuid;

/// Client id used when a token request names none.
pub const DEFAULT_CLIENT_ID: &str = "dev-client";
/// Token lifetime when a request names none, in seconds.
pub const DEFAULT_EXPIRES_IN: u64 = 3600;
/// Longest token lifetime the issuer grants, in seconds.
pub const MAX_EXPIRES_IN: u64 = 86_400;

/// Largest token request body read.
const MAX_FORM: usize = 16 * 1024;

/// A development issuer: one ephemeral P-256 key, one default audience.
pub struct DevIssuer {
    issuer_url: String,
    audience: String,
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
    jwks_body: Bytes,
    metadata_body: Bytes,
}

/// A token request (RFC 6749 §4.4.2 plus the SMART launch context this issuer can put in a
/// token). Build one with [`MintRequest::client_credentials`] or parse a form with
/// [`MintRequest::from_form`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MintRequest {
    /// Must be `client_credentials`.
    pub grant_type: String,
    /// Space-separated scopes to grant, verbatim (not checked against SMART grammar, so
    /// malformed scopes can be minted to test the gateway). Required.
    pub scope: Option<String>,
    /// SMART patient context (a FHIR id), placed in the `patient` claim.
    pub patient: Option<String>,
    /// Client id; default [`DEFAULT_CLIENT_ID`].
    pub client_id: Option<String>,
    /// Token subject; default the client id.
    pub sub: Option<String>,
    /// `fhirUser` claim (e.g. `Practitioner/123`).
    pub fhir_user: Option<String>,
    /// Audience (`aud` form field); default the issuer's audience. Lets tests mint tokens
    /// meant for another resource server.
    pub audience: Option<String>,
    /// Lifetime in seconds, 1 to [`MAX_EXPIRES_IN`]; default [`DEFAULT_EXPIRES_IN`].
    pub expires_in: Option<u64>,
}

/// A successful token response (RFC 6749 §5.1; SMART App Launch 2.x token response).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The signed JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// The granted scopes.
    pub scope: String,
    /// The patient in context, when one was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
}

/// The claims of a minted access token (RFC 9068 names, plus SMART's `patient` and
/// `fhirUser`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// The issuer URL.
    pub iss: String,
    /// The audience (the FHIR base URL the token is for).
    pub aud: String,
    /// Subject.
    pub sub: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Space-separated granted scopes.
    pub scope: String,
    /// SMART patient context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The user, as a FHIR resource URL.
    #[serde(default, rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Expiry.
    pub exp: u64,
    /// Unique token id.
    pub jti: String,
}

/// Why a token was not issued; each maps to an RFC 6749 §5.2 error response.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// A parameter is missing, repeated or malformed (`invalid_request`).
    #[error("{0}")]
    InvalidRequest(String),
    /// The grant type is not `client_credentials` (`unsupported_grant_type`).
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// No scope, or a scope outside the RFC 6749 §3.3 character set (`invalid_scope`).
    #[error("{0}")]
    InvalidScope(String),
    /// The token could not be signed (`server_error`).
    #[error("token signing failed: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
}

// === impl DevIssuer ===

impl DevIssuer {
    /// Generates a fresh ES256 key. `issuer_url` is the exact `iss` of minted tokens and the
    /// base of the endpoint URLs (no trailing slash); `audience` is the default `aud`.
    pub fn generate(issuer_url: String, audience: String) -> Self {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        // Encoding a valid in-memory scalar as PKCS#8 has no failure mode besides allocation.
        let der = secret
            .to_pkcs8_der()
            .expect("PKCS#8 encoding of a fresh P-256 key");
        let point = secret.public_key().to_encoded_point(false);
        // An uncompressed SEC1 point always carries both coordinates.
        let x = URL_SAFE_NO_PAD.encode(point.x().expect("uncompressed point has x"));
        let y = URL_SAFE_NO_PAD.encode(point.y().expect("uncompressed point has y"));

        // RFC 7638 §3.2: the thumbprint input is the required members in lexicographic order.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));

        let jwk = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::ES256),
                key_id: Some(kid.clone()),
                ..Default::default()
            },
            algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x,
                y,
            }),
        };
        let jwks_body = serde_json::to_vec(&JwkSet {
            keys: vec![jwk.clone()],
        })
        .unwrap_or_default()
        .into();
        let metadata_body = serde_json::to_vec(&json!({
            "issuer": issuer_url,
            "jwks_uri": format!("{issuer_url}/jwks"),
            "token_endpoint": format!("{issuer_url}/token"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": super::scopes_supported(),
            "service_documentation": "Development issuer of `fhirwall dev`: never use in production",
        }))
        .unwrap_or_default()
        .into();

        DevIssuer {
            issuer_url,
            audience,
            kid,
            key: EncodingKey::from_ec_der(der.as_bytes()),
            jwk,
            jwks_body,
            metadata_body,
        }
    }

    /// Serves the issuer on `listener` until the task is dropped.
    ///
    /// Never returns `Ok`; accept errors are retried, so the `Result` only keeps the
    /// signature uniform with other servers.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        tracing::warn!(
            issuer = %self.issuer_url,
            "development token issuer running: it grants any scope without client \
             authentication; never use it in production"
        );
        httputil::serve(listener, "dev-issuer", move |req| {
            let issuer = Arc::clone(&self);
            async move { issuer.handle(req).await }
        })
        .await
    }

    /// The issuer URL (`iss` of every token).
    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// The default audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The key id (RFC 7638 SHA-256 thumbprint of the public key).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key set served at `/jwks`.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    /// Validates a token request and signs an access token.
    pub fn mint(&self, req: &MintRequest) -> Result<TokenResponse, MintError> {
        self.mint_at(req, unix_now())
    }

    /// [`DevIssuer::mint`] with an explicit clock, for tests.
    fn mint_at(&self, req: &MintRequest, now: u64) -> Result<TokenResponse, MintError> {
        // RFC 6749 §5.2: a missing parameter is invalid_request; an unknown grant type is
        // unsupported_grant_type.
        match req.grant_type.as_str() {
            "client_credentials" => {}
            "" => return Err(MintError::InvalidRequest("grant_type is required".into())),
            other => {
                return Err(MintError::UnsupportedGrantType(format!(
                    "grant_type `{other}` is not supported; use client_credentials"
                )))
            }
        }
        let scope = normalize_scope(req.scope.as_deref())?;
        if let Some(patient) = &req.patient {
            if !is_fhir_id(patient) {
                return Err(MintError::InvalidRequest(format!(
                    "patient `{patient}` is not a FHIR id ([A-Za-z0-9-.]{{1,64}})"
                )));
            }
        }
        let client_id = checked("client_id", req.client_id.as_deref(), 255)?
            .unwrap_or(DEFAULT_CLIENT_ID)
            .to_owned();
        let sub = checked("sub", req.sub.as_deref(), 255)?
            .map_or_else(|| client_id.clone(), str::to_owned);
        let fhir_user = checked("fhirUser", req.fhir_user.as_deref(), 1024)?.map(str::to_owned);
        let aud = checked("aud", req.audience.as_deref(), 1024)?
            .unwrap_or(&self.audience)
            .to_owned();
        let expires_in = req.expires_in.unwrap_or(DEFAULT_EXPIRES_IN);
        if !(1..=MAX_EXPIRES_IN).contains(&expires_in) {
            return Err(MintError::InvalidRequest(format!(
                "expires_in must be between 1 and {MAX_EXPIRES_IN} seconds"
            )));
        }

        let claims = AccessTokenClaims {
            iss: self.issuer_url.clone(),
            aud,
            sub,
            client_id,
            scope: scope.clone(),
            patient: req.patient.clone(),
            fhir_user,
            iat: now,
            nbf: now,
            exp: now + expires_in,
            jti: random_uuid(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        // RFC 9068 §2.1: JWT access tokens are typed `at+jwt`.
        header.typ = Some("at+jwt".into());
        let access_token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in,
            scope,
            patient: req.patient.clone(),
        })
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match path.as_str() {
            "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server" => {
                if method != Method::GET {
                    return method_not_allowed("GET");
                }
                json_bytes(StatusCode::OK, self.metadata_body.clone())
            }
            "/jwks" => {
                if method != Method::GET {
                    return method_not_allowed("GET");
                }
                json_bytes(StatusCode::OK, self.jwks_body.clone())
            }
            "/token" => {
                if method != Method::POST {
                    return method_not_allowed("POST");
                }
                let result = match read_form(req).await {
                    Ok(form) => MintRequest::from_form(&form).and_then(|r| self.mint(&r)),
                    Err(e) => Err(e),
                };
                token_response(result)
            }
            _ => error_json(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint (see /.well-known/openid-configuration)",
            ),
        }
    }
}

impl fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key is left out on purpose.
        f.debug_struct("DevIssuer")
            .field("issuer_url", &self.issuer_url)
            .field("audience", &self.audience)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

// === impl MintRequest ===

impl MintRequest {
    /// A `client_credentials` request for `scope`, everything else default.
    pub fn client_credentials(scope: impl Into<String>) -> Self {
        MintRequest {
            grant_type: "client_credentials".into(),
            scope: Some(scope.into()),
            ..Default::default()
        }
    }

    /// Sets the patient context.
    pub fn with_patient(mut self, patient: impl Into<String>) -> Self {
        self.patient = Some(patient.into());
        self
    }

    /// Parses an `application/x-www-form-urlencoded` token request body. Repeated
    /// parameters are refused (RFC 6749 §3.2); unknown ones (e.g. `client_secret`) are
    /// ignored (RFC 6749 §3.2).
    pub fn from_form(body: &str) -> Result<Self, MintError> {
        let pairs =
            httputil::parse_form(body).map_err(|e| MintError::InvalidRequest(e.to_string()))?;
        let mut req = MintRequest::default();
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in &pairs {
            let slot = match name.as_str() {
                "grant_type" => {
                    req.grant_type = value.clone();
                    "grant_type"
                }
                "scope" => set(&mut req.scope, value, "scope"),
                "patient" => set(&mut req.patient, value, "patient"),
                "client_id" => set(&mut req.client_id, value, "client_id"),
                "sub" => set(&mut req.sub, value, "sub"),
                "fhirUser" => set(&mut req.fhir_user, value, "fhirUser"),
                "aud" => set(&mut req.audience, value, "aud"),
                "expires_in" => {
                    let secs = value.parse::<u64>().map_err(|_| {
                        MintError::InvalidRequest(format!(
                            "expires_in `{value}` is not a number of seconds"
                        ))
                    })?;
                    req.expires_in = Some(secs);
                    "expires_in"
                }
                _ => continue,
            };
            if seen.contains(&slot) {
                return Err(MintError::InvalidRequest(format!(
                    "parameter `{slot}` is repeated"
                )));
            }
            seen.push(slot);
        }
        Ok(req)
    }
}

fn set(slot: &mut Option<String>, value: &str, name: &'static str) -> &'static str {
    *slot = Some(value.to_owned());
    name
}

// === impl MintError ===

impl MintError {
    /// The RFC 6749 §5.2 `error` code.
    pub fn error_code(&self) -> &'static str {
        match self {
            MintError::InvalidRequest(_) => "invalid_request",
            MintError::UnsupportedGrantType(_) => "unsupported_grant_type",
            MintError::InvalidScope(_) => "invalid_scope",
            MintError::Signing(_) => "server_error",
        }
    }

    /// The HTTP status of the error response.
    pub fn status(&self) -> StatusCode {
        match self {
            MintError::Signing(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Checks and normalizes a scope list: RFC 6749 §3.3 `scope-token = 1*( %x21 / %x23-5B /
/// %x5D-7E )`, separated by spaces.
fn normalize_scope(scope: Option<&str>) -> Result<String, MintError> {
    let tokens: Vec<&str> = scope
        .unwrap_or("")
        .split(' ')
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() {
        // RFC 6749 §3.3: without a default scope the server must fail with invalid_scope.
        return Err(MintError::InvalidScope(
            "scope is required (this issuer has no default scopes)".into(),
        ));
    }
    for t in &tokens {
        if !t
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
        {
            return Err(MintError::InvalidScope(format!(
                "scope `{t}` has characters RFC 6749 §3.3 forbids"
            )));
        }
    }
    Ok(tokens.join(" "))
}

/// An optional printable-ASCII parameter of at most `max` bytes, without spaces.
fn checked<'a>(
    name: &str,
    value: Option<&'a str>,
    max: usize,
) -> Result<Option<&'a str>, MintError> {
    match value {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.len() <= max && v.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(v))
        }
        Some(_) => Err(MintError::InvalidRequest(format!(
            "{name} must be 1 to {max} printable ASCII characters without spaces"
        ))),
    }
}

/// FHIR R4 id syntax: `[A-Za-z0-9\-\.]{1,64}`.
fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn read_form(req: Request<Incoming>) -> Result<String, MintError> {
    // RFC 6749 §4.4.2: the request uses application/x-www-form-urlencoded.
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|m| m.eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(MintError::InvalidRequest(
            "send the token request as application/x-www-form-urlencoded".into(),
        ));
    }
    let body = httputil::read_body(req.into_body(), MAX_FORM)
        .await
        .map_err(|e| MintError::InvalidRequest(e.to_string()))?;
    String::from_utf8(body.to_vec())
        .map_err(|_| MintError::InvalidRequest("the token request is not UTF-8".into()))
}

fn token_response(result: Result<TokenResponse, MintError>) -> Response<Body> {
    match result {
        Ok(token) => {
            let mut resp = json_bytes(
                StatusCode::OK,
                serde_json::to_vec(&token).unwrap_or_default().into(),
            );
            no_store(&mut resp);
            resp
        }
        Err(e) => {
            if let MintError::Signing(_) = &e {
                tracing::error!(error = %e, "dev issuer could not sign a token");
            }
            let mut resp = error_json(e.status(), e.error_code(), &e.to_string());
            no_store(&mut resp);
            resp
        }
    }
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store(resp: &mut Response<Body>) {
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response<Body> {
    httputil::json_response(status, "application/json", body)
}

fn error_json(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    let body = json!({ "error": error, "error_description": description });
    httputil::json_response(
        status,
        "application/json",
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = error_json(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        &format!("use {allow}"),
    );
    resp.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    resp
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;

    use super::*;

    const AUD: &str = "http://127.0.0.1:8080/fhir";

    struct Running {
        url: String,
        client: reqwest::Client,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start() -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let issuer = Arc::new(DevIssuer::generate(url.clone(), AUD.into()));
        let task = tokio::spawn(issuer.serve(listener));
        Running {
            url,
            client: reqwest::Client::new(),
            task,
        }
    }

    /// Verifies `token` the way a resource server would: key from the JWKS by `kid`.
    fn verify(jwks: &JwkSet, token: &str, issuer: &str) -> AccessTokenClaims {
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let jwk = jwks
            .find(header.kid.as_deref().unwrap())
            .expect("kid is in the JWKS");
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[issuer]);
        v.set_audience(&[AUD]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<AccessTokenClaims>(token, &key, &v)
            .unwrap()
            .claims
    }

    #[tokio::test]
    async fn discovery_documents_point_at_this_issuer() {
        let r = start().await;
        for path in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ] {
            let doc: Value = r
                .client
                .get(format!("{}{path}", r.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(doc["issuer"], r.url.as_str());
            assert_eq!(doc["jwks_uri"], format!("{}/jwks", r.url));
            assert_eq!(doc["token_endpoint"], format!("{}/token", r.url));
            assert_eq!(doc["grant_types_supported"], json!(["client_credentials"]));
            assert_eq!(
                doc["token_endpoint_auth_methods_supported"],
                json!(["none"])
            );
            assert!(doc["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("patient/Patient.rs")));
        }
    }

    #[tokio::test]
    async fn jwks_serves_one_es256_signing_key() {
        let r = start().await;
        let raw: Value = r
            .client
            .get(format!("{}/jwks", r.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = &raw["keys"][0];
        assert_eq!(raw["keys"].as_array().unwrap().len(), 1);
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["alg"], "ES256");
        assert_eq!(key["use"], "sig");
        assert!(
            key["kid"].as_str().is_some_and(|k| k.len() == 43),
            "SHA-256 thumbprint, base64url"
        );
        assert!(key.get("d").is_none(), "never the private part");
    }

    #[tokio::test]
    async fn minted_token_verifies_against_the_jwks_and_carries_the_request() {
        let r = start().await;
        let resp = r
            .client
            .post(format!("{}/token", r.url))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&scope=patient%2FPatient.rs+patient/Observation.rs&patient=pat-1&fhirUser=Patient/pat-1&expires_in=600")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
        let token: TokenResponse = resp.json().await.unwrap();
        assert_eq!(token.token_type, "Bearer");
        assert_eq!(token.expires_in, 600);
        assert_eq!(token.scope, "patient/Patient.rs patient/Observation.rs");
        assert_eq!(token.patient.as_deref(), Some("pat-1"));

        let jwks: JwkSet = r
            .client
            .get(format!("{}/jwks", r.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let claims = verify(&jwks, &token.access_token, &r.url);
        assert_eq!(claims.iss, r.url);
        assert_eq!(claims.aud, AUD);
        assert_eq!(claims.scope, "patient/Patient.rs patient/Observation.rs");
        assert_eq!(claims.patient.as_deref(), Some("pat-1"));
        assert_eq!(claims.fhir_user.as_deref(), Some("Patient/pat-1"));
        assert_eq!(claims.client_id, DEFAULT_CLIENT_ID);
        assert_eq!(claims.sub, DEFAULT_CLIENT_ID);
        assert_eq!(claims.exp - claims.iat, 600);
    }

    #[tokio::test]
    async fn token_endpoint_errors_follow_rfc6749() {
        let r = start().await;
        let cases = [
            ("scope=patient/Patient.rs", "invalid_request"),
            (
                "grant_type=password&scope=patient/Patient.rs",
                "unsupported_grant_type",
            ),
            ("grant_type=client_credentials", "invalid_scope"),
            ("grant_type=client_credentials&scope=a%22b", "invalid_scope"),
            (
                "grant_type=client_credentials&scope=x&scope=y",
                "invalid_request",
            ),
            (
                "grant_type=client_credentials&scope=x&patient=..%2F1%20",
                "invalid_request",
            ),
            (
                "grant_type=client_credentials&scope=x&expires_in=86401",
                "invalid_request",
            ),
            (
                "grant_type=client_credentials&scope=x&expires_in=soon",
                "invalid_request",
            ),
        ];
        for (body, code) in cases {
            let resp = r
                .client
                .post(format!("{}/token", r.url))
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
            let err: Value = resp.json().await.unwrap();
            assert_eq!(err["error"], code, "{body}");
            assert!(err["error_description"].is_string());
        }
        // JSON is not the token request encoding.
        let resp = r
            .client
            .post(format!("{}/token", r.url))
            .json(&json!({"grant_type": "client_credentials", "scope": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"], "invalid_request");
    }

    #[test]
    fn mint_applies_defaults_and_overrides() {
        let issuer = DevIssuer::generate("http://issuer.test".into(), AUD.into());
        let mut req = MintRequest::client_credentials("  system/Observation.rs   user/Patient.r ");
        req.client_id = Some("app-7".into());
        req.audience = Some("http://other.test/fhir".into());
        let token = issuer.mint_at(&req, 1_700_000_000).unwrap();
        assert_eq!(token.scope, "system/Observation.rs user/Patient.r");
        assert_eq!(token.expires_in, DEFAULT_EXPIRES_IN);
        assert_eq!(token.patient, None);

        let key = DecodingKey::from_jwk(&issuer.jwks().keys[0]).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["http://other.test/fhir"]);
        v.validate_exp = false;
        let claims = jsonwebtoken::decode::<AccessTokenClaims>(&token.access_token, &key, &v)
            .unwrap()
            .claims;
        assert_eq!(claims.sub, "app-7");
        assert_eq!(claims.client_id, "app-7");
        assert_eq!(claims.iat, 1_700_000_000);
        assert_eq!(claims.exp, 1_700_000_000 + DEFAULT_EXPIRES_IN);
        assert!(claims.patient.is_none());
    }

    #[test]
    fn tokens_from_another_issuer_key_do_not_verify() {
        let a = DevIssuer::generate("http://a.test".into(), AUD.into());
        let b = DevIssuer::generate("http://a.test".into(), AUD.into());
        assert_ne!(a.kid(), b.kid());
        let token = a
            .mint(&MintRequest::client_credentials("system/*.rs"))
            .unwrap();
        let key = DecodingKey::from_jwk(&b.jwks().keys[0]).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[AUD]);
        assert!(jsonwebtoken::decode::<AccessTokenClaims>(&token.access_token, &key, &v).is_err());
    }

    #[test]
    fn debug_output_omits_the_private_key() {
        let issuer = DevIssuer::generate("http://issuer.test".into(), AUD.into());
        let shown = format!("{issuer:?}");
        assert!(shown.contains("http://issuer.test"));
        assert!(!shown.contains("key:"));
    }
}
