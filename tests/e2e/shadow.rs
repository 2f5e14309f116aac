// Shadow policy: a candidate decided beside the active policy on live traffic; differences
// are counted and logged (without PHI), responses never change.

use std::time::Duration;

use crate::common::*;
use crate::support::*;

/// The candidate: Encounter reads added, metadata behind a scope, Patient reads for users
/// only.
const CANDIDATE: &str = r#"version: 1
base_path: /fhir
routes:
  - id: metadata-v2
    methods: [GET]
    path: /metadata
    scopes: { any_of: [system/CapabilityStatement.r] }
  - id: patient-read
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [user/Patient.r] }
    patient: { segment: id }
  - id: encounter-read
    methods: [GET]
    path: /Encounter/{id}
    scopes: { any_of: [user/Encounter.r] }
"#;

/// A stack whose configuration names [`CANDIDATE`] as the shadow policy (by absolute path:
/// the gateway's own folder only exists once it starts). Keep the folder alive.
async fn start_with_candidate() -> (Stack, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("candidate.yaml");
    std::fs::write(&path, CANDIDATE).expect("write candidate");
    let stack = Stack::start_with(|b| {
        b.config_override(&format!(
            "{{ shadow_policy: {}, reload: {{ watch: false }} }}",
            serde_json::to_string(&path.display().to_string()).expect("json")
        ))
    })
    .await;
    (stack, dir)
}

#[tokio::test]
async fn differences_are_counted_and_logged_while_responses_stay_unchanged() {
    let (stack, _candidate) = start_with_candidate().await;
    let token = stack.token("user/Encounter.r", false);

    // Active: no route (403), so the token was never verified. Shadow: a route that needs
    // it, `unverified` (no second verification). The client gets the active answer.
    let response = stack
        .client
        .get(stack.url("/fhir/Encounter/e-4711?patient=p-99"))
        .bearer_auth(&token)
        .header("x-request-id", "shadow-diff-1")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("response");
    refusal(response, 403, "forbidden").await;
    stack.assert_backend_untouched();

    // Active: public metadata (200). Shadow: a token is needed.
    assert_eq!(stack.get("/fhir/metadata", None).await.status(), 200);

    // Same decision under both: evaluated, no difference.
    let user = stack.token("user/Patient.r", false);
    assert_eq!(
        stack.get("/fhir/Patient/123", Some(&user)).await.status(),
        200
    );

    // Active: allowed, and forwarded. Shadow, with the principal the active path verified:
    // insufficient scope.
    let patient = stack.token("patient/Patient.r", true);
    assert_eq!(
        stack
            .get("/fhir/Patient/123", Some(&patient))
            .await
            .status(),
        200
    );
    assert_eq!(
        stack.backend.requests().len(),
        3,
        "metadata and both reads went upstream: the shadow never blocks"
    );

    let metrics = stack.gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "fhirwall_shadow_decisions_total",
            &[
                ("active", "no_route"),
                ("shadow", "unverified"),
                ("rule", "encounter-read")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "fhirwall_shadow_decisions_total",
            &[
                ("active", "allow"),
                ("shadow", "missing_token"),
                ("rule", "metadata-v2")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "fhirwall_shadow_decisions_total",
            &[
                ("active", "allow"),
                ("shadow", "insufficient_scope"),
                ("rule", "patient-read")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "fhirwall_shadow_evaluations_total", &[]),
        Some(4.0)
    );
    let differences = metrics
        .lines()
        .filter(|l| l.starts_with("fhirwall_shadow_decisions_total{"))
        .count();
    assert_eq!(differences, 3, "only the differing requests: {metrics}");
    assert!(
        metrics.contains("fhirwall_shadow_policy_info{"),
        "{metrics}"
    );

    // The log line names the request, the routes and the reasons, never the ids or query.
    let stderr = stack.gateway.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("shadow policy decided differently") && l.contains("shadow-diff-1"))
        .unwrap_or_else(|| panic!("the difference is logged:\n{stderr}"));
    assert!(
        line.contains("encounter-read") && line.contains("no_route"),
        "{line}"
    );
    assert!(
        !stderr.contains("e-4711") && !stderr.contains("p-99"),
        "no PHI in logs:\n{stderr}"
    );
    assert!(
        !stderr.contains(&token) && !stderr.contains(&patient),
        "no token in logs"
    );

    // The audit record is the active decision's.
    let lines = stack.gateway.wait_for_audit_lines(4).await;
    let record = lines
        .iter()
        .find(|l| l["request_id"] == "shadow-diff-1")
        .expect("audited");
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "no_route");
}

#[tokio::test]
async fn the_shadow_policy_is_reloaded_with_the_rest() {
    let (stack, _candidate) = start_with_candidate().await;
    let before = stack.gateway.metrics().await;
    let version = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("fhirwall_shadow_policy_info{"))
            .map(str::to_owned)
    };
    assert!(version(&before).is_some());
    // Name a new candidate (equal to the active policy, relative to the configuration's
    // folder) and reload.
    let config = stack.gateway.config().to_owned();
    std::fs::write(stack.gateway.dir().join("same.yaml"), POLICY).expect("write");
    let config: String = config
        .lines()
        .map(|l| {
            if l.starts_with("shadow_policy:") {
                "shadow_policy: same.yaml".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(stack.gateway.config_path(), config).expect("write config");
    stack.gateway.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stack
        .gateway
        .metric("fhirwall_reloads_total", &[("result", "success")])
        .await
        != Some(1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload: {}",
            stack.gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = stack.gateway.metrics().await;
    assert_ne!(version(&before), version(&after));
    assert_eq!(
        after
            .lines()
            .filter(|l| l.starts_with("fhirwall_shadow_policy_info{"))
            .count(),
        1
    );
    // Identical policies never disagree.
    let token = stack.token("user/Encounter.r", false);
    assert_eq!(
        stack.get("/fhir/Encounter/1", Some(&token)).await.status(),
        403
    );
    let metrics = stack.gateway.metrics().await;
    assert!(
        !metrics.contains("fhirwall_shadow_decisions_total{"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_broken_shadow_policy_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("shadow.yaml"), "version: 1\nroutes: 7\n").expect("write");
    let [a, b] = free_ports();
    let config = Gateway::builder()
        .upstream("http://127.0.0.1:9")
        .issuer_url("http://127.0.0.1:9", &["aud"])
        .config_override("{ shadow_policy: shadow.yaml }")
        .write_config(dir.path(), a, b);
    let (code, out, _) = run_cli(&["check", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("shadow.yaml:2:"), "{out}");
}
