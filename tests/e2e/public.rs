// Public routes: served without a token, and a garbage token is ignored (and not forwarded).

use crate::common::*;

#[tokio::test]
async fn a_public_route_is_served_without_a_token() {
    let stack = Stack::start().await;
    let response = stack.get("/fhir/metadata", None).await;
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().expect("forwarded");
    assert_eq!(seen.target, "/fhir/metadata");
    assert_eq!(stack.backend.request_count(), 1);
}

#[tokio::test]
async fn a_public_route_ignores_a_garbage_token() {
    let stack = Stack::start().await;
    let response = stack
        .get("/fhir/metadata?_format=json", Some("garbage"))
        .await;
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().expect("forwarded");
    assert_eq!(seen.target, "/fhir/metadata?_format=json");
    assert!(
        seen.header_all("authorization").is_empty(),
        "credentials are never forwarded by default"
    );
}

#[tokio::test]
async fn a_public_route_ignores_an_expired_token() {
    let stack = Stack::start().await;
    let mut claims = stack.issuer.claims_for("patient/Patient.r", PATIENT);
    claims["exp"] = serde_json::json!(crate::support::unix_now() - 3600);
    let token = stack.issuer.mint(claims, crate::support::KeyId::Rsa1);
    let response = stack.get("/fhir/metadata", Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(stack.backend.request_count(), 1);
}
