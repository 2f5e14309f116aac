//! End-to-end tests of fhirwall against a real OAuth 2.0 / OpenID Connect authorization
//! server: the npm package `oidc-provider`, run by `tests/idp/server.mjs` (dev/test only).
//!
//! Tokens here are not minted by test code: each one comes from a real `client_credentials`
//! request to the provider's token endpoint, is signed with the provider's keys, and is
//! verified by the real `fhirwall` binary, which finds the provider's JWKS by discovery
//! (`{issuer}/.well-known/openid-configuration`, no `jwks_uri` configured).
//!
//! The suite needs Node.js and `npm ci --prefix tests/idp`, so every test is ignored by
//! default (plain `cargo test` passes on a machine without npm); `.ci/run` runs it with
//! `cargo test --test real_idp -- --ignored`.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{json, Value};

use support::*;

/// The FHIR base the gateway protects: the resource indicator (and so `aud`) of its tokens.
const FHIR_BASE: &str = TEST_AUDIENCE;

/// Another resource server known to the provider: its tokens are not for the gateway.
const OTHER_RESOURCE: &str = "https://other-api.fhirwall.test/fhir";

/// A resource the provider gives opaque (introspection-only) tokens for.
const OPAQUE_RESOURCE: &str = "https://opaque.fhirwall.test/fhir";

/// The patient `fhirwall-patient`'s tokens are bound to (tests/idp/server.mjs, CLIENTS).
const PATIENT: &str = "pat-123";

/// Another patient.
const OTHER_PATIENT: &str = "pat-456";

/// How long the provider may take to print its ready line.
const IDP_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The clients of tests/idp/server.mjs.
#[derive(Debug, Clone, Copy)]
enum Client {
    /// `system/Patient.rs system/Observation.rs user/Patient.r openid`.
    System,
    /// `patient/Patient.r patient/Patient.rs patient/Observation.rs launch/patient openid`,
    /// tokens carry `patient: pat-123`.
    Patient,
    /// `patient/Patient.r patient/Observation.rs`, no patient registered.
    NoContext,
    /// `system/Patient.rs`, tokens live 2 s.
    ShortLived,
}

/// The policy the gateway runs: Patient read and Observation search for every SMART
/// context, confined to the patient of the token for `patient/` grants.
const POLICY: &str = r#"version: 1
routes:
  - id: metadata
    methods: [GET]
    path: /metadata
    public: true
  - id: patient-read
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [patient/Patient.r, user/Patient.r, system/Patient.r] }
    patient: { segment: id }
  - id: observation-search
    methods: [GET]
    path: /Observation
    scopes: { any_of: [patient/Observation.s, user/Observation.s, system/Observation.s] }
    patient: { query: patient }
"#;

// === tests ===

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn the_test_idp_issues_rs256_jwt_access_tokens_for_the_requested_resource() {
    let idp = Idp::start(&KeySet::generate(&["idp-k1"]).only(&["idp-k1"]));

    let token = idp
        .token(Client::Patient, "patient/Patient.r launch/patient", None)
        .await;
    let header = decode_header(&token).expect("a JWS");
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some("idp-k1"));
    assert_eq!(
        header.typ.as_deref(),
        Some("at+jwt"),
        "RFC 9068 access token"
    );
    let claims = idp.verify_with_published_keys(&token, FHIR_BASE).await;
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], FHIR_BASE);
    assert_eq!(claims["client_id"], "fhirwall-patient");
    assert_eq!(claims["scope"], "patient/Patient.r launch/patient");
    assert_eq!(claims["patient"], PATIENT);

    // A scope the client is not registered for is refused, not silently dropped.
    let refused = idp
        .token_response(Client::Patient, "system/Patient.rs", None)
        .await;
    assert_eq!(refused["error"], "invalid_scope", "{refused}");

    let other = idp
        .token(Client::System, "system/Patient.rs", Some(OTHER_RESOURCE))
        .await;
    let claims = idp.verify_with_published_keys(&other, OTHER_RESOURCE).await;
    assert_eq!(claims["aud"], OTHER_RESOURCE);
    assert!(claims.get("patient").is_none(), "{claims}");
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn the_test_idp_restarts_as_the_same_issuer_with_a_new_key_set() {
    let keys = KeySet::generate(&["old", "new"]);
    let idp = Idp::start(&keys.only(&["old"]));
    let issuer = idp.issuer();
    assert_eq!(idp.published_kids().await, ["old"]);

    idp.restart(&keys.only(&["new", "old"]));
    assert_eq!(idp.discovery().await["issuer"], issuer);
    assert_eq!(idp.published_kids().await, ["new", "old"]);
    let token = idp.token(Client::System, "system/Patient.rs", None).await;
    assert_eq!(kid(&token), "new", "the first key of the set signs");

    idp.restart(&keys.only(&["new"]));
    assert_eq!(idp.published_kids().await, ["new"]);
    // Tokens are self-contained: one from before the restart still verifies.
    idp.verify_with_published_keys(&token, FHIR_BASE).await;
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn a_token_with_the_route_scope_is_forwarded_to_the_backend() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend).start().await;

    let token = idp.token(Client::System, "system/Patient.rs", None).await;
    let response = get(&gateway, "/Patient/abc", &token).await;

    assert_eq!(response.status, 200, "{response:?}");
    let seen = backend.last_request().expect("the backend saw the request");
    assert_eq!(seen.path, "/Patient/abc");
    let audit = gateway.wait_for_audit_lines(1).await;
    assert_eq!(audit[0]["decision"], "allow", "{}", audit[0]);
    assert_eq!(audit[0]["route"], "patient-read");
    assert_eq!(audit[0]["issuer"], idp.issuer());
    assert_eq!(audit[0]["client_id"], "fhirwall-system");
    assert_eq!(
        audit[0]["jti"],
        decode_claims_unverified(&token)["jti"],
        "the audit names the provider's token id"
    );
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn a_token_without_the_route_scope_is_refused_with_insufficient_scope() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend).start().await;
    let token = idp
        .token(Client::System, "system/Observation.rs", None)
        .await;

    let refused = get(&gateway, "/Patient/abc", &token).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_challenge(&refused, "insufficient_scope");
    assert_eq!(
        backend.request_count(),
        0,
        "a refused request never goes upstream"
    );

    // The same token is otherwise good: its own scope opens the route it names.
    let allowed = get(&gateway, "/Observation?code=1234-5", &token).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(backend.request_count(), 1);
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn a_token_issued_for_another_resource_is_refused_as_invalid_token() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend).start().await;
    // Same provider, same key, same scope: only the audience differs.
    let token = idp
        .token(Client::System, "system/Patient.rs", Some(OTHER_RESOURCE))
        .await;
    assert_eq!(decode_claims_unverified(&token)["aud"], OTHER_RESOURCE);

    let response = get(&gateway, "/Patient/abc", &token).await;

    assert_eq!(response.status, 401, "{response:?}");
    assert_challenge(&response, "invalid_token");
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn a_tampered_token_is_refused_as_invalid_token() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend).start().await;
    let token = idp
        .token(Client::System, "system/Observation.rs", None)
        .await;

    // Widening the granted scope in the payload, signature kept.
    let mut claims = decode_claims_unverified(&token);
    claims["scope"] = json!("system/Patient.rs system/Observation.rs");
    let widened = with_claims(&token, &claims);
    // One bit of the provider's signature flipped.
    let bad_signature = with_bad_signature(&token);

    for (what, forged) in [("widened scope", widened), ("bad signature", bad_signature)] {
        let response = get(&gateway, "/Patient/abc", &forged).await;
        assert_eq!(response.status, 401, "{what}: {response:?}");
        assert_challenge(&response, "invalid_token");
    }
    assert_eq!(backend.request_count(), 0);

    // The untouched token still verifies (so the 401s above are about the tampering).
    let response = get(&gateway, "/Observation?code=1234-5", &token).await;
    assert_eq!(response.status, 200, "{response:?}");
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn an_opaque_token_is_refused_when_no_introspection_is_configured() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend).start().await;
    let token = idp
        .token(Client::System, "system/Patient.rs", Some(OPAQUE_RESOURCE))
        .await;
    assert_eq!(token.matches('.').count(), 0, "opaque: {token}");

    let response = get(&gateway, "/Patient/abc", &token).await;

    assert_eq!(response.status, 401, "{response:?}");
    assert_challenge(&response, "invalid_token");
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn the_patient_claim_confines_patient_scopes_to_that_patient() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend).start().await;
    let token = idp
        .token(
            Client::Patient,
            "patient/Patient.r patient/Observation.rs launch/patient",
            None,
        )
        .await;
    assert_eq!(decode_claims_unverified(&token)["patient"], PATIENT);

    let own = get(&gateway, &format!("/Patient/{PATIENT}"), &token).await;
    assert_eq!(own.status, 200, "{own:?}");
    assert_eq!(
        backend.last_request().unwrap().path,
        format!("/Patient/{PATIENT}")
    );
    let own_search = get(&gateway, &format!("/Observation?patient={PATIENT}"), &token).await;
    assert_eq!(own_search.status, 200, "{own_search:?}");
    assert_eq!(backend.request_count(), 2);

    let other = get(&gateway, &format!("/Patient/{OTHER_PATIENT}"), &token).await;
    assert_eq!(other.status, 403, "{other:?}");
    assert_challenge(&other, "insufficient_scope");
    let other_search = get(
        &gateway,
        &format!("/Observation?patient={OTHER_PATIENT}"),
        &token,
    )
    .await;
    assert_eq!(other_search.status, 403, "{other_search:?}");
    assert_eq!(
        backend.request_count(),
        2,
        "no other patient's data went upstream"
    );

    let audit = gateway.wait_for_audit_lines(4).await;
    for record in &audit {
        assert_eq!(record["patient"], PATIENT, "{record}");
        assert_eq!(record["client_id"], "fhirwall-patient", "{record}");
    }
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn patient_scopes_without_a_patient_claim_grant_nothing() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend).start().await;
    let token = idp
        .token(
            Client::NoContext,
            "patient/Patient.r patient/Observation.rs",
            None,
        )
        .await;
    assert!(decode_claims_unverified(&token).get("patient").is_none());

    for path in [
        format!("/Patient/{PATIENT}"),
        format!("/Observation?patient={PATIENT}"),
    ] {
        let response = get(&gateway, &path, &token).await;
        // SMART-SEMANTICS A15: deny, 401 or 403.
        assert!(
            response.status == 401 || response.status == 403,
            "{path}: {response:?}"
        );
    }
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn a_token_is_refused_once_the_idp_given_lifetime_is_over() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = Gateway::builder()
        .backend(&backend)
        .policy_yaml(POLICY)
        .issuer_yaml(&format!(
            "{{ issuer: {}, audiences: [{FHIR_BASE}], leeway: 0s, jwks_min_refresh_interval: 1s }}",
            serde_json::to_string(&idp.issuer()).unwrap()
        ))
        .start()
        .await;
    let token = idp
        .token(Client::ShortLived, "system/Patient.rs", None)
        .await;
    let exp = decode_claims_unverified(&token)["exp"]
        .as_u64()
        .expect("exp");

    let fresh = get(&gateway, "/Patient/abc", &token).await;
    assert_eq!(fresh.status, 200, "{fresh:?}");

    // Past `exp` (whole seconds) the token is dead, cached or not.
    while unix_now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let expired = get(&gateway, "/Patient/abc", &token).await;
    assert_eq!(expired.status, 401, "{expired:?}");
    assert_challenge(&expired, "invalid_token");
    assert_eq!(backend.request_count(), 1);
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn a_new_signing_key_at_the_idp_is_trusted_without_restarting_the_gateway() {
    let keys = KeySet::generate(&["old", "new"]);
    let idp = Idp::start(&keys.only(&["old"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend).start().await;

    let before = idp.token(Client::System, "system/Patient.rs", None).await;
    assert_eq!(kid(&before), "old");
    assert_eq!(get(&gateway, "/Patient/a", &before).await.status, 200);
    let unseen_old = idp.token(Client::System, "system/Patient.rs", None).await;

    // The usual rotation: a new key signs, the old one stays published for a while.
    idp.restart(&keys.only(&["new", "old"]));
    let after = idp.token(Client::System, "system/Patient.rs", None).await;
    assert_eq!(kid(&after), "new");
    // Past the gateway's `jwks_min_refresh_interval` (1 s) since its last fetch.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let response = get(&gateway, "/Patient/b", &after).await;
    assert_eq!(
        response.status, 200,
        "a token signed with the new key: {response:?}"
    );
    let response = get(&gateway, "/Patient/c", &before).await;
    assert_eq!(
        response.status, 200,
        "the old key is still published: {response:?}"
    );
    let response = get(&gateway, "/Patient/d", &unseen_old).await;
    assert_eq!(
        response.status, 200,
        "an old-key token seen for the first time: {response:?}"
    );
    assert_eq!(backend.request_count(), 4);
    assert!(
        gateway.exit_status().is_none(),
        "the gateway was not restarted"
    );
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn a_signing_key_withdrawn_by_the_idp_is_no_longer_trusted() {
    let keys = KeySet::generate(&["old", "new"]);
    let idp = Idp::start(&keys.only(&["old"]));
    let backend = TestBackend::start();
    // The default token cache (max_ttl 5m): a withdrawn key must end cached trust at once,
    // not when the cache entry ages out.
    let gateway = gateway_for(&idp, &backend).start().await;

    let seen = idp.token(Client::System, "system/Patient.rs", None).await;
    assert_eq!(get(&gateway, "/Patient/a", &seen).await.status, 200);
    let unseen = idp.token(Client::System, "system/Patient.rs", None).await;

    // An emergency rotation: the old key is withdrawn at once.
    idp.restart(&keys.only(&["new"]));
    let fresh = idp.token(Client::System, "system/Patient.rs", None).await;
    assert_eq!(kid(&fresh), "new");
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // The new key's token makes the gateway fetch the JWKS again...
    let response = get(&gateway, "/Patient/b", &fresh).await;
    assert_eq!(
        response.status, 200,
        "a token signed with the new key: {response:?}"
    );
    // ...which no longer has the old key.
    let response = get(&gateway, "/Patient/c", &unseen).await;
    assert_eq!(
        response.status, 401,
        "an old-key token never seen before: {response:?}"
    );
    assert_challenge(&response, "invalid_token");
    // A token verified (and cached) before the rotation is not trusted any more either.
    let response = get(&gateway, "/Patient/d", &seen).await;
    assert_eq!(
        response.status, 401,
        "an old-key token from the cache: {response:?}"
    );
    assert_eq!(backend.request_count(), 2);
}

// === helpers ===

/// A gateway in front of `backend` trusting `idp` for [`FHIR_BASE`], JWKS by discovery,
/// `jwks_min_refresh_interval: 1s`, running [`POLICY`].
fn gateway_for(idp: &Idp, backend: &TestBackend) -> GatewayBuilder {
    Gateway::builder()
        .backend(backend)
        .issuer_url(&idp.issuer(), &[FHIR_BASE])
        .policy_yaml(POLICY)
}

/// What a test needs from a gateway response.
#[derive(Debug)]
struct Response {
    status: u16,
    www_authenticate: Option<String>,
    body: String,
}

async fn get(gateway: &Gateway, path: &str, token: &str) -> Response {
    let response = http_client()
        .get(gateway.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    Response {
        status: response.status().as_u16(),
        www_authenticate: response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().expect("ASCII challenge").to_owned()),
        body: response.text().await.unwrap_or_default(),
    }
}

/// RFC 6750 §3: `Bearer` challenge with this `error`.
fn assert_challenge(response: &Response, error: &str) {
    let challenge = response
        .www_authenticate
        .as_deref()
        .unwrap_or_else(|| panic!("no WWW-Authenticate: {response:?}"));
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("error=\"{error}\"")),
        "expected error=\"{error}\" in {challenge}"
    );
    assert!(
        response.body.contains("OperationOutcome"),
        "a refusal carries an OperationOutcome: {response:?}"
    );
}

/// The same JWS header and signature around other claims.
fn with_claims(token: &str, claims: &Value) -> String {
    let mut parts = token.split('.');
    let (header, _, signature) = (parts.next(), parts.next(), parts.next());
    format!(
        "{}.{}.{}",
        header.expect("header"),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature.expect("signature")
    )
}

fn kid(token: &str) -> String {
    decode_header(token)
        .expect("a JWS")
        .kid
        .expect("the provider names its key")
}

fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/idp")
}

/// Panics with the setup step when the provider's packages are not installed.
fn require_node_modules() {
    if !idp_dir().join("node_modules/oidc-provider").is_dir() {
        panic!("tests/idp/node_modules is missing: run `npm ci --prefix tests/idp` first");
    }
}

// === impl KeySet ===

/// RSA signing keys made by the provider's own `keygen`, as private JWKs.
struct KeySet {
    keys: Vec<Value>,
}

impl KeySet {
    /// One new RSA 2048 key per `kid`.
    fn generate(kids: &[&str]) -> Self {
        require_node_modules();
        let output = Command::new("node")
            .arg(idp_dir().join("server.mjs"))
            .arg("keygen")
            .args(kids)
            .stdin(Stdio::null())
            .output()
            .expect("run `node` (is Node.js installed?)");
        assert!(
            output.status.success(),
            "keygen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let jwks: Value = serde_json::from_slice(&output.stdout).expect("keygen prints JSON");
        let keys = jwks["keys"].as_array().expect("keys").clone();
        assert_eq!(keys.len(), kids.len());
        Self { keys }
    }

    /// A private JWKS with these keys in this order (the first one signs).
    fn only(&self, kids: &[&str]) -> Value {
        let keys: Vec<Value> = kids
            .iter()
            .map(|kid| {
                self.keys
                    .iter()
                    .find(|key| key["kid"] == *kid)
                    .unwrap_or_else(|| panic!("no key {kid}"))
                    .clone()
            })
            .collect();
        json!({ "keys": keys })
    }
}

// === impl Idp ===

/// `node tests/idp/server.mjs` on a loopback port; killed when dropped.
struct Idp {
    dir: tempfile::TempDir,
    port: u16,
    process: Mutex<Option<IdpProcess>>,
    /// Bumped on every restart so each key file has its own name.
    generation: Mutex<u32>,
}

struct IdpProcess {
    child: Child,
    /// Held open: the server exits when it closes (`--exit-on-stdin-close`), so a test
    /// binary that dies without dropping this does not leave the server behind.
    _stdin: ChildStdin,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Idp {
    /// Starts the provider on a free port with these signing keys (a private JWKS).
    fn start(jwks: &Value) -> Self {
        require_node_modules();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut idp = Self {
            dir,
            port: 0,
            process: Mutex::new(None),
            generation: Mutex::new(0),
        };
        let (process, port) = idp.spawn(jwks, 0).unwrap_or_else(|e| panic!("{e}"));
        idp.port = port;
        *idp.process.lock() = Some(process);
        idp
    }

    /// Stops the provider and starts it again on the same port (same issuer) with other
    /// keys: how a provider's key set is rotated here.
    fn restart(&self, jwks: &Value) {
        if let Some(mut old) = self.process.lock().take() {
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
        // The port was ours a moment ago; another process could take it in between, in
        // which case the restart is retried briefly before giving up.
        let mut last_error = String::new();
        for _ in 0..20 {
            match self.spawn(jwks, self.port) {
                Ok((process, port)) => {
                    assert_eq!(port, self.port);
                    *self.process.lock() = Some(process);
                    return;
                }
                Err(e) => last_error = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the IdP did not restart on port {}: {last_error}",
            self.port
        );
    }

    /// Spawns the server and waits for its `READY` line; returns it and its port.
    fn spawn(&self, jwks: &Value, port: u16) -> Result<(IdpProcess, u16), String> {
        let keys_file = {
            let mut generation = self.generation.lock();
            *generation += 1;
            self.dir.path().join(format!("keys-{generation}.json"))
        };
        std::fs::write(&keys_file, jwks.to_string()).expect("write keys file");
        let mut child = Command::new("node")
            .arg(idp_dir().join("server.mjs"))
            .arg(port.to_string())
            .arg("--exit-on-stdin-close")
            .env("IDP_RESOURCES", format!("{FHIR_BASE},{OTHER_RESOURCE}"))
            .env("IDP_OPAQUE_RESOURCES", OPAQUE_RESOURCE)
            .env("IDP_KEYS_FILE", &keys_file)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run `node` (is Node.js installed?): {e}"))?;
        let stdin = child.stdin.take().expect("stdin");
        let stderr = drain(child.stderr.take().expect("stderr"));
        let stdout = child.stdout.take().expect("stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("READY ") {
                    let _ = ready_tx.send(url.to_owned());
                }
            }
        });
        let process = IdpProcess {
            child,
            _stdin: stdin,
            stderr,
        };
        match ready_rx.recv_timeout(IDP_READY_TIMEOUT) {
            Ok(url) => {
                let port = url
                    .rsplit_once(':')
                    .and_then(|(_, port)| port.parse().ok())
                    .unwrap_or_else(|| panic!("READY line without a port: {url}"));
                Ok((process, port))
            }
            Err(_) => {
                let mut process = process;
                let _ = process.child.kill();
                let _ = process.child.wait();
                std::thread::sleep(Duration::from_millis(50));
                Err(format!(
                    "the IdP did not print READY within {IDP_READY_TIMEOUT:?}; stderr:\n{}",
                    String::from_utf8_lossy(&process.stderr.lock())
                ))
            }
        }
    }

    /// The issuer, `http://127.0.0.1:PORT`.
    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The provider's discovery document.
    async fn discovery(&self) -> Value {
        get_json(&format!(
            "{}/.well-known/openid-configuration",
            self.issuer()
        ))
        .await
    }

    /// The `kid`s of the published JWKS, in order.
    async fn published_kids(&self) -> Vec<String> {
        let jwks_uri = self.discovery().await["jwks_uri"]
            .as_str()
            .expect("jwks_uri")
            .to_owned();
        get_json(&jwks_uri).await["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|key| key["kid"].as_str().expect("kid").to_owned())
            .collect()
    }

    /// The token endpoint's JSON answer to a `client_credentials` request (RFC 6749 §4.4)
    /// with `client_secret_basic`, for `resource` (RFC 8707) or the provider's default.
    async fn token_response(&self, client: Client, scope: &str, resource: Option<&str>) -> Value {
        let (id, secret) = client.credentials();
        let endpoint = self.discovery().await["token_endpoint"]
            .as_str()
            .expect("token_endpoint")
            .to_owned();
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        let response = http_client()
            .post(&endpoint)
            .basic_auth(id, Some(secret))
            .form(&form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {endpoint}: {e}"));
        response.json().await.expect("token endpoint answers JSON")
    }

    /// An access token, or a panic showing the provider's error.
    async fn token(&self, client: Client, scope: &str, resource: Option<&str>) -> String {
        let answer = self.token_response(client, scope, resource).await;
        match answer["access_token"].as_str() {
            Some(token) => {
                assert_eq!(answer["token_type"], "Bearer", "{answer}");
                token.to_owned()
            }
            None => panic!(
                "{client:?} got no token for {scope:?}: {answer}\nIdP stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Verifies `token` against the JWKS the provider publishes, as any relying party would.
    async fn verify_with_published_keys(&self, token: &str, audience: &str) -> Value {
        let jwks_uri = self.discovery().await["jwks_uri"]
            .as_str()
            .expect("jwks_uri")
            .to_owned();
        let jwks: JwkSet = serde_json::from_value(get_json(&jwks_uri).await).expect("a JWKS");
        for key in &jwks.keys {
            let text = serde_json::to_value(key).unwrap();
            assert!(
                text.get("d").is_none(),
                "private key material published: {text}"
            );
        }
        let header = decode_header(token).expect("a JWS");
        let jwk = jwks
            .find(header.kid.as_deref().expect("kid"))
            .expect("the signing key is published");
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[self.issuer()]);
        decode::<Value>(
            token,
            &DecodingKey::from_jwk(jwk).expect("key"),
            &validation,
        )
        .expect("the token verifies")
        .claims
    }

    /// What the current server process wrote to stderr.
    fn stderr(&self) -> String {
        match &*self.process.lock() {
            Some(process) => String::from_utf8_lossy(&process.stderr.lock()).into_owned(),
            None => String::new(),
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- IdP stderr ---\n{}", self.stderr());
        }
        if let Some(mut process) = self.process.lock().take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
}

// === impl Client ===

impl Client {
    /// `(client_id, client_secret)` as registered in tests/idp/server.mjs.
    fn credentials(self) -> (&'static str, &'static str) {
        match self {
            Client::System => ("fhirwall-system", "system-secret"),
            Client::Patient => ("fhirwall-patient", "patient-secret"),
            Client::NoContext => ("fhirwall-no-context", "no-context-secret"),
            Client::ShortLived => ("fhirwall-short-lived", "short-lived-secret"),
        }
    }
}

async fn get_json(url: &str) -> Value {
    let response = http_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.expect("JSON")
}

/// Reads a child pipe to its end on a thread, so the child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().extend_from_slice(&chunk[..n]),
            }
        }
    });
    buffer
}
