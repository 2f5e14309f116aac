// `fhirwall check`: exit status and `file:line:col:` diagnostics for good and broken configurations and policies.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::support::*;

/// A builder for a gateway config that needs no running server (check never connects).
fn builder() -> GatewayBuilder {
    Gateway::builder()
        .upstream("http://127.0.0.1:9")
        .issuer_url("http://127.0.0.1:9", &[TEST_AUDIENCE])
}

/// Writes `config.yaml` (+ `policy.yaml` when inline) into `dir` and returns its path.
fn write(dir: &Path, builder: &GatewayBuilder) -> PathBuf {
    {
        let [listen, admin] = free_ports();
        builder.write_config(dir, listen, admin)
    }
}

/// Runs `fhirwall check --config PATH` from `dir`.
fn check(dir: &Path, config: &Path) -> (i32, String, String) {
    run_cli_in(dir, &["check", "--config", config.to_str().unwrap()])
}

/// The 1-based line and column of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, line)| line.find(needle).map(|col| (i + 1, col + 1)))
        .unwrap_or_else(|| panic!("{needle:?} not in {text}"))
}

#[test]
fn a_good_configuration_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), &builder().policy_yaml(POLICY));
    let (code, stdout, stderr) = check(dir.path(), &config);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(!stdout.contains("error"), "{stdout}");
}

#[test]
fn a_malformed_scope_is_reported_at_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let policy = POLICY.replace(
        "any_of: [patient/Observation.rs, user/Observation.rs]",
        "any_of: [patient/Observation.rs, user/Observation.sr]",
    );
    assert_ne!(policy, POLICY);
    let (line, col) = position(&policy, "user/Observation.sr");
    let config = write(dir.path(), &builder().policy_yaml(policy));
    let (code, stdout, stderr) = check(dir.path(), &config);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    let expected = format!("policy.yaml:{line}:{col}:");
    let reported: Vec<_> = stdout.lines().filter(|l| l.contains(&expected)).collect();
    assert_eq!(
        reported.len(),
        1,
        "expected one `{expected}` line in:\n{stdout}"
    );
    assert!(reported[0].contains("error"), "{}", reported[0]);
    assert!(
        reported[0].contains("user/Observation.sr"),
        "the message names the scope: {}",
        reported[0]
    );
}

#[test]
fn an_unknown_configuration_key_is_reported_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let builder = builder().policy_yaml(POLICY);
    let config = write(dir.path(), &builder);
    let text = std::fs::read_to_string(&config).unwrap();
    let broken = format!("{text}upstream_timeout: 5s\n");
    let line = broken.lines().count();
    std::fs::write(&config, &broken).unwrap();
    let (code, stdout, stderr) = check(dir.path(), &config);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    let expected = format!("config.yaml:{line}:1:");
    let reported: Vec<_> = stdout.lines().filter(|l| l.contains(&expected)).collect();
    assert_eq!(
        reported.len(),
        1,
        "expected one `{expected}` line in:\n{stdout}"
    );
    assert!(reported[0].contains("upstream_timeout"), "{}", reported[0]);
}

#[test]
fn every_error_of_a_policy_is_reported_not_just_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let policy = POLICY
        .replace(
            "patient/Patient.r, user/Patient.r",
            "patient/Patient.x, user/Patient.r",
        )
        .replace("methods: [POST]", "methods: [FETCH]")
        .replace(
            "user/Observation.rs, user/Patient.rs",
            "user/Observation.rs, user/Nonsense.rs",
        );
    let needles = ["patient/Patient.x", "FETCH", "user/Nonsense.rs"];
    let config = write(dir.path(), &builder().policy_yaml(&policy));
    let (code, stdout, stderr) = check(dir.path(), &config);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    for needle in needles {
        let (line, col) = position(&policy, needle);
        let expected = format!("policy.yaml:{line}:{col}:");
        assert!(
            stdout.contains(&expected),
            "{needle}: expected `{expected}` in:\n{stdout}"
        );
    }
    assert!(stdout.contains("3 error(s)"), "{stdout}");
}

#[test]
fn every_unknown_key_of_a_configuration_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let builder = builder()
        .policy_yaml(POLICY)
        .config_override("{ upstream: { read_timout: 1s }, audit: { flush_intervall: 1s } }");
    let config = write(dir.path(), &builder);
    let text = std::fs::read_to_string(&config).unwrap();
    let (code, stdout, stderr) = check(dir.path(), &config);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    for key in ["read_timout", "flush_intervall"] {
        let (line, _) = position(&text, key);
        let expected = format!("config.yaml:{line}:");
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&expected) && l.contains(key)),
            "{key}: expected a `{expected}` line naming it in:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn serve_refuses_an_invalid_configuration_with_exit_code_64() {
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let failure = match Gateway::builder()
        .backend(&backend)
        .issuer(&issuer)
        .policy_yaml(POLICY.replace("patient/Patient.r,", "patient/Patient.x,"))
        .spawn()
        .await
    {
        Ok(gateway) => panic!("started with an invalid policy: {}", gateway.stderr()),
        Err(failure) => failure,
    };
    assert_eq!(failure.status.and_then(|s| s.code()), Some(64), "{failure}");
    assert!(failure.stderr.contains("policy.yaml:"), "{failure}");
}
