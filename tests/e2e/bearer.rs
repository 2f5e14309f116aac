// 400 invalid_request: malformed credentials (two Authorization headers, a token in the query string).

use serde_json::Value;

use crate::common::*;
use crate::support::*;

#[tokio::test]
async fn two_authorization_headers_are_refused_with_invalid_request() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let bearer = format!("Bearer {token}");
    // Raw bytes, so both header lines are certainly sent as two fields.
    let answer = raw_get(
        stack.gateway.addr(),
        b"/fhir/Patient/123",
        &[("Authorization", &bearer), ("Authorization", &bearer)],
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.head);
    let challenges = answer.header_all("www-authenticate");
    assert_eq!(challenges.len(), 1, "{}", answer.head);
    assert_challenge(Some(challenges[0]), "invalid_request", None);
    assert_eq!(answer.header_all("content-type"), vec![FHIR_JSON]);
    let body: Value = serde_json::from_str(&answer.body).expect("OperationOutcome JSON");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(body["issue"][0]["code"], "invalid");
    stack.assert_backend_untouched();

    // The control: the same request with one header passes.
    let answer = raw_get(
        stack.gateway.addr(),
        b"/fhir/Patient/123",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.head);
}

#[tokio::test]
async fn a_token_in_the_query_string_is_refused_with_invalid_request() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let response = stack
        .get(&format!("/fhir/Patient/123?access_token={token}"), None)
        .await;
    let refused = refusal(response, 400, "invalid").await;
    assert_challenge(refused.challenge.as_deref(), "invalid_request", None);
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn a_token_in_the_query_string_is_refused_even_with_a_valid_header() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let response = stack
        .get(
            &format!("/fhir/Patient/123?_format=json&access_token={token}"),
            Some(&token),
        )
        .await;
    let refused = refusal(response, 400, "invalid").await;
    assert_challenge(refused.challenge.as_deref(), "invalid_request", None);
    stack.assert_backend_untouched();
}
