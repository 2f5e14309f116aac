//! The integration-test kit: a token issuer, a recording FHIR backend, and the real
//! `fhirwall` binary started on loopback ports, treated as a black box.
//!
//! Use it from a test crate with `mod support;` and `use support::*;`:
//!
//! ```ignore
//! #[tokio::test]
//! async fn a_patient_reads_their_own_record() {
//!     let issuer = TestIssuer::start();
//!     let backend = TestBackend::start();
//!     let gateway = Gateway::builder().backend(&backend).issuer(&issuer).start().await;
//!     let token = issuer.mint(issuer.claims_for("patient/Patient.rs", "123"), KeyId::Rsa1);
//!     let response = http_client().get(gateway.url("/Patient/123")).bearer_auth(token).send().await.unwrap();
//!     assert_eq!(response.status(), 200);
//!     assert_eq!(backend.last_request().unwrap().path, "/Patient/123");
//!     let audit = gateway.wait_for_audit_lines(1).await;
//!     assert_eq!(audit[0]["decision"], "allow");
//! }
//! ```
//!
//! The in-process servers run on the kit's own runtime ([`runtime`]), so they keep serving
//! whatever the test thread does; the kit's async methods work from any tokio test.
#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod fhir_backend;
pub mod gateway;
pub mod idp;
pub mod issuer;
pub mod keys;
pub mod redis_server;
pub mod server;

pub use backend::{echoed, RecordedRequest, Reply, TestBackend, ECHO_HEADER, FHIR_JSON};
pub use gateway::{
    free_port, free_ports, run_cli, run_cli_in, Gateway, GatewayBuilder, StartFailure,
    SAMPLE_POLICY,
};
pub use issuer::{
    decode_claims_unverified, hs256_with_public_key, unix_now, unsigned_alg_none,
    with_bad_signature, with_header, TestIssuer, TEST_CLIENT_ID, TEST_SUBJECT, UNPUBLISHED_KID,
};
pub use keys::KeyId;

use std::path::PathBuf;
use std::sync::OnceLock;

/// The audience every test token carries and every test gateway accepts.
pub const TEST_AUDIENCE: &str = "https://fhirwall.test/fhir";

/// The runtime the kit's servers run on (two worker threads, shared by all tests of a
/// test binary, never shut down).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-kit")
            .enable_all()
            .build()
            .expect("test kit runtime")
    })
}

/// An HTTP client that never goes through a proxy (environment proxies would capture
/// loopback traffic) and never follows redirects (tests assert them).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client")
}

/// `tests/fixtures/{relative}`.
pub fn fixture_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

/// The value of the series `name{labels}` in a Prometheus text exposition; labels not
/// listed may have any value (the first matching series wins). For histograms ask for
/// `NAME_count` or `NAME_sum`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let parsed = parse_labels(series_labels);
            let matches = labels
                .iter()
                .all(|(k, v)| parsed.iter().any(|(pk, pv)| pk == k && pv == v));
            if matches {
                value.parse().ok()
            } else {
                None
            }
        })
}

/// Sums every series of `name` whose labels include `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let single = metric_value(&format!("{series} {value}"), name, labels)?;
            Some(single)
        })
        .sum()
}

/// `k="v",k2="v2"` → pairs, handling `\"`, `\\` and `\n` escapes.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        pairs.push((key.trim().to_owned(), value));
        if chars.next() != Some(',') {
            break;
        }
    }
    pairs
}
