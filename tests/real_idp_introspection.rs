//! End-to-end tests of opaque-token introspection (RFC 7662), revocation (RFC 7009 at the
//! provider, `POST /admin/revoke` at the gateway) and provider outages, against the real
//! authorization server of tests/idp (oidc-provider) and the real `fhirwall` binary.
//!
//! Opaque tokens come from real `client_credentials` requests for the provider's opaque
//! resource; the gateway introspects them as the `fhirwall-gateway*` clients. Ignored by
//! default like tests/real_idp.rs (needs Node.js and `npm ci --prefix tests/idp`); `.ci/run`
//! runs it with `cargo test --test real_idp_introspection -- --ignored`.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::idp::*;
use support::*;

/// The environment variable the gateway reads its introspection secret from.
const SECRET_ENV: &str = "FHIRWALL_TEST_INTROSPECTION_SECRET";

/// The admin token of `POST /admin/revoke` (read from this variable).
const ADMIN_ENV: &str = "FHIRWALL_TEST_ADMIN_TOKEN";
const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

const POLICY: &str = r#"version: 1
routes:
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
async fn an_opaque_token_is_introspected_and_allowed_or_denied_by_its_scope() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend, "").start().await;
    let token = opaque(&idp, Client::System, "system/Patient.rs").await;
    assert_eq!(idp.introspect(&token).await["active"], true);

    let allowed = get(&gateway, "/Patient/abc", &token).await;
    assert_eq!(allowed.0, 200, "{allowed:?}");
    assert_eq!(backend.request_count(), 1);
    let audit = gateway.wait_for_audit_lines(1).await;
    assert_eq!(audit[0]["decision"], "allow", "{}", audit[0]);
    assert_eq!(audit[0]["client_id"], "fhirwall-system");
    assert_eq!(audit[0]["issuer"], idp.issuer());

    let denied = get(&gateway, "/Observation?code=1", &token).await;
    assert_eq!(denied.0, 403, "{denied:?}");
    assert!(denied.1.contains("insufficient_scope"), "{denied:?}");
    assert_eq!(backend.request_count(), 1, "a refusal never goes upstream");

    // A made-up opaque token: inactive at the provider, 401, and remembered briefly.
    for _ in 0..3 {
        let junk = get(&gateway, "/Patient/abc", "NotARealToken0123456789").await;
        assert_eq!(junk.0, 401, "{junk:?}");
        assert!(junk.1.contains("invalid_token"), "{junk:?}");
    }
    let calls = |result: &'static str| {
        let gateway = &gateway;
        async move {
            gateway
                .metric(
                    "fhirwall_introspection_requests_total",
                    &[("result", result)],
                )
                .await
                .unwrap_or(0.0)
        }
    };
    assert_eq!(
        calls("active").await,
        1.0,
        "the second use came from the cache"
    );
    assert_eq!(calls("inactive").await, 1.0, "junk is asked about once");
    assert_eq!(
        gateway
            .metric("fhirwall_introspection_negative_hits_total", &[])
            .await,
        Some(2.0)
    );
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn concurrent_requests_with_one_new_token_share_one_introspection_call() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend, "").start().await;
    let token = opaque(&idp, Client::System, "system/Patient.rs").await;

    let mut herd = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (url, token) = (gateway.url(&format!("/Patient/p{i}")), token.clone());
        herd.spawn(async move {
            http_client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        });
    }
    while let Some(status) = herd.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(
        gateway
            .metric(
                "fhirwall_introspection_requests_total",
                &[("result", "active")]
            )
            .await,
        Some(1.0),
        "32 concurrent requests, one call to the provider"
    );
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn a_token_revoked_at_the_provider_stops_working_within_the_cache_maximum() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend, "cache_max_ttl: 2s")
        .start()
        .await;
    let token = opaque(&idp, Client::System, "system/Patient.rs").await;
    assert_eq!(get(&gateway, "/Patient/abc", &token).await.0, 200);

    idp.revoke(Client::System, &token).await;
    let revoked_at = Instant::now();
    assert_eq!(idp.introspect(&token).await["active"], false);

    // Served from the cache until its 2 s are over, then refused.
    let refused_after = loop {
        let (status, challenge) = get(&gateway, "/Patient/abc", &token).await;
        if status == 401 {
            assert!(challenge.contains("invalid_token"), "{challenge}");
            break revoked_at.elapsed();
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(4),
            "still accepted long after cache_max_ttl"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        refused_after <= Duration::from_millis(2500),
        "{refused_after:?}"
    );
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn the_admin_endpoint_revokes_tokens_clients_and_jwt_ids_at_once() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend, "")
        .config_override(&format!(
            "{{ revocation: {{ admin_token_env: {ADMIN_ENV} }} }}"
        ))
        .env(ADMIN_ENV, ADMIN_TOKEN)
        .start()
        .await;

    // Without the admin token: refused, nothing revoked.
    let token = opaque(&idp, Client::System, "system/Patient.rs").await;
    assert_eq!(get(&gateway, "/Patient/abc", &token).await.0, 200);
    for auth in [None, Some("wrong-token-wrong-token")] {
        let mut request = http_client()
            .post(gateway.admin_url("/admin/revoke"))
            .json(&json!({ "token": token }));
        if let Some(a) = auth {
            request = request.bearer_auth(a);
        }
        assert_eq!(request.send().await.unwrap().status(), 401);
    }
    assert_eq!(get(&gateway, "/Patient/abc", &token).await.0, 200);

    // One cached opaque token, at once (cache_max_ttl is 30 s here).
    let answer = revoke(&gateway, json!({ "token": token })).await;
    assert_eq!(answer["revoked"]["kind"], "token", "{answer}");
    assert!(
        !answer.to_string().contains(&token),
        "the answer never echoes the token"
    );
    let (status, challenge) = get(&gateway, "/Patient/abc", &token).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("invalid_token"), "{challenge}");

    // Every token of a client, including one the gateway has never seen.
    let fresh = opaque(&idp, Client::Patient, "patient/Patient.r").await;
    revoke(&gateway, json!({ "client_id": "fhirwall-patient" })).await;
    assert_eq!(get(&gateway, "/Patient/pat-123", &fresh).await.0, 401);
    let other_client = opaque(&idp, Client::System, "system/Patient.rs").await;
    assert_eq!(get(&gateway, "/Patient/abc", &other_client).await.0, 200);

    // A JWT by its jti.
    let jwt = idp.token(Client::System, "system/Patient.rs", None).await;
    assert_eq!(get(&gateway, "/Patient/abc", &jwt).await.0, 200);
    let jti = decode_claims_unverified(&jwt)["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    revoke(&gateway, json!({ "jti": jti })).await;
    assert_eq!(get(&gateway, "/Patient/abc", &jwt).await.0, 401);

    // Bad requests name the problem.
    let bad = http_client()
        .post(gateway.admin_url("/admin/revoke"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "jti": "a", "sub": "b" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let revocations = |kind: &'static str| {
        let gateway = &gateway;
        async move {
            gateway
                .metric(
                    "fhirwall_revocations_total",
                    &[("kind", kind), ("source", "admin")],
                )
                .await
        }
    };
    assert_eq!(revocations("token").await, Some(1.0));
    assert_eq!(revocations("client").await, Some(1.0));
    assert_eq!(revocations("jti").await, Some(1.0));
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn when_the_provider_is_down_cached_tokens_work_and_new_ones_get_503() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend, "breaker_failures: 2, breaker_open_for: 30s")
        .start()
        .await;
    let cached = opaque(&idp, Client::System, "system/Patient.rs").await;
    let uncached = opaque(&idp, Client::System, "system/Patient.rs").await;
    assert_eq!(get(&gateway, "/Patient/abc", &cached).await.0, 200);

    idp.stop();
    assert_eq!(get(&gateway, "/Patient/abc", &cached).await.0, 200);
    for _ in 0..4 {
        let response = http_client()
            .get(gateway.url("/Patient/abc"))
            .bearer_auth(&uncached)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "never allowed, never 401");
        assert_eq!(response.headers()["retry-after"], "5");
    }
    assert_eq!(
        backend.request_count(),
        2,
        "only the cached token went upstream"
    );
    // Two failures opened the circuit; the next two were refused without a call.
    assert_eq!(
        gateway
            .metric(
                "fhirwall_introspection_requests_total",
                &[("result", "error")]
            )
            .await,
        Some(2.0)
    );
    assert_eq!(
        gateway
            .metric("fhirwall_introspection_circuit_rejections_total", &[])
            .await,
        Some(2.0)
    );
    assert_eq!(
        gateway
            .metric("fhirwall_introspection_circuit_state", &[])
            .await,
        Some(1.0)
    );
    let (_, ready) = gateway.readyz().await;
    let check = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with("introspection "))
        .expect("an introspection check")
        .clone();
    assert!(
        check["detail"].as_str().unwrap().contains("circuit open"),
        "{check}"
    );
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn client_secret_post_and_private_key_jwt_authenticate_the_gateway() {
    let idp = Idp::start(&KeySet::generate(&["k1"]).only(&["k1"]));
    let backend = TestBackend::start();
    let key = fixture_path("keys/rsa1.key.pem");
    for auth in [
        format!("client_id: fhirwall-gateway-post, auth: client_secret_post, client_secret_env: {SECRET_ENV}"),
        format!(
            "client_id: fhirwall-gateway-jwt, auth: private_key_jwt, private_key_file: {}, private_key_kid: gateway-rsa1",
            key.display()
        ),
    ] {
        let gateway = Gateway::builder()
            .backend(&backend)
            .issuer_yaml(&format!(
                "{{ issuer: {}, audiences: [{FHIR_BASE}, {OPAQUE_RESOURCE}], jwks_min_refresh_interval: 1s, introspection: {{ {auth} }} }}",
                idp.issuer()
            ))
            .env(SECRET_ENV, "gateway-secret-post")
            .policy_yaml(POLICY)
            .start()
            .await;
        let token = opaque(&idp, Client::System, "system/Patient.rs").await;
        let response = get(&gateway, "/Patient/abc", &token).await;
        assert_eq!(response.0, 200, "{auth}: {response:?}\n{}", idp.stderr());
    }
}

#[tokio::test]
#[ignore = "needs a real IdP: npm ci --prefix tests/idp (run by .ci/run)"]
async fn jwt_key_rotation_at_the_provider_is_picked_up_alongside_introspection() {
    let keys = KeySet::generate(&["old", "new"]);
    let idp = Idp::start(&keys.only(&["old"]));
    let backend = TestBackend::start();
    let gateway = gateway_for(&idp, &backend, "").start().await;
    let before = idp.token(Client::System, "system/Patient.rs", None).await;
    assert_eq!(get(&gateway, "/Patient/abc", &before).await.0, 200);

    idp.restart(&keys.only(&["new", "old"]));
    // Past `jwks_min_refresh_interval` (1s) since the gateway's last fetch, so the unknown
    // `kid` of the new key may trigger a refresh.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = idp.token(Client::System, "system/Patient.rs", None).await;
    assert_eq!(get(&gateway, "/Patient/abc", &after).await.0, 200);
    // Opaque tokens still work after the restart (a new token: the provider's memory was
    // wiped with the restart).
    let token = opaque(&idp, Client::System, "system/Patient.rs").await;
    assert_eq!(get(&gateway, "/Patient/abc", &token).await.0, 200);
}

// === helpers ===

/// A gateway trusting `idp` for JWTs ([`FHIR_BASE`]) and opaque tokens
/// ([`OPAQUE_RESOURCE`], introspected as `fhirwall-gateway` with client_secret_basic, the
/// endpoint found by discovery), with `extra` keys in its `introspection` block.
fn gateway_for(idp: &Idp, backend: &TestBackend, extra: &str) -> GatewayBuilder {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    Gateway::builder()
        .backend(backend)
        .issuer_yaml(&format!(
            "{{ issuer: {}, audiences: [{FHIR_BASE}, {OPAQUE_RESOURCE}], jwks_min_refresh_interval: 1s, introspection: {{ client_id: {GATEWAY_CLIENT}, client_secret_env: {SECRET_ENV}{extra} }} }}",
            idp.issuer()
        ))
        .env(SECRET_ENV, GATEWAY_SECRET)
        .policy_yaml(POLICY)
}

/// An opaque access token for [`OPAQUE_RESOURCE`].
async fn opaque(idp: &Idp, client: Client, scope: &str) -> String {
    let token = idp.token(client, scope, Some(OPAQUE_RESOURCE)).await;
    assert_eq!(token.matches('.').count(), 0, "opaque: {token}");
    token
}

/// Status and `WWW-Authenticate` of a GET with `token`.
async fn get(gateway: &Gateway, path: &str, token: &str) -> (u16, String) {
    let response = http_client()
        .get(gateway.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), challenge)
}

/// `POST /admin/revoke` with the admin token; the JSON answer.
async fn revoke(gateway: &Gateway, body: Value) -> Value {
    let response = http_client()
        .post(gateway.admin_url("/admin/revoke"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("POST /admin/revoke");
    assert_eq!(response.status(), 200, "revoke {body}");
    response.json().await.expect("JSON")
}
