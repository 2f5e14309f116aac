//! Tests of the integration-test kit itself (tests/support): the issuer's JWKS verifies the
//! tokens it mints, the attack helpers produce what they claim, the backend records and
//! answers as told, and the config builder writes what the gateway expects. The real
//! gateway is not started here.

mod support;

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;

use support::*;

async fn get_json(url: &str) -> Value {
    let response = http_client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

/// Verifies `token` against the JWKS the issuer serves, the way a relying party would.
async fn verify_with_served_jwks(issuer: &TestIssuer, token: &str) -> Result<Value, String> {
    let discovery = get_json(&format!(
        "{}/.well-known/openid-configuration",
        issuer.issuer_url()
    ))
    .await;
    let jwks: JwkSet =
        serde_json::from_value(get_json(discovery["jwks_uri"].as_str().unwrap()).await).unwrap();
    let header = decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not published"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[TEST_AUDIENCE]);
    validation.set_issuer(&[issuer.issuer_url()]);
    decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_served_jwks_verifies_tokens_minted_with_every_fixture_key() {
    let issuer = TestIssuer::start();
    for key in KeyId::ALL {
        let token = issuer.mint(issuer.claims_for("patient/Patient.rs", "123"), key);
        let claims = verify_with_served_jwks(&issuer, &token).await.unwrap();
        assert_eq!(claims["patient"], "123", "{key:?}");
        assert_eq!(claims["scope"], "patient/Patient.rs");
        assert_eq!(decode_header(&token).unwrap().alg, key.alg());
    }
    assert_eq!(issuer.jwks_fetches(), 3);
    assert_eq!(issuer.discovery_fetches(), 3);
}

#[tokio::test]
async fn the_jwks_matches_the_public_key_files() {
    let issuer = TestIssuer::start();
    let token = issuer.mint(issuer.claims_for("user/*.rs", None), KeyId::Rsa2);
    // Verifying with the PEM public key proves the JWK's n/e came from the same key.
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[TEST_AUDIENCE]);
    decode::<Value>(&token, &KeyId::Rsa2.decoding_key(), &validation).unwrap();
    assert!(decode::<Value>(&token, &KeyId::Rsa1.decoding_key(), &validation).is_err());
    let jwks = issuer.jwks();
    let rsa2 = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "rsa2")
        .unwrap();
    assert_eq!(rsa2["kty"], "RSA");
    assert_eq!(rsa2["e"], "AQAB");
    assert_eq!(rsa2["use"], "sig");
    assert_eq!(rsa2["alg"], "RS256");
    let ec1 = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "ec1")
        .unwrap();
    assert_eq!(ec1["kty"], "EC");
    assert_eq!(ec1["crv"], "P-256");
}

#[tokio::test]
async fn claims_for_fills_the_standard_claims() {
    let issuer = TestIssuer::start();
    let claims = issuer.claims_for("patient/Observation.rs", "p1");
    let now = unix_now();
    assert_eq!(claims["iss"], issuer.issuer_url());
    assert_eq!(claims["aud"], TEST_AUDIENCE);
    assert_eq!(claims["sub"], TEST_SUBJECT);
    assert_eq!(claims["client_id"], TEST_CLIENT_ID);
    assert_eq!(claims["patient"], "p1");
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp >= now + 299 && exp <= now + 301);
    assert!(claims["iat"].as_u64().unwrap() <= now);
    assert!(claims["nbf"].as_u64().unwrap() <= now);
    assert_ne!(
        claims["jti"],
        issuer.claims_for("x", None)["jti"],
        "jti is unique"
    );
    assert!(issuer.claims_for("x", None).get("patient").is_none());
}

#[tokio::test]
async fn rotation_changes_what_the_jwks_publishes() {
    let issuer = TestIssuer::start_with_keys(&[KeyId::Rsa1]);
    let rsa2_token = issuer.mint(issuer.claims_for("x", None), KeyId::Rsa2);
    assert!(verify_with_served_jwks(&issuer, &rsa2_token)
        .await
        .unwrap_err()
        .contains("not published"));
    issuer.set_keys(&[KeyId::Rsa2]);
    assert_eq!(issuer.published_keys(), vec![KeyId::Rsa2]);
    verify_with_served_jwks(&issuer, &rsa2_token).await.unwrap();
    let rsa1_token = issuer.mint(issuer.claims_for("x", None), KeyId::Rsa1);
    assert!(verify_with_served_jwks(&issuer, &rsa1_token).await.is_err());
}

#[tokio::test]
async fn attack_tokens_do_not_verify() {
    let issuer = TestIssuer::start();
    let claims = issuer.claims_for("patient/Patient.rs", "123");

    let none = unsigned_alg_none(claims.clone());
    assert!(none.ends_with('.'));
    let header: Value =
        serde_json::from_slice(&base64_url_decode(none.split('.').next().unwrap())).unwrap();
    assert_eq!(header["alg"], "none");
    assert_eq!(decode_claims_unverified(&none)["patient"], "123");

    let confused = hs256_with_public_key(claims.clone(), KeyId::Rsa1);
    let header = decode_header(&confused).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.kid.as_deref(), Some("rsa1"));
    // It is a real HMAC over the PEM: a verifier that (wrongly) used the PEM as an HMAC
    // secret would accept it, which is what the gateway must not do.
    let mut hs = Validation::new(Algorithm::HS256);
    hs.set_audience(&[TEST_AUDIENCE]);
    decode::<Value>(
        &confused,
        &DecodingKey::from_secret(&KeyId::Rsa1.public_pem()),
        &hs,
    )
    .unwrap();
    assert!(verify_with_served_jwks(&issuer, &confused).await.is_err());

    let good = issuer.mint(claims.clone(), KeyId::Ec1);
    let bad = with_bad_signature(&good);
    assert_ne!(bad, good);
    assert_eq!(bad.len(), good.len());
    assert_eq!(
        bad.rsplit_once('.').unwrap().0,
        good.rsplit_once('.').unwrap().0
    );
    verify_with_served_jwks(&issuer, &good).await.unwrap();
    assert!(verify_with_served_jwks(&issuer, &bad).await.is_err());

    let unknown = issuer.mint_unpublished(claims.clone());
    assert_eq!(
        decode_header(&unknown).unwrap().kid.as_deref(),
        Some(UNPUBLISHED_KID)
    );
    assert!(verify_with_served_jwks(&issuer, &unknown)
        .await
        .unwrap_err()
        .contains("not published"));

    let swapped = issuer.mint_with_kid(claims.clone(), KeyId::Rsa2, Some("rsa1"));
    assert!(verify_with_served_jwks(&issuer, &swapped).await.is_err());
    let no_kid = issuer.mint_with_kid(claims, KeyId::Rsa1, None);
    assert!(decode_header(&no_kid).unwrap().kid.is_none());
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

#[tokio::test]
async fn a_stopped_issuer_refuses_connections_and_comes_back_on_the_same_port() {
    let issuer = TestIssuer::start();
    let client = http_client();
    let jwks_url = issuer.jwks_url();
    // Keep a pooled connection open: stopping must close it too.
    assert_eq!(client.get(&jwks_url).send().await.unwrap().status(), 200);
    issuer.stop().await;
    assert!(!issuer.is_running());
    assert!(client.get(&jwks_url).send().await.is_err(), "outage");
    issuer.restart().await;
    assert_eq!(client.get(&jwks_url).send().await.unwrap().status(), 200);
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn the_jwks_can_be_made_to_fail() {
    let issuer = TestIssuer::start();
    issuer.set_jwks_failure(Some(503));
    let response = http_client().get(issuer.jwks_url()).send().await.unwrap();
    assert_eq!(response.status(), 503);
    issuer.set_jwks_failure(None);
    let response = http_client().get(issuer.jwks_url()).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_backend_records_requests_and_echoes_what_it_saw() {
    let backend = TestBackend::start();
    let response = http_client()
        .post(format!(
            "{}/Observation?patient=7&_count=1",
            backend.base_url()
        ))
        .header("x-custom", "a")
        .body("{\"resourceType\":\"Observation\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], FHIR_JSON);
    assert_eq!(
        response.headers()[ECHO_HEADER],
        "POST /Observation?patient=7&_count=1"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["resourceType"], "Basic");
    assert_eq!(echoed(&body), Some("POST /Observation?patient=7&_count=1"));

    let request = backend.last_request().unwrap();
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.path, "/Observation");
    assert_eq!(request.query.as_deref(), Some("patient=7&_count=1"));
    assert_eq!(request.target, "/Observation?patient=7&_count=1");
    assert_eq!(request.header("x-custom"), Some("a"));
    assert_eq!(request.body_text(), "{\"resourceType\":\"Observation\"}");
    assert_eq!(backend.request_count(), 1);
    backend.clear_requests();
    assert!(backend.requests().is_empty());
}

#[tokio::test]
async fn the_backend_answers_as_told() {
    let backend = TestBackend::start();
    let client = http_client();
    let url = |p: &str| format!("{}{p}", backend.base_url());

    backend.set_reply(Reply::Status(404));
    let response = client.get(url("/Patient/1")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");

    backend.set_reply(Reply::Hangup);
    assert!(
        client.get(url("/Patient/2")).send().await.is_err(),
        "no answer"
    );

    backend.set_reply(Reply::Delay(Duration::from_secs(30)));
    let timed_out = http_client()
        .get(url("/Patient/3"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(timed_out.unwrap_err().is_timeout());

    backend.reset_replies();
    backend.set_reply_for_path(
        "/big",
        Reply::Custom {
            status: 201,
            content_type: "text/plain".to_owned(),
            body: bytes::Bytes::from(vec![b'x'; 100_000]),
        },
    );
    let response = client.get(url("/big")).send().await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.bytes().await.unwrap().len(), 100_000);
    assert_eq!(
        client.get(url("/other")).send().await.unwrap().status(),
        200
    );
    // Every request was recorded, answered or not.
    assert_eq!(backend.wait_for_requests(5).await.len(), 5);
}

#[tokio::test]
async fn the_builder_writes_the_config_the_gateway_expects() {
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let dir = tempfile::tempdir().unwrap();
    let [listen, admin] = free_ports();
    let builder = Gateway::builder()
        .backend(&backend)
        .issuer(&issuer)
        .config_override(
            "{ audit: { flush_interval: 5ms }, log: null, token_cache: { max_entries: 10 } }",
        );
    let path = builder.write_config(dir.path(), listen, admin);
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let expected: serde_yaml::Value = serde_yaml::from_str(&format!(
        r#"
listen: "{listen}"
admin_listen: "{admin}"
policy: policy.yaml
upstream: {{ url: "{upstream}" }}
issuers:
  - issuer: "{iss}"
    audiences: ["{TEST_AUDIENCE}"]
    jwks_min_refresh_interval: 1s
audit: {{ path: "{audit}", flush_interval: 5ms }}
token_cache: {{ max_entries: 10 }}
"#,
        upstream = backend.base_url(),
        iss = issuer.issuer_url(),
        audit = dir.path().join("audit.jsonl").display(),
    ))
    .unwrap();
    assert_eq!(config, expected);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("policy.yaml")).unwrap(),
        SAMPLE_POLICY
    );
}

#[test]
fn metric_values_are_found_by_name_and_labels() {
    let text = "# HELP x y\n# TYPE fhirwall_requests_total counter\n\
        fhirwall_requests_total{decision=\"allow\",method=\"GET\",route=\"a\",status_class=\"2xx\"} 3\n\
        fhirwall_requests_total{decision=\"deny\",method=\"GET\",route=\"a\",status_class=\"4xx\"} 2\n\
        fhirwall_ready 1\n\
        fhirwall_denials_total{reason=\"with \\\"quote\\\"\"} 4\n";
    assert_eq!(metric_value(text, "fhirwall_ready", &[]), Some(1.0));
    assert_eq!(
        metric_value(text, "fhirwall_requests_total", &[("decision", "deny")]),
        Some(2.0)
    );
    assert_eq!(
        metric_value(text, "fhirwall_requests_total", &[("decision", "x")]),
        None
    );
    assert_eq!(
        metric_value(
            text,
            "fhirwall_denials_total",
            &[("reason", "with \"quote\"")]
        ),
        Some(4.0)
    );
    assert_eq!(
        metric_sum(text, "fhirwall_requests_total", &[("route", "a")]),
        5.0
    );
    assert_eq!(metric_value(text, "fhirwall_request", &[]), None);
}

#[test]
fn run_cli_reports_the_exit_code_and_output_of_the_binary() {
    // Whatever the CLI does with no arguments, it must exit (usage or error), not hang.
    let (code, stdout, stderr) = run_cli(&["--definitely-not-a-flag"]);
    assert_ne!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
}

#[tokio::test]
async fn a_gateway_that_cannot_start_is_reported_with_its_exit_status_and_stderr() {
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    // The gateway must refuse to run without its audit trail: whatever stage the binary is
    // at, this config cannot produce a running gateway.
    let failure = match Gateway::builder()
        .backend(&backend)
        .issuer(&issuer)
        .config_override("{ audit: { path: /nonexistent-fhirwall-dir/audit.jsonl } }")
        .spawn()
        .await
    {
        Ok(gateway) => panic!(
            "started with an unwritable audit file: {}",
            gateway.stderr()
        ),
        Err(failure) => failure,
    };
    let status = failure.status.expect("the process exited");
    assert!(!status.success());
    assert!(!failure.stderr.is_empty());
    assert!(failure
        .config
        .contains("/nonexistent-fhirwall-dir/audit.jsonl"));
    assert!(failure.to_string().contains("--- stderr ---"));
}
