//! Test fixtures for the auth module: the fixture signing keys as JWKs, token minting, and an
//! in-process identity provider (JWKS + discovery on 127.0.0.1) that counts fetches and can
//! rotate its keys, fail, or answer slowly.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config::IssuerConfig;

/// The audience test tokens are minted for.
pub(crate) const AUDIENCE: &str = "https://fhir.example/r4";

pub(crate) const RSA1_KEY: &str = include_str!("../../tests/fixtures/keys/rsa1.key.pem");
pub(crate) const RSA1_PUB: &str = include_str!("../../tests/fixtures/keys/rsa1.pub.pem");
pub(crate) const RSA2_KEY: &str = include_str!("../../tests/fixtures/keys/rsa2.key.pem");
pub(crate) const EC1_KEY: &str = include_str!("../../tests/fixtures/keys/ec1.key.pem");

/// A fixture signing key with its `kid` and default algorithm.
pub(crate) struct TestKey {
    pub(crate) kid: &'static str,
    pub(crate) alg: Algorithm,
    pub(crate) encoding: EncodingKey,
}

impl TestKey {
    /// RSA 2048, `kid: rsa1`, RS256.
    pub(crate) fn rsa1() -> Self {
        Self::rsa("rsa1", RSA1_KEY)
    }

    /// RSA 2048, `kid: rsa2`, RS256.
    pub(crate) fn rsa2() -> Self {
        Self::rsa("rsa2", RSA2_KEY)
    }

    /// EC P-256, `kid: ec1`, ES256.
    pub(crate) fn ec1() -> Self {
        TestKey {
            kid: "ec1",
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(EC1_KEY.as_bytes()).unwrap(),
        }
    }

    fn rsa(kid: &'static str, pem: &str) -> Self {
        TestKey {
            kid,
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        }
    }

    /// The public JWK, with `kid`, `use: sig` and `alg`.
    pub(crate) fn jwk(&self) -> Value {
        let jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        let mut v = serde_json::to_value(jwk).unwrap();
        v["kid"] = json!(self.kid);
        v["use"] = json!("sig");
        v
    }

    /// A token over `claims`, header `{alg, kid}`.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        self.sign_with(self.alg, Some(self.kid), claims)
    }

    /// A token over `claims` with an explicit header `alg` and `kid`.
    pub(crate) fn sign_with(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid token from `iss` for [`AUDIENCE`], expiring in 10 minutes.
pub(crate) fn claims(iss: &str) -> Value {
    json!({
        "iss": iss,
        "aud": AUDIENCE,
        "sub": "user-1",
        "exp": now() + 600,
        "iat": now(),
        "scope": "patient/Observation.rs",
    })
}

/// An issuer as the config module would produce it, with test-friendly timings.
pub(crate) fn issuer_config(issuer: &str, jwks_uri: Option<String>) -> IssuerConfig {
    IssuerConfig {
        issuer: issuer.to_owned(),
        audiences: vec![AUDIENCE.to_owned(), "other-audience".to_owned()],
        jwks_uri,
        algorithms: vec![
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ],
        leeway: Duration::from_secs(30),
        jwks_refresh_interval: Duration::from_secs(300),
        jwks_min_refresh_interval: Duration::from_secs(60),
        fetch_timeout: Duration::from_secs(2),
        patient_claim: "patient".to_owned(),
        introspection: None,
    }
}

/// What the fake identity provider serves and has seen.
pub(crate) struct IdpState {
    /// The JWKS document served at `/jwks`.
    pub(crate) jwks: parking_lot::Mutex<Value>,
    /// `GET /jwks` count, failed answers included.
    pub(crate) jwks_fetches: AtomicUsize,
    /// Metadata `GET`s (either well-known name).
    pub(crate) discovery_fetches: AtomicUsize,
    /// Serve `/.well-known/openid-configuration` (else 404, to exercise the RFC 8414
    /// fallback).
    pub(crate) oidc: AtomicBool,
    /// The `issuer` the metadata claims; `None` means the server's own base URL.
    pub(crate) metadata_issuer: parking_lot::Mutex<Option<String>>,
    /// Answer every request with 500.
    pub(crate) fail: AtomicBool,
    /// Wait this long before answering `/jwks`.
    pub(crate) delay: parking_lot::Mutex<Duration>,
}

/// The fake identity provider; stops when dropped.
pub(crate) struct Idp {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<IdpState>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    /// Starts serving `rsa1` and `ec1` on a free loopback port.
    pub(crate) async fn start() -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState {
            jwks: parking_lot::Mutex::new(Value::Null),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            oidc: AtomicBool::new(true),
            metadata_issuer: parking_lot::Mutex::new(None),
            fail: AtomicBool::new(false),
            delay: parking_lot::Mutex::new(Duration::ZERO),
        });
        let served = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(&state, addr, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let idp = Idp { addr, state, task };
        idp.set_keys(&[TestKey::rsa1(), TestKey::ec1()]);
        idp
    }

    /// `http://127.0.0.1:port`, the issuer URL for discovery tests.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The JWKS URL.
    pub(crate) fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// Serves exactly these keys from now on.
    pub(crate) fn set_keys(&self, keys: &[TestKey]) {
        self.set_jwks(json!({ "keys": keys.iter().map(TestKey::jwk).collect::<Vec<_>>() }));
    }

    /// Serves this JWKS document from now on.
    pub(crate) fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock() = jwks;
    }

    /// JWKS fetches so far.
    pub(crate) fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    state: &IdpState,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, body: &Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
            .unwrap()
    };
    if req.uri().path() == "/jwks" {
        state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    }
    if state.fail.load(Ordering::SeqCst) {
        return json(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": "down"}));
    }
    let base = format!("http://{addr}");
    let metadata = || {
        state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
        let issuer = state
            .metadata_issuer
            .lock()
            .clone()
            .unwrap_or_else(|| base.clone());
        json!({ "issuer": issuer, "jwks_uri": format!("{base}/jwks") })
    };
    match req.uri().path() {
        "/jwks" => {
            let delay = *state.delay.lock();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let body = state.jwks.lock().clone();
            json(StatusCode::OK, &body)
        }
        "/.well-known/openid-configuration" if state.oidc.load(Ordering::SeqCst) => {
            json(StatusCode::OK, &metadata())
        }
        "/.well-known/oauth-authorization-server" => json(StatusCode::OK, &metadata()),
        _ => json(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}
