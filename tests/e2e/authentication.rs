// 401 answers: a missing token gets a bare challenge; every kind of invalid token gets `invalid_token` and never reaches the backend.

use serde_json::{json, Value};

use crate::common::*;
use crate::support::*;

/// Sends `token` to a protected route and checks the complete `invalid_token` answer.
async fn assert_invalid_token(stack: &Stack, token: &str, issue_code: &str) {
    let response = stack.get("/fhir/Patient/123", Some(token)).await;
    let refused = refusal(response, 401, issue_code).await;
    assert_challenge(refused.challenge.as_deref(), "invalid_token", None);
    stack.assert_backend_untouched();
}

/// Claims of a valid patient-context token from `stack`'s issuer.
fn claims(stack: &Stack) -> Value {
    stack.issuer.claims_for("patient/Patient.r", PATIENT)
}

#[tokio::test]
async fn a_missing_token_gets_a_bare_challenge_without_error_code() {
    let stack = Stack::start().await;
    let response = stack.get("/fhir/Patient/123", None).await;
    let refused = refusal(response, 401, "login").await;
    assert_eq!(
        refused.challenge.as_deref(),
        Some(r#"Bearer realm="fhirwall""#)
    );
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn a_malformed_token_is_refused_with_invalid_token() {
    let stack = Stack::start().await;
    assert_invalid_token(&stack, "abc", "login").await;
}

#[tokio::test]
async fn an_expired_token_is_refused_with_invalid_token_and_issue_code_expired() {
    let stack = Stack::start().await;
    let mut claims = claims(&stack);
    let now = unix_now();
    // An hour ago is beyond any clock-skew leeway.
    claims["iat"] = json!(now - 7200);
    claims["nbf"] = json!(now - 7200);
    claims["exp"] = json!(now - 3600);
    let token = stack.issuer.mint(claims, KeyId::Rsa1);
    assert_invalid_token(&stack, &token, "expired").await;
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused_with_invalid_token() {
    let stack = Stack::start().await;
    let mut claims = claims(&stack);
    let now = unix_now();
    claims["nbf"] = json!(now + 3600);
    claims["exp"] = json!(now + 7200);
    let token = stack.issuer.mint(claims, KeyId::Rsa1);
    assert_invalid_token(&stack, &token, "login").await;
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused_with_invalid_token() {
    let stack = Stack::start().await;
    let mut claims = claims(&stack);
    let now = unix_now();
    // `nbf` says valid now, but the issuer's clock claims it was issued an hour from now.
    claims["iat"] = json!(now + 3600);
    claims["nbf"] = json!(now - 10);
    claims["exp"] = json!(now + 7200);
    let token = stack.issuer.mint(claims, KeyId::Rsa1);
    assert_invalid_token(&stack, &token, "login").await;
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused_with_invalid_token() {
    let stack = Stack::start().await;
    let mut claims = claims(&stack);
    // Signed by a key the trusted issuer publishes, but claiming another issuer.
    claims["iss"] = json!("https://evil.example.org");
    let token = stack.issuer.mint(claims, KeyId::Rsa1);
    assert_invalid_token(&stack, &token, "login").await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused_with_invalid_token() {
    let stack = Stack::start().await;
    let mut claims = claims(&stack);
    claims["aud"] = json!("https://other-api.example.org/fhir");
    let token = stack.issuer.mint(claims, KeyId::Rsa1);
    assert_invalid_token(&stack, &token, "login").await;
}

#[tokio::test]
async fn a_token_with_a_bad_signature_is_refused_with_invalid_token() {
    let stack = Stack::start().await;
    for key in KeyId::ALL {
        let token = with_bad_signature(&stack.issuer.mint(claims(&stack), key));
        assert_invalid_token(&stack, &token, "login").await;
    }
    // Signed by rsa2 but naming rsa1: the signature does not match the named key.
    let swapped = stack
        .issuer
        .mint_with_kid(claims(&stack), KeyId::Rsa2, Some("rsa1"));
    assert_invalid_token(&stack, &swapped, "login").await;
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused_with_invalid_token() {
    let stack = Stack::start().await;
    assert_invalid_token(&stack, &unsigned_alg_none(claims(&stack)), "login").await;
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_public_key_is_refused_with_invalid_token() {
    let stack = Stack::start().await;
    let token = hs256_with_public_key(claims(&stack), KeyId::Rsa1);
    assert_invalid_token(&stack, &token, "login").await;
}

#[tokio::test]
async fn a_token_signed_by_an_unpublished_key_is_refused_with_invalid_token() {
    let stack = Stack::start().await;
    let token = stack.issuer.mint_unpublished(claims(&stack));
    assert_invalid_token(&stack, &token, "login").await;
}

#[tokio::test]
async fn a_valid_token_of_each_published_key_is_accepted() {
    // The control for the refusals above: the same claims, correctly signed, pass.
    let stack = Stack::start().await;
    for key in KeyId::ALL {
        let token = stack.issuer.mint(claims(&stack), key);
        let response = stack.get("/fhir/Patient/123", Some(&token)).await;
        assert_eq!(response.status(), 200, "{key:?}");
    }
    assert_eq!(stack.backend.request_count(), 3);
}

#[tokio::test]
async fn a_cached_token_is_refused_once_it_expires() {
    let issuer = TestIssuer::start();
    // No clock-skew leeway, so the test need not wait it out.
    let entry = format!(
        "{{ issuers: [ {{ issuer: {:?}, audiences: [{TEST_AUDIENCE:?}], jwks_min_refresh_interval: 1s, leeway: 0s }} ] }}",
        issuer.issuer_url()
    );
    let stack = Stack::start_with_issuer(issuer, |b| b.config_override(&entry)).await;
    let mut claims = claims(&stack);
    let exp = unix_now() + 2;
    claims["exp"] = json!(exp);
    let token = stack.issuer.mint(claims, KeyId::Rsa1);

    // Verified once, then served from the cache.
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&token)).await.status(),
        200
    );
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&token)).await.status(),
        200
    );
    assert_eq!(
        stack
            .gateway
            .metric("fhirwall_token_cache_hits_total", &[])
            .await,
        Some(1.0)
    );

    while unix_now() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    let refused = refusal(response, 401, "expired").await;
    assert_challenge(refused.challenge.as_deref(), "invalid_token", None);
    assert_eq!(stack.backend.request_count(), 2);
}
