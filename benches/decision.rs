//! Per-request decision cost: `Policy::route` + `Policy::authorize` (or, for requests no
//! explicit route matches under the `fhir:` base, `FhirSection::assess`), as the proxy runs
//! them for every request once the token is verified.
//!
//! Two requests (a patient-bound read by id and a patient-bound search) against two policies:
//! the shipped `policies/fhir-r4.yaml` and the same policy with 1,000 generated routes added
//! (half under their own prefixes, half as extra literal children under `/fhir/Patient/{id}`,
//! next to the benchmarked route). The two should cost the same: matching walks a trie, it
//! never scans routes.
//!
//! The `request` group measures the whole per-request decision the proxy makes once a token
//! has been seen: verified-token cache lookup (SHA-256 of a real RS256 JWT + moka), route
//! match and scope check. The token is verified once against a JWKS served on loopback.
//!
//! `cached-opaque-*` measures the same for an opaque token whose RFC 7662 introspection
//! answer (from a loopback endpoint, asked once) is in the cache.
//!
//! The `fhir` group measures the FHIR engine under a policy `fhir:` section (issue 3):
//! classification + decision per request ([`FhirSection::assess`]) for an instance read, a
//! search with `_include`/`_revinclude`, and a 50-entry transaction Bundle (assessed with its
//! body, as the proxy does after `NeedsBody`).
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
use fhirwall::policy::smart::{Assessment, FhirRequest, FhirSection};
use fhirwall::policy::{Decision, DenyReason, Policy};

fn shipped_source() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/fhir-r4.yaml");
    std::fs::read_to_string(path).expect("policies/fhir-r4.yaml")
}

/// The shipped policy plus `n` generated routes.
fn large_source(n: usize) -> String {
    // The shipped policy needs no explicit routes (`routes: []`); the generated ones are
    // matched first, and a request no route matches goes to the FHIR engine.
    let mut src = shipped_source().replace("routes: []", "routes:");
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

/// The proxy's routing order (smart-api.md): an explicit route decides; otherwise a request
/// under the `fhir:` base is assessed by the FHIR engine; otherwise no route.
fn decide(p: &Policy, path: &str, query: Option<&str>, who: &Principal) -> Decision {
    let get = Method::GET;
    match p.route(&get, path) {
        Ok(m) => p.authorize(&m, path, query, Some(who)),
        Err(d) if d.reason == DenyReason::NoRoute => match p.fhir() {
            Some(fhir) if path.starts_with(fhir.base_path()) => {
                let req = FhirRequest {
                    method: &get,
                    path,
                    query,
                    if_none_exist: None,
                    content_type: None,
                    body: None,
                };
                match fhir.assess(&req, Some(who)) {
                    Assessment::Verdict(v) => v.decision,
                    Assessment::NeedsBody { .. } => Decision::Deny(d),
                }
            }
            _ => Decision::Deny(d),
        },
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

/// Serves `jwks` on 127.0.0.1 and returns its URL.
async fn serve_jwks(jwks: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let body = jwks.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/jwks")
}

fn bench_request(c: &mut Criterion) {
    use fhirwall::auth::Authenticator;
    use fhirwall::config::{IssuerConfig, TokenCacheConfig};
    use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
    let pem = std::fs::read(keys.join("rsa1.key.pem")).expect("fixture key");
    let enc = EncodingKey::from_rsa_pem(&pem).expect("rsa key");
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some("bench".into());
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    let jwks_uri = rt.block_on(serve_jwks(jwks));

    let issuer = "https://idp.example.org";
    let cfg = IssuerConfig {
        issuer: issuer.into(),
        audiences: vec!["https://fhir.example.org".into()],
        jwks_uri: Some(jwks_uri),
        algorithms: vec![Algorithm::RS256],
        leeway: Duration::from_secs(30),
        jwks_refresh_interval: Duration::from_secs(300),
        jwks_min_refresh_interval: Duration::from_secs(30),
        fetch_timeout: Duration::from_secs(5),
        patient_claim: "patient".into(),
        introspection: None,
    };
    let cache = TokenCacheConfig {
        max_entries: 100_000,
        max_ttl: Duration::from_secs(300),
    };
    let metrics = Arc::new(fhirwall::metrics::Metrics::new());
    let auth = Authenticator::new(&[cfg], &cache, metrics);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("bench".into());
    let claims = serde_json::json!({
        "iss": issuer, "aud": "https://fhir.example.org", "sub": "user-1", "client_id": "app",
        "iat": now, "nbf": now, "exp": now + 3600, "jti": "bench-1", "patient": "123",
        "fhirUser": "Patient/123",
        "scope": "openid fhirUser launch/patient offline_access patient/Patient.r \
                  patient/Observation.rs patient/Condition.rs patient/MedicationRequest.rs \
                  patient/AllergyIntolerance.rs patient/Encounter.rs",
    });
    let token = jsonwebtoken::encode(&header, &claims, &enc).expect("sign");
    // Warm the cache: the first call verifies the signature, every later one is a hit.
    rt.block_on(auth.authenticate(&token))
        .expect("token verifies");
    let policy = Policy::parse(&shipped_source(), Path::new("fhir-r4.yaml")).expect("loads");

    let mut g = c.benchmark_group("request");
    g.bench_function("cached-token+route+scope/patient-read", |b| {
        b.to_async(&rt).iter(|| async {
            let who = auth.authenticate(black_box(&token)).await.expect("cached");
            let d = decide(&policy, black_box("/fhir/Patient/123"), None, &who);
            assert!(d.permit().is_some());
            d
        })
    });
    g.bench_function("cached-token+route+scope/observation-search", |b| {
        b.to_async(&rt).iter(|| async {
            let who = auth.authenticate(black_box(&token)).await.expect("cached");
            decide(
                &policy,
                black_box("/fhir/Observation"),
                black_box(Some("patient=123&_count=50")),
                &who,
            )
        })
    });
    g.bench_function("cached-token-only", |b| {
        b.to_async(&rt)
            .iter(|| async { auth.authenticate(black_box(&token)).await.is_ok() })
    });

    // The same with an opaque token, introspected once.
    let answer = serde_json::json!({
        "active": true, "iss": issuer, "aud": "https://fhir.example.org", "sub": "user-1",
        "client_id": "app", "exp": now + 3600, "patient": "123", "scope": claims["scope"],
    })
    .to_string();
    let endpoint = rt.block_on(serve_jwks(answer));
    std::env::set_var("FHIRWALL_BENCH_INTROSPECTION_SECRET", "bench-secret");
    let mut introspecting = IssuerConfig {
        introspection: Some(fhirwall::config::IntrospectionConfig {
            endpoint: Some(endpoint),
            revocation_endpoint: None,
            client_id: "gateway".into(),
            auth: fhirwall::config::ClientAuth::SecretBasic(fhirwall::config::SecretSource::Env(
                "FHIRWALL_BENCH_INTROSPECTION_SECRET".into(),
            )),
            timeout: Duration::from_secs(2),
            cache_max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(5),
            default_for_opaque: false,
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(5),
        }),
        ..cfg_for_introspection(issuer)
    };
    introspecting.jwks_uri = Some("http://127.0.0.1:9/unused".into());
    let opaque_auth = Authenticator::new(
        &[introspecting],
        &cache,
        Arc::new(fhirwall::metrics::Metrics::new()),
    );
    let opaque = "2YotnFZFEjr1zCsicMWpAA-bench-opaque-token";
    rt.block_on(opaque_auth.authenticate(opaque))
        .expect("introspected as active");
    g.bench_function("cached-opaque+route+scope/patient-read", |b| {
        b.to_async(&rt).iter(|| async {
            let who = opaque_auth
                .authenticate(black_box(opaque))
                .await
                .expect("cached");
            let d = decide(&policy, black_box("/fhir/Patient/123"), None, &who);
            assert!(d.permit().is_some());
            d
        })
    });
    g.bench_function("cached-opaque-only", |b| {
        b.to_async(&rt)
            .iter(|| async { opaque_auth.authenticate(black_box(opaque)).await.is_ok() })
    });
    g.finish();
}

/// An issuer trusted for the bench's audience, without introspection.
fn cfg_for_introspection(issuer: &str) -> fhirwall::config::IssuerConfig {
    use jsonwebtoken::Algorithm;
    use std::time::Duration;
    fhirwall::config::IssuerConfig {
        issuer: issuer.into(),
        audiences: vec!["https://fhir.example.org".into()],
        jwks_uri: None,
        algorithms: vec![Algorithm::RS256],
        leeway: Duration::from_secs(30),
        jwks_refresh_interval: Duration::from_secs(300),
        jwks_min_refresh_interval: Duration::from_secs(30),
        fetch_timeout: Duration::from_secs(5),
        patient_claim: "patient".into(),
        introspection: None,
    }
}

/// A policy whose `/fhir` base is enforced by the FHIR engine (no explicit routes needed).
const FHIR_POLICY: &str = r#"version: 1
base_path: /fhir
fhir:
  version: R4
  max_body_bytes: 1048576
routes:
  - id: legacy-report
    methods: [GET]
    path: /legacy/report
    scopes: { any_of: [user/Basic.r] }
"#;

/// A transaction Bundle of `n` Observation creates for Patient/123.
fn transaction(n: usize) -> Vec<u8> {
    let entries: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "fullUrl": format!("urn:uuid:00000000-0000-4000-8000-{i:012}"),
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [{ "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }] }],
                    "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
                    "subject": { "reference": "Patient/123" },
                    "valueQuantity": { "value": 60 + i, "unit": "/min" },
                },
                "request": { "method": "POST", "url": "Observation" },
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": entries,
    }))
    .expect("serializes")
}

/// Classification + decision of one request; a `NeedsBody` answer is assessed again with
/// `body`, exactly as the proxy does.
fn assess(fhir: &FhirSection, req: &FhirRequest<'_>, body: Option<&[u8]>, who: &Principal) -> bool {
    match fhir.assess(req, Some(who)) {
        Assessment::Verdict(v) => v.decision.permit().is_some(),
        Assessment::NeedsBody { max } => {
            let body = body.expect("the engine asked for a body");
            assert!(body.len() <= max, "bench body fits the bound");
            let with_body = FhirRequest {
                body: Some(body),
                ..*req
            };
            match fhir.assess(&with_body, Some(who)) {
                Assessment::Verdict(v) => v.decision.permit().is_some(),
                Assessment::NeedsBody { .. } => panic!("asked for the body twice"),
            }
        }
    }
}

fn bench_fhir(c: &mut Criterion) {
    let policy = Policy::parse(FHIR_POLICY, Path::new("fhir.yaml")).expect("loads");
    let fhir = policy.fhir().expect("the policy has a fhir: section");
    let mut who = principal();
    who.scopes = GrantedScopes::parse(
        "openid fhirUser launch/patient patient/Patient.rs patient/Observation.crs \
         patient/Practitioner.rs patient/Provenance.rs"
            .split_whitespace(),
    );
    let get = Method::GET;
    let post = Method::POST;
    let read = FhirRequest {
        method: &get,
        path: "/fhir/Patient/123",
        query: None,
        if_none_exist: None,
        content_type: None,
        body: None,
    };
    let search = FhirRequest {
        method: &get,
        path: "/fhir/Observation",
        query: Some(
            "patient=123&category=vital-signs&_count=50\
             &_include=Observation:performer:Practitioner&_revinclude=Provenance:target",
        ),
        if_none_exist: None,
        content_type: None,
        body: None,
    };
    let bundle = transaction(50);
    let tx = FhirRequest {
        method: &post,
        path: "/fhir",
        query: None,
        if_none_exist: None,
        content_type: Some("application/fhir+json"),
        body: None,
    };
    // Sanity: all three are allowed, so the allow path (every requirement met) is measured.
    assert!(assess(fhir, &read, None, &who), "read allowed");
    assert!(assess(fhir, &search, None, &who), "search allowed");
    assert!(
        assess(fhir, &tx, Some(&bundle), &who),
        "transaction allowed"
    );

    let mut g = c.benchmark_group("fhir");
    g.bench_function("classify+decide/read", |b| {
        b.iter(|| assess(fhir, black_box(&read), None, &who))
    });
    g.bench_function("classify+decide/search-with-includes", |b| {
        b.iter(|| assess(fhir, black_box(&search), None, &who))
    });
    g.bench_function("classify+decide/transaction-50", |b| {
        b.iter(|| assess(fhir, black_box(&tx), Some(black_box(&bundle)), &who))
    });
    g.finish();
}

criterion_group!(benches, bench, bench_request, bench_fhir);
criterion_main!(benches);
