//! The AuditEvent export (`fhirwall audit export --format auditevent`) validated against the
//! official FHIR R4 JSON schema, through Node.js and `tests/fhir-schema`.
//!
//! Needs `npm ci --prefix tests/fhir-schema` first, hence `#[ignore]`; `.ci/run` runs it
//! with `--ignored`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fhirwall::audit::{AuditRecord, AuditSink};
use fhirwall::config::{AuditConfig, AuditDurability, AuditTarget};
use fhirwall::metrics::Metrics;

const BIN: &str = env!("CARGO_BIN_EXE_fhirwall");

fn base(i: usize, method: &str, path: &str) -> AuditRecord {
    AuditRecord {
        time: format!("2026-03-04T05:06:{i:02}.789Z"),
        request_id: format!("req-{i}"),
        client_addr: Some("192.0.2.10".into()),
        user_agent: Some("app/1.0".into()),
        method: method.into(),
        path: path.into(),
        query: None,
        interaction: None,
        resource_type: None,
        resource_id: None,
        route: Some("r".into()),
        decision: "allow",
        reason: "allowed",
        detail: None,
        required_scopes: Some("any_of: patient/Patient.r".into()),
        granted_scopes: Some(vec!["patient/Patient.r".to_owned()].into()),
        issuer: Some("https://idp.example.org".into()),
        client_id: Some("growth-chart".into()),
        subject: Some("user-1".into()),
        fhir_user: None,
        patient: Some("123".into()),
        patients: vec!["123".into()],
        jti: Some("jti-1".into()),
        status: 200,
        upstream_status: Some(200),
        latency_ms: 3.5,
        upstream_latency_ms: Some(2.0),
        bytes_in: 0,
        bytes_out: 100,
        policy_version: "v1".into(),
        rate_limit: None,
        explanation: Default::default(),
    }
}

/// Requests of every kind the gateway audits.
fn records() -> Vec<AuditRecord> {
    vec![
        base(0, "GET", "/fhir/Patient/123"),
        AuditRecord {
            query: Some("patient=REDACTED&_count=10".into()),
            ..base(1, "GET", "/fhir/Observation")
        },
        AuditRecord {
            patient: None,
            fhir_user: Some("Practitioner/9".into()),
            status: 201,
            ..base(2, "POST", "/fhir/Observation")
        },
        base(3, "PUT", "/fhir/Observation/7"),
        base(4, "DELETE", "/fhir/Observation/7"),
        base(5, "GET", "/fhir/Patient/123/_history/2"),
        base(6, "POST", "/fhir/Patient/123/$everything"),
        AuditRecord {
            decision: "deny",
            reason: "invalid_token",
            detail: Some("the token has expired".into()),
            status: 401,
            upstream_status: None,
            client_id: None,
            subject: None,
            issuer: None,
            patient: None,
            jti: None,
            granted_scopes: None,
            ..base(7, "GET", "/fhir/Patient/5")
        },
        AuditRecord {
            decision: "deny",
            reason: "insufficient_scope",
            status: 403,
            ..base(8, "GET", "/api/legacy/records")
        },
        AuditRecord {
            status: 502,
            upstream_status: None,
            ..base(9, "GET", "/fhir/Patient/123")
        },
        AuditRecord {
            client_id: None,
            subject: None,
            patient: None,
            client_addr: None,
            ..base(10, "GET", "/fhir/metadata")
        },
    ]
}

async fn write_trail(path: &Path) {
    let cfg = AuditConfig {
        target: AuditTarget::File(path.to_owned()),
        queue_capacity: 100,
        flush_interval: Duration::from_millis(10),
        allow_query_params: Vec::new(),
        durability: AuditDurability::Batched,
        rotate_bytes: None,
        rotate_interval: None,
        checkpoint: None,
        auditevent_path: None,
    };
    let (sink, writer) = AuditSink::open(&cfg, Arc::new(Metrics::new())).unwrap();
    let task = tokio::spawn(writer.run());
    for r in records() {
        sink.submit(r).unwrap();
    }
    drop(sink);
    task.await.unwrap();
}

fn validate(ndjson: &Path) -> (bool, String) {
    let out = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fhir-schema/validate.cjs"
        ))
        .arg(ndjson)
        .output()
        .expect("run node (install Node.js and `npm ci --prefix tests/fhir-schema`)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
#[ignore = "needs Node.js and `npm ci --prefix tests/fhir-schema`"]
async fn exported_audit_events_are_valid_fhir_r4() {
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("audit.jsonl");
    write_trail(&trail).await;
    let out = Command::new(BIN)
        .args(["audit", "export", "--format", "auditevent"])
        .arg(&trail)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ndjson = dir.path().join("events.ndjson");
    std::fs::write(&ndjson, &out.stdout).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), records().len());
    let (ok, report) = validate(&ndjson);
    assert!(ok, "{report}");
    assert!(report.contains("11 resources, 0 invalid"), "{report}");

    // The validator does reject what R4 forbids: an unknown element and a bad code type.
    let mut bad: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    bad["outcome"] = serde_json::json!(0);
    bad["gateway"] = serde_json::json!("x");
    std::fs::write(&ndjson, bad.to_string()).unwrap();
    let (ok, report) = validate(&ndjson);
    assert!(!ok, "{report}");
}
