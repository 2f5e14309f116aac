// Upstream failures: a stopped backend is a 502, a slow one a 504, both answered quickly with an OperationOutcome.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::*;

/// `GET /fhir/Patient/123` with a valid token; the client gives up after 10 s so a hang
/// fails the test instead of blocking it.
async fn read_patient(stack: &Stack) -> (reqwest::Response, Duration) {
    let token = stack.token("patient/Patient.r", true);
    let started = Instant::now();
    let response = stack
        .client
        .get(stack.url("/fhir/Patient/123"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the gateway answers instead of hanging");
    (response, started.elapsed())
}

#[tokio::test]
async fn a_stopped_backend_is_answered_with_502_quickly() {
    let stack = Stack::start().await;
    // A first request opens a pooled upstream connection that stopping must not leave usable.
    let (response, _) = read_patient(&stack).await;
    assert_eq!(response.status(), 200);
    stack.backend.stop().await;

    let (response, elapsed) = read_patient(&stack).await;
    let refused = refusal(response, 502, "transient").await;
    assert_eq!(refused.challenge, None);
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");

    assert_eq!(
        stack
            .gateway
            .metric("fhirwall_upstream_errors_total", &[("kind", "connect")])
            .await,
        Some(1.0)
    );
    let lines = stack.gateway.wait_for_audit_lines(2).await;
    let failed = lines.last().unwrap();
    assert_eq!(failed["status"], 502, "{failed}");
    assert_eq!(
        failed["decision"], "allow",
        "the policy allowed it: {failed}"
    );

    // Back up, back in service.
    stack.backend.restart().await;
    let (response, _) = read_patient(&stack).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_backend_slower_than_the_read_timeout_is_answered_with_504_quickly() {
    let stack =
        Stack::start_with(|b| b.config_override("{ upstream: { read_timeout: 300ms } }")).await;
    stack
        .backend
        .set_reply(Reply::Delay(Duration::from_secs(8)));

    let (response, elapsed) = read_patient(&stack).await;
    let refused = refusal(response, 504, "timeout").await;
    assert_eq!(refused.challenge, None);
    assert!(
        elapsed >= Duration::from_millis(250),
        "the timeout is the configured one: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert_eq!(
        stack
            .gateway
            .metric("fhirwall_upstream_errors_total", &[("kind", "timeout")])
            .await,
        Some(1.0)
    );

    // A backend within the timeout is served normally by the same gateway.
    stack
        .backend
        .set_reply(Reply::Delay(Duration::from_millis(50)));
    let (response, _) = read_patient(&stack).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_backend_slower_than_the_total_timeout_is_answered_with_504_at_the_budget() {
    // A generous read timeout: only the total budget can cut this request short.
    let stack = Stack::start_with(|b| {
        b.config_override("{ upstream: { read_timeout: 10s, total_timeout: 500ms } }")
    })
    .await;
    stack
        .backend
        .set_reply(Reply::Delay(Duration::from_secs(4)));

    let (response, elapsed) = read_patient(&stack).await;
    refusal(response, 504, "timeout").await;
    assert!(
        elapsed < Duration::from_millis(2000),
        "the 500 ms budget bounds the wait for the response header: took {elapsed:?}"
    );
}

#[tokio::test]
async fn a_backend_that_hangs_up_is_answered_with_502() {
    let stack = Stack::start().await;
    stack.backend.set_reply(Reply::Hangup);
    let (response, elapsed) = read_patient(&stack).await;
    refusal(response, 502, "transient").await;
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[tokio::test]
async fn a_post_the_backend_received_is_never_replayed() {
    let stack = Stack::start().await;
    // A first request leaves a pooled keep-alive connection to the backend, which the POST
    // then reuses.
    let (response, _) = read_patient(&stack).await;
    assert_eq!(response.status(), 200);
    stack
        .backend
        .set_reply_for_path("/fhir/Observation", Reply::Hangup);

    let token = stack.token("user/Observation.c", false);
    let response = stack
        .client
        .post(stack.url("/fhir/Observation"))
        .bearer_auth(token)
        .body(r#"{"resourceType":"Observation"}"#)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("an answer");
    refusal(response, 502, "transient").await;
    let posts = stack
        .backend
        .requests()
        .iter()
        .filter(|r| r.method == http::Method::POST)
        .count();
    assert_eq!(
        posts, 1,
        "a non-idempotent request the backend received must not be sent again (RFC 9110 §9.2.2)"
    );
}
