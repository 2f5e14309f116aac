// Audit trail: one JSON line per request with the right fields, no token ever, query values redacted.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::support::*;

/// The audit record with this request id (exactly one).
fn record<'a>(lines: &'a [Value], request_id: &str) -> &'a Value {
    let found: Vec<_> = lines
        .iter()
        .filter(|l| l["request_id"] == request_id)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one audit record for {request_id}: {lines:#?}"
    );
    found[0]
}

/// `GET path` with a chosen request id; returns the status and the response's request id.
async fn get_with_id(stack: &Stack, path: &str, token: Option<&str>, id: &str) -> u16 {
    let mut request = stack
        .client
        .get(stack.url(path))
        .header("x-request-id", id)
        .header("user-agent", "fhirwall-e2e/1.0");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(
        header(response.headers(), "x-request-id").as_deref(),
        Some(id),
        "the response carries the request id"
    );
    response.status().as_u16()
}

#[tokio::test]
async fn every_request_gets_exactly_one_audit_line_with_its_decision() {
    let stack = Stack::start_with(|b| {
        b.config_override("{ audit: { allow_query_params: [_count, _format] } }")
    })
    .await;
    let good = stack.token("patient/Observation.rs", true);
    let weak = stack.token("patient/Observation.r", true);
    let mut expired_claims = stack.issuer.claims_for("patient/Observation.rs", PATIENT);
    expired_claims["exp"] = serde_json::json!(unix_now() - 3600);
    let expired_token = stack.issuer.mint(expired_claims, KeyId::Rsa1);

    assert_eq!(
        get_with_id(
            &stack,
            "/fhir/Observation?patient=123&_count=10",
            Some(&good),
            "a-allow"
        )
        .await,
        200
    );
    assert_eq!(
        get_with_id(
            &stack,
            "/fhir/Observation?patient=123",
            Some(&expired_token),
            "a-expired"
        )
        .await,
        401
    );
    assert_eq!(
        get_with_id(&stack, "/fhir/Observation?patient=123", None, "a-missing").await,
        401
    );
    assert_eq!(
        get_with_id(
            &stack,
            "/fhir/Observation?patient=123",
            Some(&weak),
            "a-scope"
        )
        .await,
        403
    );
    assert_eq!(
        get_with_id(
            &stack,
            "/fhir/Observation?patient=456",
            Some(&good),
            "a-patient"
        )
        .await,
        403
    );
    assert_eq!(
        get_with_id(&stack, "/fhir/Unknown/1", Some(&good), "a-noroute").await,
        403
    );
    assert_eq!(
        get_with_id(
            &stack,
            &format!("/fhir/Observation?patient=123&access_token={good}"),
            None,
            "a-query-token"
        )
        .await,
        400
    );
    let unsafe_path = raw_get(
        stack.gateway.addr(),
        b"/fhir/Observation/../Patient/123",
        &[("X-Request-Id", "a-unsafe")],
    )
    .await;
    assert_eq!(unsafe_path.status, 400);

    let lines = stack.gateway.wait_for_audit_lines(8).await;
    // Nothing more arrives: one line per request, not more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines_later = stack.gateway.audit_lines();
    assert_eq!(lines_later.len(), 8, "{lines_later:#?}");
    assert_eq!(lines.len(), 8);

    let allow = record(&lines, "a-allow");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["reason"], "allowed");
    assert_eq!(allow["route"], "observation-search");
    assert_eq!(allow["method"], "GET");
    assert_eq!(allow["path"], "/fhir/Observation");
    assert_eq!(allow["query"], "patient=REDACTED&_count=10");
    assert_eq!(allow["status"], 200);
    assert_eq!(allow["upstream_status"], 200);
    assert_eq!(allow["client_id"], TEST_CLIENT_ID);
    assert_eq!(allow["subject"], TEST_SUBJECT);
    assert_eq!(allow["patient"], PATIENT);
    // The patient the request named (issue 6 "patients touched"), found by `audit query`.
    assert_eq!(allow["patients"], serde_json::json!([PATIENT]));
    assert_eq!(allow["interaction"], "search-type");
    assert_eq!(allow["resource_type"], "Observation");
    assert_eq!(allow["resource_id"], Value::Null);
    assert_eq!(allow["issuer"], stack.issuer.issuer_url());
    assert_eq!(allow["client_addr"], "127.0.0.1");
    assert_eq!(allow["user_agent"], "fhirwall-e2e/1.0");
    assert_eq!(
        allow["granted_scopes"],
        serde_json::json!(["patient/Observation.rs"])
    );
    let required = allow["required_scopes"].as_str().expect("required scopes");
    assert!(
        required.contains("patient/Observation.rs"),
        "required: {required}"
    );
    assert!(allow["latency_ms"].as_f64().expect("latency_ms") >= 0.0);
    assert!(allow["upstream_latency_ms"].as_f64().is_some(), "{allow}");
    assert!(allow["bytes_out"].as_u64().unwrap_or(0) > 0, "{allow}");
    assert!(!allow["policy_version"].as_str().unwrap_or("").is_empty());
    assert!(allow["time"].as_str().unwrap_or("").ends_with('Z'));

    let expired = record(&lines, "a-expired");
    assert_eq!(expired["decision"], "deny");
    assert_eq!(expired["reason"], "invalid_token");
    assert_eq!(expired["route"], "observation-search");
    assert_eq!(expired["status"], 401);
    assert_eq!(expired["upstream_status"], Value::Null);
    assert_eq!(
        expired["subject"],
        Value::Null,
        "an invalid token identifies no one"
    );
    assert!(!expired["detail"].as_str().unwrap_or("").is_empty());

    let missing = record(&lines, "a-missing");
    assert_eq!(missing["decision"], "deny");
    assert_eq!(missing["reason"], "missing_token");
    assert_eq!(missing["status"], 401);

    let scope = record(&lines, "a-scope");
    assert_eq!(scope["decision"], "deny");
    assert_eq!(scope["reason"], "insufficient_scope");
    assert_eq!(scope["route"], "observation-search");
    assert_eq!(scope["status"], 403);
    assert_eq!(scope["upstream_status"], Value::Null);
    assert_eq!(scope["client_id"], TEST_CLIENT_ID);
    assert_eq!(scope["subject"], TEST_SUBJECT);
    assert_eq!(scope["patient"], PATIENT);
    assert_eq!(
        scope["granted_scopes"],
        serde_json::json!(["patient/Observation.r"])
    );
    assert!(scope["required_scopes"]
        .as_str()
        .unwrap_or("")
        .contains("patient/Observation.rs"));

    let patient = record(&lines, "a-patient");
    assert_eq!(patient["reason"], "patient_context");
    assert_eq!(patient["status"], 403);
    assert_eq!(patient["query"], "patient=REDACTED");

    let no_route = record(&lines, "a-noroute");
    assert_eq!(no_route["reason"], "no_route");
    assert_eq!(no_route["route"], Value::Null);
    assert_eq!(no_route["status"], 403);

    let query_token = record(&lines, "a-query-token");
    assert_eq!(query_token["reason"], "invalid_request");
    assert_eq!(query_token["status"], 400);
    assert_eq!(
        query_token["query"],
        "patient=REDACTED&access_token=REDACTED"
    );

    let unsafe_record = record(&lines, "a-unsafe");
    assert_eq!(unsafe_record["reason"], "unsafe_path");
    assert_eq!(unsafe_record["status"], 400);
    assert_eq!(unsafe_record["decision"], "deny");

    // The bearer token, or any part of its signature, never reaches the audit trail.
    let raw = std::fs::read_to_string(stack.gateway.audit_path()).unwrap();
    for token in [&good, &weak, &expired_token] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !raw.contains(token.as_str()),
            "a token is in the audit trail"
        );
        assert!(
            !raw.contains(signature),
            "a token signature is in the audit trail"
        );
    }
}

#[tokio::test]
async fn query_values_are_redacted_by_default_except_for_result_parameters() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Observation.rs", true);
    assert_eq!(
        get_with_id(
            &stack,
            "/fhir/Observation?patient=123&code=http://loinc.org%7C1234-5&_count=10",
            Some(&token),
            "r-1"
        )
        .await,
        200
    );
    let lines = stack.gateway.wait_for_audit_lines(1).await;
    let line = record(&lines, "r-1");
    assert_eq!(line["query"], "patient=REDACTED&code=REDACTED&_count=10");
    let raw = std::fs::read_to_string(stack.gateway.audit_path()).unwrap();
    assert!(!raw.contains("1234-5"), "a search value leaked: {raw}");
}

#[tokio::test]
async fn an_allowed_post_is_audited_with_its_sizes_and_upstream_status() {
    let stack = Stack::start().await;
    stack.backend.set_reply(Reply::Status(201));
    let token = stack.token("user/Observation.c", false);
    let body = vec![b'x'; 12_345];
    let response = stack
        .client
        .post(stack.url("/fhir/Observation"))
        .bearer_auth(&token)
        .header("x-request-id", "post-1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let sent = response.bytes().await.unwrap().len() as u64;

    let lines = stack.gateway.wait_for_audit_lines(1).await;
    let line = record(&lines, "post-1");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["route"], "observation-create");
    assert_eq!(line["interaction"], "create");
    assert_eq!(line["resource_type"], "Observation");
    assert_eq!(line["status"], 201);
    assert_eq!(line["upstream_status"], 201);
    assert_eq!(line["bytes_in"], 12_345);
    assert_eq!(line["bytes_out"], sent);
    assert_eq!(line["patient"], Value::Null, "a user/ token has no patient");
    assert_eq!(
        stack
            .gateway
            .metric("fhirwall_audit_records_total", &[])
            .await,
        Some(1.0)
    );
}

/// HIPAA 164.312(b): when the audit trail cannot be written, requests are refused (503), not
/// served unaudited. The AuditEvent file on `/dev/full` fails every write cycle (ENOSPC).
/// (Strict durability is covered by the SIGKILL tests; with a failing sink its first request
/// waits for the 10 s commit deadline before its 503.)
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_failing_audit_trail_refuses_requests_instead_of_serving_them_unaudited() {
    // batched (default): a record waits at most flush_interval in memory; once a write has
    // failed, every later request is refused until the trail writes again.
    let stack =
        Stack::start_with(|b| b.config_override("{ audit: { auditevent_path: /dev/full } }")).await;
    let token = stack.token("patient/Observation.rs", true);
    let _ = stack
        .get("/fhir/Observation?patient=123", Some(&token))
        .await;
    let mut refused = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = stack
            .get("/fhir/Observation?patient=123", Some(&token))
            .await;
        if response.status() == 503 {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "a failing audit trail must make the gateway refuse requests"
    );
    let served = stack.backend.request_count();
    for _ in 0..5 {
        let response = stack
            .get("/fhir/Observation?patient=123", Some(&token))
            .await;
        assert_eq!(response.status(), 503);
    }
    assert_eq!(
        stack.backend.request_count(),
        served,
        "nothing reaches the backend while the trail is failing"
    );
    let (status, ready) = stack.gateway.readyz().await;
    assert_eq!(status, 503, "{ready}");
}
