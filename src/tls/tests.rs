//! Certificate loading and reload, on files minted with rcgen in a temp folder.

use super::test_support::{write, TestCa};
use super::*;

fn metrics() -> (Registry, TlsMetrics) {
    let registry = Registry::new();
    let m = TlsMetrics::register(&registry).unwrap();
    (registry, m)
}

fn reloads(m: &TlsMetrics, result: &str) -> u64 {
    m.reloads.with_label_values(&[result]).get()
}

#[test]
fn a_certificate_and_its_key_load_with_their_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let files = TestCa::new("ca").leaf("a", false).write(dir.path(), "a");
    let id = Identity::load(&files).unwrap();
    assert_eq!(id.chain.len(), 1);
    assert!(id.not_after > time::OffsetDateTime::now_utc().unix_timestamp());
    assert!(id.key_der_for_pingora(&files).is_ok());
}

#[test]
fn a_key_that_belongs_to_another_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    let a = ca.leaf("a", false).write(dir.path(), "a");
    let b = ca.leaf("b", false).write(dir.path(), "b");
    let crossed = IdentityFiles {
        certificate: a.certificate,
        key: b.key,
    };
    let e = Identity::load(&crossed).err().unwrap();
    assert!(matches!(e, TlsFileError::KeyMismatch { .. }), "{e}");
    assert!(e
        .to_string()
        .contains("does not belong to the first certificate"));
}

#[test]
fn an_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let files = TestCa::new("ca").leaf("old", true).write(dir.path(), "old");
    let e = Identity::load(&files).err().unwrap();
    assert!(matches!(e, TlsFileError::Expired { .. }), "{e}");
    assert!(
        e.to_string().contains("expired at 2021-01-01T00:00:00Z"),
        "{e}"
    );
}

#[test]
fn files_without_a_certificate_or_key_or_with_broken_pem_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    let leaf = ca.leaf("a", false);
    let empty = write(dir.path(), "empty.pem", "nothing here\n");
    assert!(matches!(
        load_certificates(&empty),
        Err(TlsFileError::NoCertificate { .. })
    ));
    // A certificate file is not a key file.
    let cert_only = write(dir.path(), "cert.pem", &leaf.cert_pem);
    assert!(matches!(
        load_private_key(&cert_only),
        Err(TlsFileError::NoKey { .. })
    ));
    let broken = write(
        dir.path(),
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    assert!(matches!(
        load_certificates(&broken),
        Err(TlsFileError::BadPem { .. })
    ));
    let not_x509 = write(
        dir.path(),
        "junk.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let e = load_certificates(&not_x509).err().unwrap();
    assert!(
        matches!(e, TlsFileError::BadCertificate { index: 1, .. }),
        "{e}"
    );
    let missing = dir.path().join("missing.pem");
    let e = load_roots(&missing).err().unwrap();
    assert!(e.to_string().starts_with("cannot read `"), "{e}");
}

#[test]
fn a_ca_bundle_makes_a_client_verifier_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &TestCa::new("clients").pem());
    assert!(client_verifier(&ca, ClientCertMode::Required).is_ok());
    let optional = client_verifier(&ca, ClientCertMode::Optional).unwrap();
    assert!(!optional.client_auth_mandatory());
    let required = client_verifier(&ca, ClientCertMode::Required).unwrap();
    assert!(required.client_auth_mandatory());
}

#[test]
fn a_changed_certificate_is_served_and_a_bad_change_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    let files = ca.leaf("first", false).write(dir.path(), "server");
    let (_registry, m) = metrics();
    let cert = ServerCertificate::load(&files, "127.0.0.1:8443", Some(m.clone())).unwrap();
    let first = cert.current();
    assert!(matches!(cert.check_for_change(), ReloadOutcome::Unchanged));

    ca.leaf("second", false).write(dir.path(), "server");
    assert!(matches!(
        cert.check_for_change(),
        ReloadOutcome::Reloaded { .. }
    ));
    let second = cert.current();
    assert_ne!(first.cert, second.cert);
    assert_eq!(reloads(&m, "success"), 1);
    let gauge = m.expiry.with_label_values(&["127.0.0.1:8443"]).get();
    assert!(gauge > 0.0);

    // Only the certificate replaced: the key no longer matches; refused once, not at every
    // look.
    write(dir.path(), "server.crt", &ca.leaf("third", false).cert_pem);
    assert!(matches!(
        cert.check_for_change(),
        ReloadOutcome::Refused(TlsFileError::KeyMismatch { .. })
    ));
    assert!(matches!(cert.check_for_change(), ReloadOutcome::Unchanged));
    assert_eq!(cert.current().cert, second.cert);
    assert_eq!(reloads(&m, "failure"), 1);

    // A vanished key file is refused the same way.
    std::fs::remove_file(dir.path().join("server.key")).unwrap();
    assert!(matches!(
        cert.check_for_change(),
        ReloadOutcome::Refused(TlsFileError::Read { .. })
    ));
    assert!(matches!(cert.check_for_change(), ReloadOutcome::Unchanged));
    assert_eq!(cert.current().cert, second.cert);
    assert_eq!(reloads(&m, "failure"), 2);
}

#[test]
fn the_reload_counter_starts_at_zero_for_both_results() {
    let (registry, _m) = metrics();
    let text = {
        use prometheus::Encoder as _;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    };
    assert!(text.contains(r#"fhirwall_tls_certificate_reloads_total{result="success"} 0"#));
    assert!(text.contains(r#"fhirwall_tls_certificate_reloads_total{result="failure"} 0"#));
}
