//! Rate limits through the real binary: 429 with `Retry-After`, the RateLimit fields and an
//! OperationOutcome; the audit record and the metric of every refusal; failed authentication
//! limited per address; the distinct-patients guard in deny and alert mode; quota errors in
//! `fhirwall check`.
//!
//! Quotas here are counted per hour, so nothing refills while a test runs: no assertion
//! depends on timing.

mod support;

use serde_json::{json, Value};
use support::*;

/// Patient-scoped read and search, a `user/` read, and a public route.
const ROUTES: &str = r#"version: 1
routes:
  - id: metadata
    methods: [GET]
    path: /metadata
    public: true
  - id: patient-read
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [patient/Patient.r, user/Patient.r] }
    patient: { segment: id }
  - id: observation-search
    methods: [GET]
    path: /Observation
    scopes: { any_of: [patient/Observation.s, user/Observation.s] }
    patient: { query: patient }
"#;

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = http_client().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

/// The audit record of the `n`-th request (0-based), waiting for it.
async fn audit(gateway: &Gateway, n: usize) -> Value {
    gateway.wait_for_audit_lines(n + 1).await.swap_remove(n)
}

#[tokio::test]
async fn a_client_over_its_quota_gets_a_429_with_the_ratelimit_fields_audit_and_metric() {
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let gateway = Gateway::builder()
        .backend(&backend)
        .issuer(&issuer)
        .policy_yaml(format!(
            "{ROUTES}quotas:\n  - {{ id: per-client, key: client, rate: 2/1h }}\n"
        ))
        .start()
        .await;
    let token = issuer.mint(issuer.claims_for("patient/Patient.r", "123"), KeyId::Rsa1);
    for _ in 0..2 {
        let ok = get(&gateway.url("/Patient/123"), Some(&token)).await;
        assert_eq!(ok.status(), 200);
        // Allowed responses carry no RateLimit fields unless configured.
        assert!(header(&ok, "ratelimit").is_none());
    }
    let refused = get(&gateway.url("/Patient/123"), Some(&token)).await;
    assert_eq!(refused.status(), 429);
    // One unit comes back every 3600 s / 2 = 1800 s; the wait is what is left of it.
    let retry: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((1700..=1800).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        Some("\"per-client\";q=2;w=3600")
    );
    assert_eq!(
        header(&refused, "ratelimit"),
        Some(format!("\"per-client\";r=0;t={retry}").as_str())
    );
    assert!(header(&refused, "www-authenticate").is_none());
    assert_eq!(header(&refused, "content-type"), Some(FHIR_JSON));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(body["issue"][0]["code"], "throttled");
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("`per-client`"),
        "{body}"
    );
    // The refused request never reached the backend.
    assert_eq!(backend.request_count(), 2);

    let record = audit(&gateway, 2).await;
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "rate_limited");
    assert_eq!(record["status"], 429);
    assert_eq!(record["route"], "patient-read");
    assert_eq!(record["client_id"], TEST_CLIENT_ID);
    assert_eq!(
        record["rate_limit"],
        json!({ "quota": "per-client", "action": "deny", "retry_after_s": retry })
    );
    // Admitted requests have no rate_limit entry.
    assert!(audit(&gateway, 0).await.get("rate_limit").is_none());
    assert_eq!(
        gateway
            .metric("fhirwall_rate_limited_total", &[("quota", "per-client")])
            .await,
        Some(1.0)
    );
    assert_eq!(
        gateway
            .metric("fhirwall_denials_total", &[("reason", "rate_limited")])
            .await,
        Some(1.0)
    );
    assert_eq!(
        gateway
            .metric("fhirwall_ratelimit_mode", &[("mode", "local")])
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn failed_authentication_attempts_are_limited_per_address() {
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let gateway = Gateway::builder()
        .backend(&backend)
        .issuer(&issuer)
        .policy_yaml(format!(
            "{ROUTES}quotas:\n  - {{ id: per-address, key: address, rate: 3/1h }}\n"
        ))
        .start()
        .await;
    let good = issuer.mint(issuer.claims_for("patient/Patient.r", "123"), KeyId::Rsa1);
    let guesses = [
        with_bad_signature(&good),
        "not-a-jwt".to_owned(),
        issuer.mint_unpublished(issuer.claims_for("patient/Patient.r", "123")),
    ];
    for guess in &guesses {
        let r = get(&gateway.url("/Patient/123"), Some(guess)).await;
        assert_eq!(r.status(), 401);
        // Counted, but not advertised unless `headers_on_allowed` says so.
        assert!(header(&r, "ratelimit").is_none());
    }
    // The fourth attempt from this address is refused before its token is even looked at:
    // a valid token does not help, and neither does no token at all.
    let r = get(&gateway.url("/Patient/123"), Some(&good)).await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    assert_eq!(
        header(&r, "ratelimit-policy"),
        Some("\"per-address\";q=3;w=3600")
    );
    assert_eq!(get(&gateway.url("/Patient/123"), None).await.status(), 429);
    // Public routes count too: the quota has no `routes:` filter.
    assert_eq!(get(&gateway.url("/metadata"), None).await.status(), 429);
    assert_eq!(backend.request_count(), 0);
    let record = audit(&gateway, 3).await;
    assert_eq!(record["reason"], "rate_limited");
    assert_eq!(record["rate_limit"]["quota"], "per-address");
    // Refused before authentication: the record names no client.
    assert_eq!(record["client_id"], Value::Null);
    assert_eq!(
        gateway
            .metric("fhirwall_rate_limited_total", &[("quota", "per-address")])
            .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn allowed_responses_carry_the_ratelimit_fields_when_configured() {
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let gateway = Gateway::builder()
        .backend(&backend)
        .issuer(&issuer)
        .policy_yaml(format!(
            "{ROUTES}quotas:\n  - {{ id: per-client, key: client, rate: 100/1h, burst: 5 }}\n  - {{ id: searches, key: client, rate: 10/1h, interactions: [search], cost: {{ search: 2 }} }}\n"
        ))
        .config_override("{ rate_limit: { headers_on_allowed: true } }")
        .start()
        .await;
    let token = issuer.mint(
        issuer.claims_for("patient/Observation.s patient/Patient.r", "123"),
        KeyId::Rsa1,
    );
    let r = get(&gateway.url("/Patient/123"), Some(&token)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "ratelimit-policy"),
        Some("\"per-client\";q=100;w=3600;fhirwall-burst=5")
    );
    assert_eq!(header(&r, "ratelimit"), Some("\"per-client\";r=4;t=36"));
    // A search counts in both quotas, the one with less left first; it costs 2 units there.
    let r = get(&gateway.url("/Observation?patient=123"), Some(&token)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "ratelimit"),
        Some("\"per-client\";r=3;t=36, \"searches\";r=8;t=360")
    );
}

/// A `user/` token that can read any patient.
fn clinician_token(issuer: &TestIssuer) -> String {
    issuer.mint(
        issuer.claims_for("user/Patient.r user/Observation.s", None),
        KeyId::Rsa1,
    )
}

#[tokio::test]
async fn the_distinct_patients_guard_refuses_bulk_reads() {
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let gateway = Gateway::builder()
        .backend(&backend)
        .issuer(&issuer)
        .policy_yaml(format!(
            "{ROUTES}distinct_patients: {{ limit: 3, window: 1h }}\n"
        ))
        .start()
        .await;
    let token = clinician_token(&issuer);
    for id in ["1", "2", "3", "2"] {
        let r = get(&gateway.url(&format!("/Patient/{id}")), Some(&token)).await;
        assert_eq!(r.status(), 200, "patient {id}");
    }
    // Searching a known patient is fine; a fourth patient, by read or by search, is not.
    assert_eq!(
        get(&gateway.url("/Observation?patient=3"), Some(&token))
            .await
            .status(),
        200
    );
    let r = get(&gateway.url("/Patient/4"), Some(&token)).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&retry), "Retry-After {retry}");
    // The guard's limit is not advertised.
    assert!(header(&r, "ratelimit").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["issue"][0]["code"], "throttled");
    assert_eq!(
        get(&gateway.url("/Observation?patient=Patient/5"), Some(&token))
            .await
            .status(),
        429
    );
    assert_eq!(backend.request_count(), 5);
    let record = audit(&gateway, 5).await;
    assert_eq!(record["reason"], "rate_limited");
    assert_eq!(record["rate_limit"]["quota"], "distinct_patients");
    assert_eq!(record["rate_limit"]["action"], "deny");
    assert_eq!(
        gateway
            .metric(
                "fhirwall_distinct_patients_exceeded_total",
                &[("action", "deny")]
            )
            .await,
        Some(2.0)
    );
    // patient/ tokens are confined to their patient by the policy and not counted.
    let patient = issuer.mint(issuer.claims_for("patient/Patient.r", "9"), KeyId::Rsa1);
    assert_eq!(
        get(&gateway.url("/Patient/9"), Some(&patient))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn the_distinct_patients_guard_in_alert_mode_serves_and_records_the_alert() {
    let issuer = TestIssuer::start();
    let backend = TestBackend::start();
    let gateway = Gateway::builder()
        .backend(&backend)
        .issuer(&issuer)
        .policy_yaml(format!(
            "{ROUTES}distinct_patients: {{ limit: 1, window: 1h, action: alert }}\n"
        ))
        .start()
        .await;
    let token = clinician_token(&issuer);
    for id in ["1", "2", "3"] {
        let r = get(&gateway.url(&format!("/Patient/{id}")), Some(&token)).await;
        assert_eq!(r.status(), 200);
    }
    let records = gateway.wait_for_audit_lines(3).await;
    assert!(records[0].get("rate_limit").is_none());
    for record in &records[1..] {
        assert_eq!(record["decision"], "allow");
        assert_eq!(
            record["rate_limit"],
            json!({ "quota": "distinct_patients", "action": "alert" })
        );
    }
    assert_eq!(
        gateway
            .metric(
                "fhirwall_distinct_patients_exceeded_total",
                &[("action", "alert")]
            )
            .await,
        Some(2.0)
    );
    assert!(gateway
        .stderr()
        .contains("distinct-patients limit exceeded"));
}

#[test]
fn check_reports_rate_limit_errors_with_their_position() {
    let check = |policy: String, config: &str| {
        let dir = tempfile::tempdir().unwrap();
        let [a, b] = free_ports();
        let path = Gateway::builder()
            .upstream("http://127.0.0.1:9")
            .issuer_url("https://idp.example", &[TEST_AUDIENCE])
            .policy_yaml(policy)
            .config_override(config)
            .write_config(dir.path(), a, b);
        let (code, stdout, stderr) =
            run_cli_in(dir.path(), &["check", "--config", path.to_str().unwrap()]);
        (code, format!("{stdout}{stderr}"))
    };
    let (code, out) = check(
        format!("{ROUTES}quotas:\n  - {{ id: q, key: client, rate: 10/1h, routes: [nope] }}\n"),
        "{}",
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("policy.yaml:18:49: error: `quotas[0].routes[0]`: no route has the id `nope`"),
        "{out}"
    );
    // Redis without an explicit local share is refused: never silently unlimited.
    let (code, out) = check(
        ROUTES.to_owned(),
        "{ rate_limit: { redis: { url: 'redis://127.0.0.1:6379' } } }",
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: `rate_limit.redis.local_share`: missing required key `local_share`"),
        "{out}"
    );
}
