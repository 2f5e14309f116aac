//! Revocations shared through a real `redis-server` (Debian package `redis-server`): a
//! revocation posted to one gateway process makes another refuse the token within a second
//! (by `jti`, by `client_id`, by the token itself); with Redis stopped both keep enforcing
//! what they know and a revocation made meanwhile is published once Redis is back; after a
//! restart propagation resumes; an instance started later loads the revocations in force.
//!
//! Each test starts its own `redis-server` on a free loopback port (no persistence). Ignored
//! by plain `cargo test` so a machine without Redis passes; `.ci/run` installs the package
//! and runs `cargo test --test revocation_redis -- --ignored`. Set `REDIS_SERVER` to use
//! another binary.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::redis_server::RedisServer;
use support::*;

const ROUTES: &str = r#"version: 1
routes:
  - id: patient-read
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [patient/Patient.r, user/Patient.r] }
    patient: { segment: id }
"#;

/// The admin token of `POST /admin/revoke` (read from this variable).
const ADMIN_ENV: &str = "FHIRWALL_TEST_ADMIN_TOKEN";
const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The bound the gateway promises: a revocation reaches every instance within a second.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

async fn start_gateway(issuer: &TestIssuer, backend: &TestBackend, redis: &RedisServer) -> Gateway {
    Gateway::builder()
        .backend(backend)
        .issuer(issuer)
        .policy_yaml(ROUTES)
        .env(ADMIN_ENV, ADMIN_TOKEN)
        .config_override(&format!(
            "{{ revocation: {{ admin_token_env: {ADMIN_ENV}, redis_url: '{}', redis_channel: 'e2e:revocations' }} }}",
            redis.url()
        ))
        .start()
        .await
}

/// Waits until `gateway` reports `fhirwall_revocation_pubsub_connected` = `value`.
async fn wait_connected(gateway: &Gateway, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if gateway
            .metric("fhirwall_revocation_pubsub_connected", &[])
            .await
            == Some(value)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pubsub connected never became {value}: {}\n{}",
            gateway.metrics().await,
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `revocation_pubsub` check of `/readyz`, with the status.
async fn pubsub_check(gateway: &Gateway) -> (u16, Value) {
    let (status, ready) = gateway.readyz().await;
    let check = ready["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "revocation_pubsub")
        .unwrap_or_else(|| panic!("no revocation_pubsub check: {ready}"))
        .clone();
    (status, check)
}

async fn status(gateway: &Gateway, token: &str) -> u16 {
    http_client()
        .get(gateway.url("/Patient/123"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
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

/// Polls `gateway` with `token` until it is refused (401); how long that took. Fails the
/// test past `bound`.
async fn refused_within(
    gateway: &Gateway,
    token: &str,
    since: Instant,
    bound: Duration,
) -> Duration {
    loop {
        let code = status(gateway, token).await;
        let elapsed = since.elapsed();
        if code == 401 {
            return elapsed;
        }
        assert_eq!(code, 200, "unexpected status before the revocation arrived");
        assert!(
            elapsed < bound,
            "still accepted {elapsed:?} after the revocation\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn token(issuer: &TestIssuer, client: &str) -> String {
    let mut claims = issuer.claims_for("patient/Patient.r", "123");
    claims["client_id"] = json!(client);
    issuer.mint(claims, KeyId::Rsa1)
}

fn jti_of(token: &str) -> String {
    decode_claims_unverified(token)["jti"]
        .as_str()
        .expect("jti")
        .to_owned()
}

#[tokio::test]
#[ignore = "needs redis-server (run by .ci/run)"]
async fn a_revocation_posted_to_one_instance_is_enforced_by_the_other_within_a_second() {
    let redis = RedisServer::start();
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let a = start_gateway(&issuer, &backend, &redis).await;
    let b = start_gateway(&issuer, &backend, &redis).await;
    wait_connected(&a, 1.0).await;
    wait_connected(&b, 1.0).await;
    let (code, check) = pubsub_check(&b).await;
    assert_eq!(code, 200);
    assert_eq!(check["ok"], true);
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .starts_with("subscribed to `e2e:revocations`"),
        "{check}"
    );

    let by_jti = token(&issuer, "app-jti");
    let by_client = token(&issuer, "app-client");
    let by_token = token(&issuer, "app-token");
    let untouched = token(&issuer, "app-other");
    let cases = [
        ("jti", json!({ "jti": jti_of(&by_jti) }), &by_jti),
        (
            "client_id",
            json!({ "client_id": "app-client" }),
            &by_client,
        ),
        ("token", json!({ "token": by_token }), &by_token),
    ];
    let mut latencies = Vec::new();
    for (what, body, token) in cases {
        // Accepted (and so cached) by both first: the revocation must beat the cache.
        assert_eq!(status(&a, token).await, 200, "{what}");
        assert_eq!(status(&b, token).await, 200, "{what}");
        let posted = Instant::now();
        let answer = revoke(&a, body).await;
        assert_eq!(answer["propagated"], true, "{what}: {answer}");
        assert!(
            !answer.to_string().contains(by_token.as_str()),
            "the token is never echoed"
        );
        assert_eq!(
            status(&a, token).await,
            401,
            "{what} refused at once where posted"
        );
        let took = refused_within(&b, token, posted, PROPAGATION_BOUND).await;
        latencies.push((what, took));
    }
    eprintln!("propagation latency (post to A → refused by B, incl. the POST): {latencies:?}");
    // Nothing else was revoked.
    assert_eq!(status(&a, &untouched).await, 200);
    assert_eq!(status(&b, &untouched).await, 200);

    let name = "fhirwall_revocation_pubsub_received_total";
    assert_eq!(b.metric(name, &[("via", "message")]).await, Some(3.0));
    // A's own messages come back to it and are recognised as its own.
    assert_eq!(a.metric(name, &[("via", "message")]).await, Some(0.0));
    assert_eq!(
        a.metric("fhirwall_revocation_pubsub_published_total", &[])
            .await,
        Some(3.0)
    );
    assert_eq!(
        b.metric(
            "fhirwall_revocations_total",
            &[("kind", "client"), ("source", "redis")]
        )
        .await,
        Some(1.0)
    );
    // Redis never holds a token: the re-sync set names it by its SHA-256.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg("e2e:revocations:recent")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members.iter().all(|m| !m.contains(by_token.as_str())));
    let sha = sha256_hex(&by_token);
    assert!(
        members.contains(&format!(r#"{{"kind":"token","value":"{sha}"}}"#)),
        "{members:?}"
    );
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
#[ignore = "needs redis-server (run by .ci/run)"]
async fn propagation_survives_redis_going_away_and_late_instances_load_what_is_in_force() {
    let mut redis = RedisServer::start();
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let a = start_gateway(&issuer, &backend, &redis).await;
    let b = start_gateway(&issuer, &backend, &redis).await;
    wait_connected(&a, 1.0).await;
    wait_connected(&b, 1.0).await;

    let before = token(&issuer, "app-before");
    assert_eq!(status(&b, &before).await, 200);
    let posted = Instant::now();
    revoke(&a, json!({ "jti": jti_of(&before) })).await;
    refused_within(&b, &before, posted, PROPAGATION_BOUND).await;

    // Redis goes away: both stay ready (degraded) and keep enforcing what they know.
    redis.stop();
    wait_connected(&a, 0.0).await;
    wait_connected(&b, 0.0).await;
    let (code, check) = pubsub_check(&b).await;
    assert_eq!(code, 200, "degraded, but ready: {check}");
    assert_eq!(check["ok"], true);
    assert!(
        check["detail"].as_str().unwrap().starts_with("degraded"),
        "{check}"
    );
    assert_eq!(status(&b, &before).await, 401);
    let during = token(&issuer, "app-during");
    assert_eq!(status(&b, &during).await, 200);
    let answer = revoke(&a, json!({ "client_id": "app-during" })).await;
    let propagated = answer["propagated"].as_str().unwrap_or_default();
    assert!(propagated.starts_with("error:"), "{answer}");
    assert_eq!(status(&a, &during).await, 401, "applied where posted");
    assert_eq!(status(&b, &during).await, 200, "B cannot know yet");
    let (_, check) = pubsub_check(&a).await;
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("1 revocations made here wait to be propagated"),
        "{check}"
    );

    // Redis is back (empty: no persistence): A publishes what it kept, both resubscribe,
    // and propagation resumes.
    let restarted = Instant::now();
    redis.restart();
    wait_connected(&a, 1.0).await;
    wait_connected(&b, 1.0).await;
    let reconnect = restarted.elapsed();
    let caught_up = refused_within(&b, &during, restarted, Duration::from_secs(10)).await;
    eprintln!("after the restart: subscribed again in {reconnect:?}, kept revocation enforced by B {caught_up:?} after it");
    assert!(
        a.metric(
            "fhirwall_revocation_pubsub_errors_total",
            &[("op", "publish")]
        )
        .await
        .unwrap_or(0.0)
            >= 1.0
    );

    let after = token(&issuer, "app-after");
    assert_eq!(status(&b, &after).await, 200);
    let posted = Instant::now();
    let answer = revoke(&a, json!({ "token": after })).await;
    assert_eq!(answer["propagated"], true, "{answer}");
    let took = refused_within(&b, &after, posted, PROPAGATION_BOUND).await;
    eprintln!("after the restart: propagation latency {took:?}");

    // A third instance started now loads the revocations in force (made while it did not
    // exist) before it reports ready.
    let c = start_gateway(&issuer, &backend, &redis).await;
    assert_eq!(
        status(&c, &during).await,
        401,
        "client revoked before C started"
    );
    assert_eq!(
        status(&c, &after).await,
        401,
        "token revoked before C started"
    );
    assert_eq!(
        c.metric(
            "fhirwall_revocation_pubsub_received_total",
            &[("via", "resync")]
        )
        .await,
        Some(2.0)
    );
    let fresh = token(&issuer, "app-fresh");
    assert_eq!(status(&c, &fresh).await, 200);
}
