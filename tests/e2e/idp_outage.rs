// Identity provider outage: 503 + Retry-After before any key is loaded; loaded keys and cached tokens keep working after.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::*;

#[tokio::test]
async fn without_loaded_keys_requests_get_503_with_retry_after() {
    let issuer = TestIssuer::start();
    issuer.stop().await;
    let backend = TestBackend::start();
    let gateway = Gateway::builder()
        .backend(&backend)
        .issuer(&issuer)
        .policy_yaml(POLICY)
        .spawn()
        .await
        .unwrap_or_else(|failure| panic!("the gateway must run without its IdP: {failure}"));
    let client = http_client();

    let (status, body) = gateway.readyz().await;
    assert_eq!(status, 503, "not ready without keys: {body}");
    let keys = body["checks"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["name"] == format!("issuer {}", issuer.issuer_url()))
        })
        .unwrap_or_else(|| panic!("the issuer's check in {body}"));
    assert_eq!(keys["ok"], false, "{body}");

    let token = issuer.mint(issuer.claims_for("patient/Patient.r", PATIENT), KeyId::Rsa1);
    let started = Instant::now();
    let response = client
        .get(gateway.url("/fhir/Patient/123"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("an answer, not a hang");
    let elapsed = started.elapsed();
    let refused = refusal(response, 503, "transient").await;
    assert_eq!(refused.retry_after.as_deref(), Some("5"));
    assert_eq!(refused.challenge, None, "the token is not at fault");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(backend.request_count(), 0);

    // Public routes need no keys.
    let response = client
        .get(gateway.url("/fhir/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // When the IdP comes back, the gateway recovers by itself.
    issuer.restart().await;
    gateway
        .wait_ready(Duration::from_secs(5))
        .await
        .unwrap_or_else(|f| panic!("not ready after the IdP came back: {f}"));
    let response = client
        .get(gateway.url("/fhir/Patient/123"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn after_keys_are_loaded_an_idp_outage_does_not_stop_valid_tokens() {
    let stack = Stack::start().await;
    let cached = stack.token("patient/Patient.r", true);
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&cached)).await.status(),
        200
    );

    stack.issuer.stop().await;

    // A token verified before the outage (cache).
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&cached)).await.status(),
        200
    );
    // New tokens signed by keys loaded before the outage.
    for key in KeyId::ALL {
        let fresh = stack
            .issuer
            .mint(stack.issuer.claims_for("patient/Patient.r", PATIENT), key);
        assert_eq!(
            stack.get("/fhir/Patient/123", Some(&fresh)).await.status(),
            200,
            "{key:?}"
        );
    }

    // An unknown kid makes the gateway try the (unreachable) JWKS; that failure must not
    // discard the keys it has.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let unknown = stack
        .issuer
        .mint_unpublished(stack.issuer.claims_for("patient/Patient.r", PATIENT));
    let status = stack
        .get("/fhir/Patient/123", Some(&unknown))
        .await
        .status();
    assert!(
        status == 401 || status == 503,
        "an unknown key is never accepted: {status}"
    );
    let fresh = stack.token("patient/Patient.r", true);
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&fresh)).await.status(),
        200
    );
    assert_eq!(stack.backend.request_count(), 6);
}
