// JWKS: a rotated-in key is picked up without a restart, and a flood of unknown kids cannot hammer the issuer.

use std::time::Duration;

use tokio::task::JoinSet;

use crate::common::*;
use crate::support::*;

/// Somewhat more than the kit's `jwks_min_refresh_interval: 1s`.
const PAST_MIN_REFRESH: Duration = Duration::from_millis(1300);

#[tokio::test]
async fn a_key_rotated_into_the_jwks_is_accepted_without_a_restart() {
    let issuer = TestIssuer::start_with_keys(&[KeyId::Rsa1]);
    let stack = Stack::start_with_issuer(issuer, |b| b).await;
    let claims = || stack.issuer.claims_for("patient/Patient.r", PATIENT);

    let before_rotation = stack.issuer.mint(claims(), KeyId::Rsa2);
    let response = stack.get("/fhir/Patient/123", Some(&before_rotation)).await;
    let refused = refusal(response, 401, "login").await;
    assert_challenge(refused.challenge.as_deref(), "invalid_token", None);
    stack.assert_backend_untouched();

    stack.issuer.set_keys(&[KeyId::Rsa1, KeyId::Rsa2]);
    tokio::time::sleep(PAST_MIN_REFRESH).await;

    let after_rotation = stack.issuer.mint(claims(), KeyId::Rsa2);
    let response = stack.get("/fhir/Patient/123", Some(&after_rotation)).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    // The old key still works too.
    let rsa1 = stack.issuer.mint(claims(), KeyId::Rsa1);
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&rsa1)).await.status(),
        200
    );
    assert_eq!(stack.backend.request_count(), 2);
    assert!(
        stack.gateway.exit_status().is_none(),
        "the same gateway process served both"
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_at_most_two_jwks_fetches() {
    let stack = Stack::start().await;
    // Let the minimum refresh interval pass, so the first unknown kid may refetch once.
    tokio::time::sleep(PAST_MIN_REFRESH).await;
    let fetches_before = stack.issuer.jwks_fetches();

    let mut flood = JoinSet::new();
    for _ in 0..30 {
        let kid = format!("unknown-{:016x}", rand::random::<u64>());
        let token = stack.issuer.mint_with_kid(
            stack.issuer.claims_for("patient/Patient.r", PATIENT),
            KeyId::Rsa1,
            Some(&kid),
        );
        let request = stack
            .client
            .get(stack.url("/fhir/Patient/123"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send();
        flood.spawn(async move { request.await.map(|r| r.status().as_u16()) });
    }
    let mut statuses = Vec::new();
    while let Some(joined) = flood.join_next().await {
        statuses.push(joined.unwrap().expect("an answer"));
    }
    assert!(
        statuses.iter().all(|s| *s == 401),
        "unknown kids are invalid tokens: {statuses:?}"
    );
    // Give a background refresh, if any was started, the time to reach the issuer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fetches = stack.issuer.jwks_fetches() - fetches_before;
    assert!(fetches <= 2, "{fetches} JWKS fetches for 30 unknown kids");
    stack.assert_backend_untouched();

    // Known keys are unaffected by the flood.
    let token = stack.token("patient/Patient.r", true);
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&token)).await.status(),
        200
    );
}

#[tokio::test]
async fn a_slow_jwks_fetch_neither_hangs_requests_nor_blocks_known_keys() {
    let issuer = TestIssuer::start();
    let entry = format!(
        "{{ issuers: [ {{ issuer: {:?}, audiences: [{TEST_AUDIENCE:?}], jwks_min_refresh_interval: 1s, fetch_timeout: 700ms }} ] }}",
        issuer.issuer_url()
    );
    let stack = Stack::start_with_issuer(issuer, |b| b.config_override(&entry)).await;
    tokio::time::sleep(PAST_MIN_REFRESH).await;
    stack.issuer.set_jwks_delay(Some(Duration::from_secs(5)));

    // An unknown kid makes the gateway refetch the JWKS, which now hangs.
    let unknown = stack
        .issuer
        .mint_unpublished(stack.issuer.claims_for("patient/Patient.r", PATIENT));
    let started = std::time::Instant::now();
    let slow = tokio::spawn(
        stack
            .client
            .get(stack.url("/fhir/Patient/123"))
            .bearer_auth(unknown)
            .timeout(Duration::from_secs(10))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Meanwhile, tokens signed by known keys are verified without waiting for it.
    let token = stack.token("patient/Patient.r", true);
    let known_started = std::time::Instant::now();
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&token)).await.status(),
        200
    );
    let known_took = known_started.elapsed();
    assert!(
        known_took < Duration::from_millis(500),
        "a known key waited for the JWKS fetch: {known_took:?}"
    );

    let status = slow.await.unwrap().expect("an answer").status().as_u16();
    let took = started.elapsed();
    assert!(
        status == 401 || status == 503,
        "an unknown key is never accepted: {status}"
    );
    assert!(
        took < Duration::from_secs(3),
        "bounded by fetch_timeout, not the IdP: {took:?}"
    );
    stack.issuer.set_jwks_delay(None);
}
