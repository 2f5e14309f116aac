//! Configuration of transport security: listener TLS, client certificates, upstream TLS, and
//! the explicit-plaintext rule. Certificates are minted with rcgen in the fixture folder.

use std::fs;

use super::*;
use crate::config::Severity;
use crate::tls::test_support::{write, TestCa};

/// A config folder with the shipped FHIR policy, a CA and a valid `server.crt`/`server.key`.
struct Fixture {
    dir: tempfile::TempDir,
    ca: TestCa,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        fs::copy(
            repo.join("policies/fhir-r4.yaml"),
            dir.path().join("policy.yaml"),
        )
        .unwrap();
        let ca = TestCa::new("test CA");
        ca.leaf("server", false).write(dir.path(), "server");
        write(dir.path(), "ca.pem", &ca.pem());
        Fixture { dir, ca }
    }

    fn load(&self, src: &str) -> Result<(Config, Diagnostics), Diagnostics> {
        let path = self.dir.path().join("fhirwall.yaml");
        fs::write(&path, src).unwrap();
        load_with_warnings(&path)
    }

    /// `line:col key | message` of every configuration diagnostic of `severity`.
    fn diagnostics(d: &Diagnostics, severity: Severity) -> Vec<String> {
        d.0.iter()
            .filter(|d| d.severity == severity && d.file.ends_with("fhirwall.yaml"))
            .map(|d| format!("{}:{} {} | {}", d.line, d.col, d.key, d.message))
            .collect()
    }

    fn errors(&self, src: &str) -> Vec<String> {
        let d = self.load(src).map(|_| ()).expect_err("should not load");
        Fixture::diagnostics(&d, Severity::Error)
    }

    fn warnings(&self, src: &str) -> Vec<String> {
        let (_, w) = self.load(src).unwrap_or_else(|d| panic!("{d}"));
        Fixture::diagnostics(&w, Severity::Warning)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A config whose `listen:` value is `listen` (indented by the caller) and upstream `upstream`.
fn config(listen: &str, upstream: &str) -> String {
    format!(
        "listen: {listen}
admin_listen: 127.0.0.1:9090
policy: policy.yaml
upstream: {upstream}
issuers:
  - issuer: https://idp.example.org
    audiences: [fhir]
"
    )
}

const PLAIN_UPSTREAM: &str = "{ url: http://127.0.0.1:8081 }";

#[test]
fn a_tls_listener_loads_with_its_defaults_and_plain_loopback_stays_allowed() {
    let f = Fixture::new();
    let listen = "
  - address: 0.0.0.0:8443
    tls: { certificate: server.crt, key: server.key, client_ca: ca.pem }
  - 127.0.0.1:8080
  - { address: '[::1]:8081' }";
    let (c, warnings) = f
        .load(&config(listen, PLAIN_UPSTREAM))
        .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.listen.len(), 3);
    assert_eq!(c.listen[0], "0.0.0.0:8443".parse().unwrap());
    let tls = c.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.identity.certificate, f.dir.path().join("server.crt"));
    assert_eq!(tls.identity.key, f.dir.path().join("server.key"));
    assert_eq!(tls.reload_interval, Duration::from_secs(5));
    assert_eq!(
        tls.client_certs,
        Some(ClientCertConfig {
            ca: f.dir.path().join("ca.pem"),
            // A CA without a mode: certificates are required (fail closed).
            mode: ClientCertMode::Required,
        })
    );
    assert!(c.listeners[1].tls.is_none());
    assert!(c.listeners[2].tls.is_none());
    assert!(Fixture::diagnostics(&warnings, Severity::Warning).is_empty());
}

#[test]
fn a_plain_listener_off_loopback_needs_an_explicit_plaintext_key() {
    let f = Fixture::new();
    assert_eq!(
        f.errors(&config("0.0.0.0:8080", PLAIN_UPSTREAM)),
        ["1:9 listen | `0.0.0.0:8080` is not a loopback address and has no `tls`: clients would send tokens and PHI in plain HTTP; add `tls` (certificate and key), or, behind a TLS-terminating proxy on a trusted network, write `{ address: \"0.0.0.0:8080\", plaintext: true }`"]
    );
    let e = f.errors(&config(
        "[{ address: '10.0.0.5:8080', plaintext: false }]",
        PLAIN_UPSTREAM,
    ));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("1:21 listen[0].address | `10.0.0.5:8080` is not a loopback address"),
        "{e:?}"
    );
    assert_eq!(
        f.warnings(&config("[{ address: '10.0.0.5:8080', plaintext: true }]", PLAIN_UPSTREAM)),
        ["1:49 listen[0].plaintext | `10.0.0.5:8080` serves clients in plain HTTP: only behind a TLS-terminating proxy on a trusted network"]
    );
}

#[test]
fn listener_tls_mistakes_are_named_at_their_key() {
    let f = Fixture::new();
    let other = f.ca.leaf("other", false);
    other.write(f.dir.path(), "other");
    write(
        f.dir.path(),
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    );
    let src = config(
        "
  - address: 0.0.0.0:8443
    tls: { certificate: missing.crt, key: server.key }
  - address: 0.0.0.0:8444
    tls: { certificate: server.crt, key: other.key }
  - address: 0.0.0.0:8445
    tls: { certificate: garbage.pem, key: server.crt }
  - address: 0.0.0.0:8446
    tls: { certificate: server.crt, key: server.key, client_auth: optional }
  - address: 0.0.0.0:8447
    tls: { certificate: server.crt, key: server.key, client_ca: ca.pem, client_auth: maybe }
  - address: 0.0.0.0:8448
    plaintext: true
    tls: { certificate: server.crt, key: server.key, reload_interval: 0s }
  - address: 0.0.0.0:8449
    tls: { key: server.key, client_ca: server.key }",
        PLAIN_UPSTREAM,
    );
    let missing = f.path("missing.crt");
    let other_key = f.path("other.key");
    let server_crt = f.path("server.crt");
    let garbage = f.path("garbage.pem");
    let server_key = f.path("server.key");
    let e = f.errors(&src);
    let expected = [
        format!("3:25 listen[0].tls.certificate | cannot read `{missing}`: No such file or directory (os error 2)"),
        format!("5:42 listen[1].tls.key | the private key in `{other_key}` does not belong to the first certificate in `{server_crt}`"),
        format!("7:25 listen[2].tls.certificate | `{garbage}` is not valid PEM: base64 decode error: InvalidCharacter(33)"),
        format!("7:43 listen[2].tls.key | `{server_crt}` holds no PEM private key (PKCS#8 `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)"),
        "9:67 listen[3].tls.client_auth | `client_auth` needs `client_ca` (the CAs that issue client certificates)".to_owned(),
        "11:86 listen[4].tls.client_auth | unknown client_auth `maybe`; expected `required` or `optional`".to_owned(),
        "13:16 listen[5].plaintext | `plaintext: true` contradicts `tls`; keep one".to_owned(),
        "14:71 listen[5].tls.reload_interval | `reload_interval` must be greater than zero".to_owned(),
        "16:12 listen[6].tls.certificate | missing required key `certificate`".to_owned(),
        format!("16:40 listen[6].tls.client_ca | `{server_key}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"),
    ];
    assert_eq!(e, expected);
}

#[test]
fn upstream_tls_files_load_and_are_checked() {
    let f = Fixture::new();
    f.ca.leaf("gateway client", false)
        .write(f.dir.path(), "client");
    let upstream = "
  url: https://fhir.internal:8443
  ca: ca.pem
  client_certificate: client.crt
  client_key: client.key";
    let (c, w) = f
        .load(&config("127.0.0.1:8080", upstream))
        .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.upstream.ca, Some(f.dir.path().join("ca.pem")));
    assert_eq!(
        c.upstream.client_identity,
        Some(IdentityFiles {
            certificate: f.dir.path().join("client.crt"),
            key: f.dir.path().join("client.key"),
        })
    );
    assert!(c.upstream.verify_tls);
    assert!(Fixture::diagnostics(&w, Severity::Warning).is_empty());

    let bad = "
  url: http://fhir.internal:8080
  ca: ca.pem
  client_certificate: client.crt";
    assert_eq!(
        f.errors(&config("127.0.0.1:8080", bad)),
        [
            "6:7 upstream.ca | `ca` is only used with an `https://` upstream URL",
            "7:23 upstream.client_certificate | `client_certificate` needs `client_key` (mTLS to the upstream)",
            "7:23 upstream.client_certificate | `client_certificate` is only used with an `https://` upstream URL",
        ]
    );
    let server_key = f.path("server.key");
    let bad_ca = "{ url: 'https://fhir.internal', ca: server.key }";
    assert_eq!(
        f.errors(&config("127.0.0.1:8080", bad_ca)),
        [format!("4:47 upstream.ca | `{server_key}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)")]
    );
}

#[test]
fn a_plain_http_upstream_on_another_host_is_a_warning() {
    let f = Fixture::new();
    assert_eq!(
        f.warnings(&config("127.0.0.1:8080", "{ url: 'http://fhir.internal:8080' }")),
        ["4:18 upstream.url | plain http to another host: requests, PHI and any forwarded credentials cross the network unencrypted; use `https://`"]
    );
    assert!(f
        .warnings(&config("127.0.0.1:8080", PLAIN_UPSTREAM))
        .is_empty());
}

#[test]
fn a_certificate_close_to_expiry_is_a_warning_and_an_expired_one_an_error() {
    let f = Fixture::new();
    let soon = time::OffsetDateTime::now_utc() + time::Duration::hours(3 * 24 + 12);
    f.ca.leaf_until("soon", soon).write(f.dir.path(), "soon");
    f.ca.leaf("old", true).write(f.dir.path(), "old");
    let listen = |name: &str| {
        format!(
            "[{{ address: 0.0.0.0:8443, tls: {{ certificate: {name}.crt, key: {name}.key }} }}]"
        )
    };
    let w = f.warnings(&config(&listen("soon"), PLAIN_UPSTREAM));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("1:55 listen[0].tls.certificate | the certificate expires in 3 days ("),
        "{w:?}"
    );
    let old = f.path("old.crt");
    assert_eq!(
        f.errors(&config(&listen("old"), PLAIN_UPSTREAM)),
        [format!("1:55 listen[0].tls.certificate | the certificate in `{old}` expired at 2021-01-01T00:00:00Z")]
    );
}
