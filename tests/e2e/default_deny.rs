// Default deny: a method and path no route names is refused with 403 and no challenge, token or not.

use crate::common::*;

/// Checks the default-deny answer: 403, `forbidden`, no `WWW-Authenticate`, nothing forwarded.
async fn assert_no_route(stack: &Stack, response: reqwest::Response) {
    let refused = refusal(response, 403, "forbidden").await;
    assert_eq!(
        refused.challenge, None,
        "no credentials can help: no challenge"
    );
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn an_unknown_path_is_refused_with_403_without_a_challenge() {
    let stack = Stack::start().await;
    for path in [
        "/fhir/Unknown/1",
        "/fhir/Condition/1",
        "/fhir/Patient",
        "/fhir/Patient/123/_history",
        "/fhir",
        "/",
        "/other/Patient/123",
        "/Patient/123",
    ] {
        let response = stack.get(path, None).await;
        assert_no_route(&stack, response).await;
    }
}

#[tokio::test]
async fn an_unknown_path_is_refused_with_403_even_with_a_valid_token() {
    let stack = Stack::start().await;
    let token = stack.token("user/*.cruds", false);
    for path in ["/fhir/Condition/1", "/fhir/Unknown/1", "/other/Patient/123"] {
        let response = stack.get(path, Some(&token)).await;
        assert_no_route(&stack, response).await;
    }
}

#[tokio::test]
async fn resource_types_are_case_sensitive() {
    let stack = Stack::start().await;
    let token = stack.token("user/*.cruds", false);
    for path in [
        "/fhir/patient/123",
        "/fhir/PATIENT/123",
        "/FHIR/Patient/123",
    ] {
        let response = stack.get(path, Some(&token)).await;
        assert_no_route(&stack, response).await;
    }
}

#[tokio::test]
async fn a_known_path_with_another_method_is_refused_with_403() {
    let stack = Stack::start().await;
    let token = stack.token("user/*.cruds", false);
    for method in [
        http::Method::DELETE,
        http::Method::PUT,
        http::Method::PATCH,
        http::Method::POST,
    ] {
        let response = stack
            .client
            .request(method.clone(), stack.url("/fhir/Patient/123"))
            .bearer_auth(&token)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{method}");
        assert_no_route(&stack, response).await;
    }
    // A public GET route is not public for other methods.
    let response = stack
        .client
        .post(stack.url("/fhir/metadata"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_no_route(&stack, response).await;
}

#[tokio::test]
async fn a_method_override_header_is_refused_with_400() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        let response = stack
            .client
            .get(stack.url("/fhir/Patient/123"))
            .bearer_auth(&token)
            .header(name, "DELETE")
            .send()
            .await
            .unwrap();
        let refused = refusal(response, 400, "invalid").await;
        assert_eq!(refused.challenge, None, "{name}");
    }
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn a_get_route_also_answers_head_under_the_same_rules() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    let response = stack
        .client
        .head(stack.url("/fhir/Patient/123"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = stack.backend.last_request().expect("forwarded");
    assert_eq!(seen.method, http::Method::HEAD);
    assert_eq!(seen.target, "/fhir/Patient/123");

    // The patient binding applies to HEAD as to GET; the refusal has headers only.
    let response = stack
        .client
        .head(stack.url("/fhir/Patient/456"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().contains_key("www-authenticate"));
    assert!(response.bytes().await.unwrap().is_empty());
    assert_eq!(stack.backend.request_count(), 1);
}
