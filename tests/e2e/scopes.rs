// SMART scopes: 403 insufficient_scope naming what is missing; v1 scopes, wildcards, letters from several grants, user/ scopes.

use crate::common::*;

/// Searches observations of [`PATIENT`] with a token holding `scope`.
async fn search(stack: &Stack, scope: &str, patient_context: bool) -> reqwest::Response {
    let token = stack.token(scope, patient_context);
    stack
        .get("/fhir/Observation?patient=123", Some(&token))
        .await
}

async fn assert_insufficient_scope(response: reqwest::Response, needed: &str) {
    let refused = refusal(response, 403, "forbidden").await;
    assert_challenge(
        refused.challenge.as_deref(),
        "insufficient_scope",
        Some(needed),
    );
}

#[tokio::test]
async fn a_token_lacking_a_letter_is_refused_with_the_missing_scope_named() {
    let stack = Stack::start().await;
    // The route needs patient/Observation.rs; the token only reads.
    let response = search(&stack, "patient/Observation.r", true).await;
    assert_insufficient_scope(response, "patient/Observation.s").await;
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn a_token_for_another_type_is_refused_with_the_whole_scope_named() {
    let stack = Stack::start().await;
    let response = search(&stack, "patient/Condition.rs patient/Patient.r", true).await;
    assert_insufficient_scope(response, "patient/Observation.rs").await;
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn the_named_scope_stays_in_the_token_context() {
    let stack = Stack::start().await;
    let response = search(&stack, "user/Observation.r", false).await;
    assert_insufficient_scope(response, "user/Observation.s").await;
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn an_all_of_requirement_names_only_the_part_not_held() {
    let stack = Stack::start().await;
    let token = stack.token("user/Observation.rs", false);
    let response = stack.get("/fhir/api/reports", Some(&token)).await;
    assert_insufficient_scope(response, "user/Patient.rs").await;
    stack.assert_backend_untouched();

    let token = stack.token("user/Observation.rs user/Patient.rs", false);
    let response = stack.get("/fhir/api/reports", Some(&token)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_v1_read_scope_satisfies_a_read_and_search_requirement() {
    let stack = Stack::start().await;
    let response = search(&stack, "patient/Observation.read", true).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        stack.backend.last_request().unwrap().target,
        "/fhir/Observation?patient=123"
    );
}

#[tokio::test]
async fn a_v1_write_scope_does_not_grant_reading() {
    let stack = Stack::start().await;
    let response = search(&stack, "patient/Observation.write", true).await;
    assert_insufficient_scope(response, "patient/Observation.rs").await;
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn a_type_wildcard_scope_covers_every_type() {
    let stack = Stack::start().await;
    let response = search(&stack, "patient/*.rs", true).await;
    assert_eq!(response.status(), 200);
    let token = stack.token("patient/*.rs", true);
    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 200);
    let token = stack.token("patient/*.read", true);
    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 200, "v1 wildcard");
    assert_eq!(stack.backend.request_count(), 3);
}

#[tokio::test]
async fn letters_from_several_grants_combine() {
    let stack = Stack::start().await;
    let response = search(&stack, "patient/Observation.r patient/Observation.s", true).await;
    assert_eq!(response.status(), 200);
    let response = search(&stack, "patient/Observation.r patient/*.s", true).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_user_scope_is_not_confined_to_the_token_patient() {
    let stack = Stack::start().await;
    // Even with a patient in the launch context, user/ grants are not patient-bound.
    let token = stack.token("user/Patient.r user/Observation.rs", true);
    let response = stack.get("/fhir/Patient/456", Some(&token)).await;
    assert_eq!(response.status(), 200);
    let response = stack
        .get("/fhir/Observation?patient=456", Some(&token))
        .await;
    assert_eq!(response.status(), 200);
    let response = stack
        .get("/fhir/Observation?code=1234-5", Some(&token))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(stack.backend.request_count(), 3);
}

#[tokio::test]
async fn invalid_scope_values_in_a_token_grant_nothing() {
    let stack = Stack::start().await;
    // Out-of-order, upper-case and misspelled forms must never be read as `.rs`.
    for scope in [
        "patient/Observation.sr",
        "patient/Observation.RS",
        "patient/observation.rs",
        "Patient/Observation.rs",
        "patient/Observation.rsx",
        "patient/Observation.rs?",
    ] {
        let response = search(&stack, scope, true).await;
        assert_eq!(response.status(), 403, "{scope}");
    }
    stack.assert_backend_untouched();
}
