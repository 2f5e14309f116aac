//! Quotas shared through a real `redis-server` (Debian package `redis-server`): two gateway
//! processes share one quota and together admit no more than it under many concurrent
//! requests; with Redis stopped both keep serving on their local share; with Redis back they
//! share again. The distinct-patients guard is shared the same way.
//!
//! Each test starts its own `redis-server` on a free loopback port (no persistence). Ignored
//! by plain `cargo test` so a machine without Redis passes; `.ci/run` installs the package
//! and runs `cargo test --test ratelimit_redis -- --ignored`. Set `REDIS_SERVER` to use
//! another binary.

mod support;

use std::time::Duration;

use serde_json::json;
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

async fn start_gateway(
    issuer: &TestIssuer,
    backend: &TestBackend,
    redis: &RedisServer,
    limits: &str,
) -> Gateway {
    Gateway::builder()
        .backend(backend)
        .issuer(issuer)
        .policy_yaml(format!("{ROUTES}{limits}"))
        // A generous timeout: this test is about sharing, not about a slow Redis under a
        // loaded CI machine turning into a fallback.
        .config_override(&format!(
            "{{ rate_limit: {{ redis: {{ url: '{}', key_prefix: 'e2e:', timeout: 2s, local_share: 0.5, retry_interval: 100ms }} }} }}",
            redis.url()
        ))
        .start()
        .await
}

/// Waits until `gateway` reports `mode` in `fhirwall_ratelimit_mode`.
async fn wait_for_mode(gateway: &Gateway, mode: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if gateway
            .metric("fhirwall_ratelimit_mode", &[("mode", mode)])
            .await
            == Some(1.0)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rate-limit mode never became {mode}: {}\n{}",
            gateway.metrics().await,
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` concurrent GETs of `path` on each gateway; the number of 200s per gateway. Anything
/// but 200 or 429 fails the test.
async fn burst(gateways: &[&Gateway], path: &str, token: &str, n: usize) -> Vec<usize> {
    let mut tasks = tokio::task::JoinSet::new();
    for (g, gateway) in gateways.iter().enumerate() {
        for _ in 0..n {
            let url = gateway.url(path);
            let token = token.to_owned();
            tasks.spawn(async move {
                let status = http_client()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("request")
                    .status()
                    .as_u16();
                (g, status)
            });
        }
    }
    let mut admitted = vec![0; gateways.len()];
    while let Some(done) = tasks.join_next().await {
        let (g, status) = done.expect("task");
        match status {
            200 => admitted[g] += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    admitted
}

fn token_for_client(issuer: &TestIssuer, client: &str) -> String {
    let mut claims = issuer.claims_for("patient/Patient.r", "123");
    claims["client_id"] = json!(client);
    issuer.mint(claims, KeyId::Rsa1)
}

#[tokio::test]
#[ignore = "needs redis-server (run by .ci/run)"]
async fn two_instances_share_one_quota_fall_back_to_their_share_and_share_again() {
    let mut redis = RedisServer::start();
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let quota = "quotas:\n  - { id: per-client, key: client, rate: 20/1h }\n";
    let a = start_gateway(&issuer, &backend, &redis, quota).await;
    let b = start_gateway(&issuer, &backend, &redis, quota).await;
    wait_for_mode(&a, "shared").await;
    wait_for_mode(&b, "shared").await;
    let (status, ready) = a.readyz().await;
    assert_eq!(status, 200);
    let check = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "rate_limit")
        .unwrap()
        .clone();
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .starts_with("shared through redis"),
        "{check}"
    );

    // 2 × 60 concurrent requests of one client: together the instances admit the quota,
    // exactly, however the requests interleave.
    let token = token_for_client(&issuer, "client-a");
    let admitted = burst(&[&a, &b], "/Patient/123", &token, 60).await;
    assert_eq!(
        admitted.iter().sum::<usize>(),
        20,
        "admitted per instance: {admitted:?}"
    );
    assert_eq!(backend.request_count(), 20);

    // Redis goes away: both instances keep serving, each admitting its share (0.5 × 20).
    redis.stop();
    wait_for_mode(&a, "fallback").await;
    wait_for_mode(&b, "fallback").await;
    let (status, ready) = b.readyz().await;
    assert_eq!(status, 200, "degraded, but ready: {ready}");
    let detail = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "rate_limit")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.starts_with("degraded: redis at"), "{detail}");
    assert!(detail.contains("50%"), "{detail}");
    let token = token_for_client(&issuer, "client-b");
    let admitted = burst(&[&a, &b], "/Patient/123", &token, 30).await;
    assert_eq!(admitted, [10, 10]);
    assert!(a.stderr().contains("redis unreachable"), "{}", a.stderr());

    // Redis is back on the same port: the instances share again, without a restart.
    redis.restart();
    wait_for_mode(&a, "shared").await;
    wait_for_mode(&b, "shared").await;
    let token = token_for_client(&issuer, "client-c");
    let admitted = burst(&[&a, &b], "/Patient/123", &token, 60).await;
    assert_eq!(
        admitted.iter().sum::<usize>(),
        20,
        "admitted per instance: {admitted:?}"
    );
    // The refusals were counted where they happened.
    let refused = a
        .metric("fhirwall_rate_limited_total", &[("quota", "per-client")])
        .await
        .unwrap()
        + b.metric("fhirwall_rate_limited_total", &[("quota", "per-client")])
            .await
            .unwrap();
    assert_eq!(refused, (100 + 40 + 100) as f64);
}

#[tokio::test]
#[ignore = "needs redis-server (run by .ci/run)"]
async fn the_distinct_patients_guard_is_shared_between_instances() {
    let redis = RedisServer::start();
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let guard = "distinct_patients: { limit: 3, window: 1h }\n";
    let a = start_gateway(&issuer, &backend, &redis, guard).await;
    let b = start_gateway(&issuer, &backend, &redis, guard).await;
    wait_for_mode(&a, "shared").await;
    wait_for_mode(&b, "shared").await;
    let token = issuer.mint(issuer.claims_for("user/Patient.r", None), KeyId::Rsa1);
    let status = |g: &Gateway, id: u32| {
        let url = g.url(&format!("/Patient/{id}"));
        let token = token.clone();
        async move {
            http_client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(&a, 1).await, 200);
    assert_eq!(status(&b, 2).await, 200);
    assert_eq!(status(&a, 3).await, 200);
    // Spread over two instances, a fourth patient is still the fourth.
    assert_eq!(status(&b, 4).await, 429);
    assert_eq!(status(&a, 5).await, 429);
    // Known patients stay readable on either instance.
    assert_eq!(status(&b, 1).await, 200);
    assert_eq!(status(&a, 2).await, 200);
    let record = b.wait_for_audit_lines(2).await.swap_remove(1);
    assert_eq!(record["rate_limit"]["quota"], "distinct_patients");
}
