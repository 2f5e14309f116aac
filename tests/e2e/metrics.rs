// Metrics and health: request and denial counters, token-cache hits and misses, /readyz and /healthz.

use crate::common::*;
use crate::support::*;

/// Value of a series, 0 when the series does not exist yet.
async fn value(stack: &Stack, name: &str, labels: &[(&str, &str)]) -> f64 {
    stack.gateway.metric(name, labels).await.unwrap_or(0.0)
}

#[tokio::test]
async fn requests_and_denials_are_counted_by_route_decision_and_reason() {
    let stack = Stack::start().await;
    let token = stack.token("patient/Patient.r", true);
    for _ in 0..2 {
        assert_eq!(
            stack.get("/fhir/Patient/123", Some(&token)).await.status(),
            200
        );
    }
    assert_eq!(
        stack.get("/fhir/Patient/123", Some("abc")).await.status(),
        401
    );
    assert_eq!(
        stack.get("/fhir/Patient/456", Some(&token)).await.status(),
        403
    );
    assert_eq!(stack.get("/fhir/Nothing/1", None).await.status(), 403);
    assert_eq!(stack.get("/fhir/metadata", None).await.status(), 200);

    let text = stack.gateway.metrics().await;
    let requests = "fhirwall_requests_total";
    assert_eq!(
        metric_value(
            &text,
            requests,
            &[
                ("route", "patient-read"),
                ("method", "GET"),
                ("decision", "allow"),
                ("status_class", "2xx")
            ]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            requests,
            &[
                ("route", "patient-read"),
                ("method", "GET"),
                ("decision", "deny"),
                ("status_class", "4xx")
            ]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            requests,
            &[
                ("route", "_none"),
                ("decision", "deny"),
                ("status_class", "4xx")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            requests,
            &[("route", "metadata"), ("decision", "allow")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "fhirwall_denials_total",
            &[("reason", "invalid_token")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "fhirwall_denials_total",
            &[("reason", "patient_context")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "fhirwall_denials_total", &[("reason", "no_route")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "fhirwall_request_duration_seconds_count",
            &[("route", "patient-read"), ("decision", "allow")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "fhirwall_upstream_duration_seconds_count",
            &[("route", "patient-read")]
        ),
        Some(2.0),
        "{text}"
    );
    // Labels never carry request data.
    assert!(!text.contains("/fhir/Patient"), "a path became a label");
    assert!(!text.contains(&token), "a token became a label");
}

#[tokio::test]
async fn a_second_request_with_the_same_token_is_a_cache_hit_without_new_verification() {
    let stack = Stack::start().await;
    let hits = "fhirwall_token_cache_hits_total";
    let misses = "fhirwall_token_cache_misses_total";
    let validations = "fhirwall_token_validations_total";
    let ok = [("result", "ok")];

    let (h0, m0, v0) = (
        value(&stack, hits, &[]).await,
        value(&stack, misses, &[]).await,
        value(&stack, validations, &ok).await,
    );
    let token = stack.token("patient/Patient.r", true);
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&token)).await.status(),
        200
    );
    let (h1, m1, v1) = (
        value(&stack, hits, &[]).await,
        value(&stack, misses, &[]).await,
        value(&stack, validations, &ok).await,
    );
    assert_eq!(m1, m0 + 1.0, "a new token is a miss");
    assert_eq!(v1, v0 + 1.0, "a new token is verified");
    assert_eq!(h1, h0, "a new token is not a hit");

    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&token)).await.status(),
        200
    );
    let (h2, m2, v2) = (
        value(&stack, hits, &[]).await,
        value(&stack, misses, &[]).await,
        value(&stack, validations, &ok).await,
    );
    assert_eq!(h2, h1 + 1.0, "the same token again is a hit");
    assert_eq!(m2, m1, "no new miss");
    assert_eq!(v2, v1, "no new verification");

    // A cached token still goes through the policy: another patient is refused.
    assert_eq!(
        stack.get("/fhir/Patient/456", Some(&token)).await.status(),
        403
    );
    assert_eq!(value(&stack, validations, &ok).await, v2);
}

#[tokio::test]
async fn readyz_reports_every_check_and_healthz_answers() {
    let stack = Stack::start().await;
    let (status, body) = stack.gateway.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    let checks = body["checks"].as_array().expect("checks");
    let issuer_check = format!("issuer {}", stack.issuer.issuer_url());
    for name in ["policy", "audit", issuer_check.as_str()] {
        let check = checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("check {name} in {body}"));
        assert_eq!(check["ok"], true, "{check}");
    }
    assert_eq!(stack.gateway.metric("fhirwall_ready", &[]).await, Some(1.0));
    assert_eq!(
        stack
            .gateway
            .metric(
                "fhirwall_jwks_keys",
                &[("issuer", &stack.issuer.issuer_url())]
            )
            .await,
        Some(3.0),
        "the three published fixture keys are loaded"
    );

    let response = stack
        .client
        .get(stack.gateway.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
