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

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{decode_header, Algorithm};
use serde_json::{json, Value};

use support::*;

use support::idp::*;

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

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn a_backend_without_a_smart_configuration_gets_one_naming_the_real_providers_endpoints() {
    // SAL2 "Conformance": the document apps read before they have a token. The backend has
    // none (404), so fhirwall publishes one from oidc-provider's discovery metadata.
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    backend.set_reply_for_path("/fhir/.well-known/smart-configuration", Reply::Status(404));
    let gateway = Gateway::builder()
        .backend(&backend)
        .issuer_url(&idp.issuer(), &[FHIR_BASE])
        .policy_yaml("version: 1\nbase_path: /fhir\nfhir:\n  version: R4\nroutes: []\n")
        .start()
        .await;
    let provider: Value = http_client()
        .get(format!("{}/.well-known/openid-configuration", idp.issuer()))
        .send()
        .await
        .expect("provider metadata")
        .json()
        .await
        .expect("JSON");
    let response = http_client()
        .get(gateway.url("/fhir/.well-known/smart-configuration"))
        .send()
        .await
        .expect("GET the SMART configuration");
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.expect("JSON");
    for key in [
        "token_endpoint",
        "authorization_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
    ] {
        assert_eq!(doc[key], provider[key], "{key}: {doc}");
    }
    assert_eq!(doc["issuer"], idp.issuer().as_str());
    assert_eq!(doc["jwks_uri"], provider["jwks_uri"]);
    assert!(
        doc["grant_types_supported"]
            .as_array()
            .is_some_and(|g| g.contains(&json!("client_credentials"))),
        "{doc}"
    );
    let caps = doc["capabilities"].as_array().expect("capabilities");
    assert!(caps.contains(&json!("sso-openid-connect")), "{doc}");
    assert!(caps.contains(&json!("permission-v2")), "{doc}");
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
