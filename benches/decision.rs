//! Per-request decision cost: `Policy::route` + `Policy::authorize`, as the proxy runs them
//! for every request once the token is verified.
//!
//! Two requests (a patient-bound read by id and a patient-bound search) against two policies:
//! the shipped `policies/fhir-r4.yaml` and the same policy with 1,000 generated routes added
//! (half under their own prefixes, half as extra literal children under `/fhir/Patient/{id}`,
//! next to the benchmarked route). The two should cost the same: matching walks a trie, it
//! never scans routes.
//!
//! Run: `cargo bench --bench decision` (`-- --quick` for a short run).

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;

use fhirwall::auth::Principal;
use fhirwall::policy::scope::GrantedScopes;
use fhirwall::policy::{Decision, Policy};

fn shipped_source() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/fhir-r4.yaml");
    std::fs::read_to_string(path).expect("policies/fhir-r4.yaml")
}

/// The shipped policy plus `n` generated routes.
fn large_source(n: usize) -> String {
    let mut src = shipped_source();
    for i in 0..n {
        if i % 2 == 0 {
            write!(
                src,
                "\n  - id: gen-{i}\n    methods: [GET, POST]\n    path: /Gen{i}/{{id}}\n    scopes: {{ any_of: [user/Basic.r, system/Basic.r] }}\n"
            )
        } else {
            write!(
                src,
                "\n  - id: gen-{i}\n    methods: [GET]\n    path: /Patient/{{id}}/gen{i}\n    scopes: {{ any_of: [user/Basic.r, system/Basic.r] }}\n"
            )
        }
        .expect("write to a String");
    }
    src
}

fn principal() -> Principal {
    // A typical patient-facing token: identity scopes plus a handful of resource scopes.
    let scopes = "openid fhirUser launch/patient offline_access patient/Patient.r \
                  patient/Observation.rs patient/Condition.rs patient/MedicationRequest.rs \
                  patient/AllergyIntolerance.rs patient/Encounter.rs";
    Principal {
        issuer: Arc::from("https://idp.example.org"),
        subject: Some("user-1".into()),
        client_id: Some("app".into()),
        fhir_user: Some("Patient/123".into()),
        patient: Some("123".into()),
        jti: None,
        expires_at: u64::MAX,
        scopes: GrantedScopes::parse(scopes.split(' ')),
    }
}

fn decide(p: &Policy, path: &str, query: Option<&str>, who: &Principal) -> Decision {
    match p.route(&Method::GET, path) {
        Ok(m) => p.authorize(&m, path, query, Some(who)),
        Err(d) => Decision::Deny(d),
    }
}

fn bench(c: &mut Criterion) {
    let who = principal();
    let shipped = Policy::parse(&shipped_source(), Path::new("fhir-r4.yaml")).expect("loads");
    let large = Policy::parse(&large_source(1000), Path::new("large.yaml")).expect("loads");
    assert_eq!(large.route_ids().len(), shipped.route_ids().len() + 1000);

    for (name, policy) in [("fhir-r4", &shipped), ("fhir-r4+1000", &large)] {
        // Sanity: both requests are allowed, so the allow path is what is measured.
        assert!(decide(policy, "/fhir/Patient/123", None, &who)
            .permit()
            .is_some());
        assert!(decide(
            policy,
            "/fhir/Observation",
            Some("patient=123&_count=50"),
            &who
        )
        .permit()
        .is_some());

        let mut g = c.benchmark_group(name);
        g.bench_function("patient-read", |b| {
            b.iter(|| decide(policy, black_box("/fhir/Patient/123"), None, &who))
        });
        g.bench_function("observation-search", |b| {
            b.iter(|| {
                decide(
                    policy,
                    black_box("/fhir/Observation"),
                    black_box(Some("patient=123&_count=50")),
                    &who,
                )
            })
        });
        g.bench_function("route-only-patient-read", |b| {
            b.iter(|| {
                policy
                    .route(&Method::GET, black_box("/fhir/Patient/123"))
                    .is_ok()
            })
        });
        g.finish();
    }

    c.bench_function("scopes-parse-10", |b| {
        let raw = "openid fhirUser launch/patient offline_access patient/Patient.r \
                   patient/Observation.rs patient/Condition.rs patient/MedicationRequest.rs \
                   patient/AllergyIntolerance.rs patient/Encounter.rs";
        b.iter(|| GrantedScopes::parse(black_box(raw).split(' ')))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
