// Patient binding: a patient/ grant only reaches the token's own patient, by path segment or by the `patient` search parameter.

use crate::common::*;

/// Checks a 403 for a patient-context violation: `insufficient_scope` without a `scope`
/// attribute (no scope would help), nothing forwarded.
async fn assert_outside_compartment(stack: &Stack, path: &str, token: &str) {
    let response = stack.get(path, Some(token)).await;
    let refused = refusal(response, 403, "forbidden").await;
    assert_challenge(refused.challenge.as_deref(), "insufficient_scope", None);
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn a_patient_token_reads_its_own_patient() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let response = stack.get("/fhir/Patient/123", Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        stack.backend.last_request().unwrap().path,
        "/fhir/Patient/123"
    );
}

#[tokio::test]
async fn a_patient_token_cannot_read_another_patient() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    assert_outside_compartment(&stack, "/fhir/Patient/456", &token).await;
    // An id that merely starts with the context patient's id is another patient.
    assert_outside_compartment(&stack, "/fhir/Patient/1234", &token).await;
    assert_outside_compartment(&stack, "/fhir/Patient/12", &token).await;
}

#[tokio::test]
async fn a_patient_token_searches_with_its_own_patient_parameter() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Observation.rs", true);
    for query in [
        "patient=123",
        "patient=Patient/123",
        "patient=123&_count=10",
        "code=1234-5&patient=123",
    ] {
        let response = stack
            .get(&format!("/fhir/Observation?{query}"), Some(&token))
            .await;
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(
            stack.backend.last_request().unwrap().query.as_deref(),
            Some(query),
            "forwarded as sent"
        );
    }
}

#[tokio::test]
async fn a_patient_token_cannot_search_another_patient() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Observation.rs", true);
    for query in [
        "patient=456",
        "patient=Patient/456",
        "patient=1234",
        "patient=Group/123",
    ] {
        assert_outside_compartment(&stack, &format!("/fhir/Observation?{query}"), &token).await;
    }
}

#[tokio::test]
async fn a_patient_search_with_several_patient_values_is_refused() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Observation.rs", true);
    for query in [
        "patient=123,456",
        "patient=456,123",
        "patient=123%2C456",
        "patient=123&patient=456",
        "patient=123&patient=123",
    ] {
        assert_outside_compartment(&stack, &format!("/fhir/Observation?{query}"), &token).await;
    }
}

#[tokio::test]
async fn a_patient_search_without_the_patient_parameter_is_refused() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Observation.rs", true);
    for path in [
        "/fhir/Observation",
        "/fhir/Observation?code=1234-5",
        "/fhir/Observation?patient=",
        "/fhir/Observation?subject=Patient/123",
    ] {
        assert_outside_compartment(&stack, path, &token).await;
    }
}

#[tokio::test]
async fn a_patient_parameter_hidden_by_encoding_or_separators_is_refused() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Observation.rs", true);
    for query in [
        // Decodes to a second `patient` for the backend.
        "patient=123&pati%65nt=456",
        "pati%65nt=456&patient=123",
        // Decodes to `patient` for a backend that decodes twice.
        "patient=123&pati%2565nt=456",
        // Some servers split parameters on `;` too.
        "patient=123;patient=456",
        "patient=123&_count=1;patient=456",
    ] {
        assert_outside_compartment(&stack, &format!("/fhir/Observation?{query}"), &token).await;
    }
    // Percent-encoding of the value itself is read as the backend reads it.
    let response = stack
        .get("/fhir/Observation?patient=Patient%2F123", Some(&token))
        .await;
    assert_eq!(response.status(), 200);
}
