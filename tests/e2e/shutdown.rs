// Graceful shutdown: SIGTERM lets an in-flight request finish, and it is audited.

use std::time::Duration;

use crate::common::*;
use crate::support::*;

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_and_audits_it() {
    let stack = Stack::start().await;
    stack
        .backend
        .set_reply(Reply::Delay(Duration::from_millis(800)));
    let token = stack.token("patient/Patient.r", true);
    let in_flight = tokio::spawn(
        stack
            .client
            .get(stack.url("/fhir/Patient/123"))
            .bearer_auth(token)
            .header("x-request-id", "in-flight-1")
            .timeout(Duration::from_secs(10))
            .send(),
    );
    // The request is at the backend when the signal arrives.
    stack.backend.wait_for_requests(1).await;
    stack.gateway.terminate();

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(response.headers(), "x-request-id").as_deref(),
        Some("in-flight-1")
    );
    let lines = stack.gateway.wait_for_audit_lines(1).await;
    let line = lines
        .iter()
        .find(|l| l["request_id"] == "in-flight-1")
        .unwrap_or_else(|| panic!("the drained request is audited: {lines:#?}"));
    assert_eq!(line["status"], 200);
    assert_eq!(line["decision"], "allow");
}
