// `fhirwall explain`: the decision about one request, its reasons and the checks left to the
// proxy, printed from the shipped FHIR policy; exit 0 allowed, 1 denied, 64 usage errors.

use std::path::PathBuf;

use crate::support::*;

fn shipped_policy() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("policies/fhir-r4.yaml")
        .to_string_lossy()
        .into_owned()
}

fn explain(args: &[&str]) -> (i32, String, String) {
    let policy = shipped_policy();
    let mut all = vec!["explain", "--config", policy.as_str()];
    all.extend_from_slice(args);
    run_cli(&all)
}

#[test]
fn an_allowed_confined_search_exits_0_with_its_grant_and_checks() {
    let (code, out, err) = explain(&[
        "--scopes",
        "launch/patient patient/Observation.rs patient/Patient.rs",
        "--patient",
        "123",
        "GET",
        "/fhir/Observation?patient=123&_include=Observation:subject:Patient",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("decided by: FHIR engine"), "{out}");
    assert!(
        out.contains("decision: ALLOW (route fhir:search-type)"),
        "{out}"
    );
    assert!(
        out.contains("granted by: patient/Observation.rs patient/Patient.rs"),
        "{out}"
    );
    assert!(
        out.contains("the response body is held and checked"),
        "{out}"
    );
}

#[test]
fn a_denied_request_exits_1_naming_what_is_missing_and_the_rule() {
    let (code, out, _) = explain(&[
        "--scopes",
        "patient/Observation.rs",
        "--patient",
        "123",
        "GET",
        "/fhir/Observation?code=1",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("decision: DENY (patient_context"), "{out}");
    assert!(out.contains("SMART-SEMANTICS"), "{out}");
    let (code, out, _) = explain(&["--scopes", "user/Patient.r", "GET", "/fhir/Observation/abc"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("needed: user/Observation.r"), "{out}");
}

#[test]
fn a_batch_body_is_explained_entry_by_entry() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("bundle.json");
    std::fs::write(
        &body,
        r#"{"resourceType":"Bundle","type":"batch","entry":[
            {"request":{"method":"GET","url":"Patient/123"}},
            {"request":{"method":"GET","url":"Patient/456"}}]}"#,
    )
    .unwrap();
    let (code, out, err) = explain(&[
        "--scopes",
        "patient/Patient.r",
        "--patient",
        "123",
        "--body",
        body.to_str().unwrap(),
        "POST",
        "/fhir",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("batch entry 0: forwarded"), "{out}");
    assert!(
        out.contains("batch entry 1: answered here (patient_context)"),
        "{out}"
    );
    // Without the body the engine cannot decide.
    let (code, out, _) = explain(&["--scopes", "patient/Patient.r", "POST", "/fhir"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("needs the request body"), "{out}");
}

#[test]
fn public_discovery_needs_no_token_and_bad_usage_exits_64() {
    let (code, out, _) = explain(&["GET", "/fhir/metadata"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("public: no token needed"), "{out}");
    let (code, _, err) = run_cli(&["explain", "--config", "/nonexistent.yaml", "GET", "/fhir"]);
    assert_eq!(code, 64, "{err}");
}
