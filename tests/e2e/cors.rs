// CORS for browser SMART apps (Fetch Standard "CORS protocol", `cors:` in the config): an
// allowed origin's preflight is answered by the gateway without a token and never forwarded;
// every response to an allowed origin (forwarded or the gateway's own refusal) carries the
// CORS fields; any other origin gets none, and its preflight is refused like any request.

use std::time::Duration;

use crate::common::*;

const APP: &str = "https://app.example.org";

async fn stack() -> Stack {
    Stack::start_with(|b| {
        b.config_override(&format!(
            "{{ cors: {{ allowed_origins: [\"{APP}\"], max_age: 5m }} }}"
        ))
    })
    .await
}

async fn preflight(stack: &Stack, origin: &str) -> reqwest::Response {
    stack
        .client
        .request(reqwest::Method::OPTIONS, stack.url("/fhir/Patient/123"))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("OPTIONS")
}

/// `GET /fhir/Patient/123` from `origin`, with a token or without.
async fn get_from(stack: &Stack, origin: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = stack
        .client
        .get(stack.url("/fhir/Patient/123"))
        .header("origin", origin);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("GET")
}

fn field<'r>(response: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_without_a_token_and_not_forwarded() {
    let stack = stack().await;
    let response = preflight(&stack, APP).await;
    assert_eq!(response.status(), 204);
    assert_eq!(field(&response, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        field(&response, "access-control-allow-methods"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE")
    );
    let headers = field(&response, "access-control-allow-headers").unwrap();
    assert!(
        headers.split(", ").any(|h| h == "Authorization"),
        "the Fetch Standard never lets `*` cover Authorization: {headers}"
    );
    assert_eq!(field(&response, "access-control-max-age"), Some("300"));
    assert_eq!(field(&response, "vary"), Some("Origin"));
    assert!(field(&response, "access-control-allow-credentials").is_none());
    stack.assert_backend_untouched();
    let audit = stack.gateway.wait_for_audit_lines(1).await;
    assert_eq!(audit[0]["method"], "OPTIONS");
    assert_eq!(audit[0]["route"], "cors:preflight");
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["status"], 204);
}

#[tokio::test]
async fn responses_to_an_allowed_origin_carry_the_cors_fields_refusals_included() {
    let stack = stack().await;
    let token = stack.token("patient/Patient.r", true);
    let response = get_from(&stack, APP, Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(field(&response, "access-control-allow-origin"), Some(APP));
    let exposed = field(&response, "access-control-expose-headers").unwrap();
    for h in ["Location", "ETag", "WWW-Authenticate", "X-Request-Id"] {
        assert!(exposed.split(", ").any(|e| e == h), "{h} in {exposed}");
    }

    // A refusal must be readable too, or the app never sees why (RFC 6750 challenge).
    let response = get_from(&stack, APP, None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(field(&response, "access-control-allow-origin"), Some(APP));
    assert!(field(&response, "www-authenticate").is_some());
}

#[tokio::test]
async fn another_origin_gets_no_cors_fields_and_its_preflight_is_refused() {
    let stack = stack().await;
    let response = preflight(&stack, "https://evil.example.org").await;
    assert!(
        response.status().is_client_error(),
        "decided like any request (OPTIONS is no FHIR interaction, and there is no token): {}",
        response.status()
    );
    assert!(field(&response, "access-control-allow-origin").is_none());
    stack.assert_backend_untouched();

    let token = stack.token("patient/Patient.r", true);
    let response = get_from(&stack, "https://evil.example.org", Some(&token)).await;
    assert_eq!(
        response.status(),
        200,
        "CORS is the browser's business, not access control"
    );
    assert!(field(&response, "access-control-allow-origin").is_none());
    assert_eq!(field(&response, "vary"), Some("Origin"));
}

#[tokio::test]
async fn without_cors_configured_a_preflight_is_an_ordinary_unauthenticated_request() {
    let stack = Stack::start().await;
    let response = preflight(&stack, APP).await;
    assert!(response.status().is_client_error(), "{}", response.status());
    assert!(field(&response, "access-control-allow-origin").is_none());
    stack.assert_backend_untouched();
}

#[tokio::test]
async fn preflights_count_against_per_address_quotas() {
    let stack = Stack::start_with(|b| {
        b.policy_yaml(
            "version: 1\nbase_path: /fhir\nfhir:\n  version: R4\nroutes: []\nquotas:\n  - id: per-address\n    key: address\n    rate: 2/1m\n",
        )
        .config_override(&format!("{{ cors: {{ allowed_origins: [\"{APP}\"] }} }}"))
    })
    .await;
    assert_eq!(preflight(&stack, APP).await.status(), 204);
    assert_eq!(preflight(&stack, APP).await.status(), 204);
    let limited = preflight(&stack, APP).await;
    assert_eq!(limited.status(), 429);
    assert!(field(&limited, "retry-after").is_some());
    assert_eq!(
        field(&limited, "access-control-allow-origin"),
        Some(APP),
        "the app can read why it was refused"
    );
    stack.assert_backend_untouched();
}
