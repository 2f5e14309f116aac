//! The limiter end to end, on governor's `FakeRelativeClock`: no sleeping, exact times.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use http::Method;

use super::*;
use crate::config::{RateLimitConfig, RedisConfig};
use crate::metrics::Metrics;
use crate::policy::scope::GrantedScopes;
use crate::policy::Policy;
use crate::proxy::respond::Answer;

const ROUTES: &str = r#"version: 1
base_path: /fhir
routes:
  - id: patient-read
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [user/Patient.r, patient/Patient.r] }
  - id: observation-search
    methods: [GET]
    path: /Observation
    scopes: { any_of: [user/Observation.s] }
  - id: export
    methods: [GET]
    path: /$export
    scopes: { any_of: [system/*.r] }
"#;

struct Harness {
    limiter: Limiter<FakeRelativeClock>,
    clock: FakeRelativeClock,
    metrics: Arc<Metrics>,
}

fn harness(limits: &str) -> Harness {
    harness_with(limits, RateLimitConfig::default())
}

fn harness_with(limits: &str, cfg: RateLimitConfig) -> Harness {
    let src = format!("{ROUTES}{limits}");
    let policy = Policy::parse(&src, Path::new("p.yaml")).expect("policy loads");
    let clock = FakeRelativeClock::default();
    let metrics = Arc::new(Metrics::new());
    let limiter = Limiter::with_clock(
        policy.rate_limits(),
        policy.base_path(),
        &cfg,
        false,
        Some(metrics.clone()),
        clock.clone(),
    )
    .expect("limiter");
    Harness {
        limiter,
        clock,
        metrics,
    }
}

fn principal(client: &str, subject: &str, scopes: &str) -> Principal {
    Principal {
        issuer: "https://idp.test".into(),
        subject: Some(subject.into()),
        client_id: Some(client.into()),
        fhir_user: None,
        patient: None,
        jti: None,
        expires_at: 0,
        scopes: GrantedScopes::parse(scopes.split(' ')),
    }
}

const ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

fn keys<'a>(
    method: &'a Method,
    target: &'a str,
    route: &'a str,
    p: Option<&'a Principal>,
) -> RequestKeys<'a> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    RequestKeys {
        method,
        path,
        query,
        route,
        address: Some(ADDR),
        principal: p,
    }
}

impl Harness {
    /// Both stages, as the proxy runs them.
    async fn check(
        &self,
        target: &str,
        route: &str,
        p: Option<&Principal>,
    ) -> Result<Admitted, RateLimited> {
        let get = Method::GET;
        let k = keys(&get, target, route, p);
        let mut a = self.limiter.check_before_auth(&k).await?;
        let b = self.limiter.check_after_auth(&k).await?;
        a.limits.extend(b.limits);
        a.alert = b.alert;
        Ok(a)
    }

    fn metric(&self, name: &str, label: (&str, &str)) -> f64 {
        let text = String::from_utf8(self.metrics.render()).unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("{}=\"{}\"", label.0, label.1)))
            .and_then(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(-1.0)
    }
}

#[tokio::test]
async fn a_burst_is_admitted_then_refused_with_the_exact_retry_after() {
    let h = harness("quotas:\n  - { id: per-client, key: client, rate: 10/1m, burst: 3 }\n");
    let p = principal("app", "u", "user/Patient.r");
    for left in [2, 1, 0] {
        let a = h
            .check("/fhir/Patient/1", "patient-read", Some(&p))
            .await
            .unwrap();
        assert_eq!(a.limits.len(), 1);
        assert_eq!(a.limits[0].remaining, left);
    }
    let refused = h
        .check("/fhir/Patient/1", "patient-read", Some(&p))
        .await
        .unwrap_err();
    assert_eq!(&*refused.quota, "per-client");
    // One unit comes back every 60 s / 10 = 6 s.
    assert_eq!(refused.retry_after, Duration::from_secs(6));
    let answer = Answer::for_denial(&refused.denial(), "fhirwall");
    assert_eq!((answer.status, answer.retry_after), (429, Some(6)));
    assert_eq!(answer.issue_code, "throttled");
    assert!(
        answer.diagnostics.contains("`per-client`"),
        "{}",
        answer.diagnostics
    );
    assert_eq!(
        h.metric("fhirwall_rate_limited_total", ("quota", "per-client")),
        1.0
    );

    // Not a moment early: 1 ns before the advertised time it is still refused...
    h.clock
        .advance(Duration::from_secs(6) - Duration::from_nanos(1));
    assert!(h
        .check("/fhir/Patient/1", "patient-read", Some(&p))
        .await
        .is_err());
    // ...and at it, admitted.
    h.clock.advance(Duration::from_nanos(1));
    assert!(h
        .check("/fhir/Patient/1", "patient-read", Some(&p))
        .await
        .is_ok());
}

#[tokio::test]
async fn quotas_are_independent_per_client_and_per_subject() {
    let h = harness(
        "quotas:\n  - { id: per-client, key: client, rate: 2/1m }\n  - { id: per-user, key: subject, rate: 3/1m }\n",
    );
    let a1 = principal("app-a", "alice", "user/Patient.r");
    let b1 = principal("app-b", "alice", "user/Patient.r");
    let a2 = principal("app-a", "bob", "user/Patient.r");
    for _ in 0..2 {
        h.check("/fhir/Patient/1", "patient-read", Some(&a1))
            .await
            .unwrap();
    }
    // app-a is out of its client quota, whoever the user.
    assert_eq!(
        &*h.check("/fhir/Patient/1", "patient-read", Some(&a2))
            .await
            .unwrap_err()
            .quota,
        "per-client"
    );
    // app-b is another client: admitted; alice's third request uses up her subject quota.
    h.check("/fhir/Patient/1", "patient-read", Some(&b1))
        .await
        .unwrap();
    assert_eq!(
        &*h.check("/fhir/Patient/1", "patient-read", Some(&b1))
            .await
            .unwrap_err()
            .quota,
        "per-user"
    );
    // A client of the same name at another issuer is another client.
    let mut other = principal("app-a", "carol", "user/Patient.r");
    other.issuer = "https://other-idp.test".into();
    h.check("/fhir/Patient/1", "patient-read", Some(&other))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_strictest_quota_answers_and_is_reported_first() {
    let h = harness(
        "quotas:\n  - { id: general, key: client, rate: 100/1m }\n  - { id: exports, key: client, rate: 1/1h, routes: [export] }\n",
    );
    let p = principal("app", "u", "system/*.r user/Patient.r");
    let a = h.check("/fhir/$export", "export", Some(&p)).await.unwrap();
    let ids: Vec<&str> = a.limits.iter().map(|l| &*l.quota).collect();
    assert_eq!(ids, ["exports", "general"], "least remaining first");
    let refused = h
        .check("/fhir/$export", "export", Some(&p))
        .await
        .unwrap_err();
    assert_eq!(&*refused.quota, "exports");
    assert_eq!(refused.retry_after, Duration::from_secs(3600));
    // The general quota was not charged by the refused export (it is checked after).
    let a = h
        .check("/fhir/Patient/1", "patient-read", Some(&p))
        .await
        .unwrap();
    assert_eq!(a.limits.len(), 1);
    assert_eq!(
        (&*a.limits[0].quota, a.limits[0].remaining),
        ("general", 98)
    );
}

#[tokio::test]
async fn interactions_scope_quotas_and_costs_weigh_them() {
    let h = harness(
        "quotas:\n  - id: weighted\n    key: client\n    rate: 10/1m\n    cost: { search: 4, read: 1 }\n  - id: searches\n    key: client\n    rate: 100/1m\n    interactions: [search]\n",
    );
    let p = principal("app", "u", "user/Patient.r user/Observation.s");
    let a = h
        .check("/fhir/Observation?code=x", "observation-search", Some(&p))
        .await
        .unwrap();
    let weighted = a.limits.iter().find(|l| &*l.quota == "weighted").unwrap();
    assert_eq!(weighted.remaining, 6);
    assert_eq!(a.limits.len(), 2);
    h.check("/fhir/Observation?code=x", "observation-search", Some(&p))
        .await
        .unwrap();
    // 2 units left: a third search (4) is refused, a read (1) is not.
    let refused = h
        .check("/fhir/Observation?code=x", "observation-search", Some(&p))
        .await
        .unwrap_err();
    assert_eq!(&*refused.quota, "weighted");
    // Two units are missing: 2 × 6 s.
    assert_eq!(refused.retry_after, Duration::from_secs(12));
    let a = h
        .check("/fhir/Patient/1", "patient-read", Some(&p))
        .await
        .unwrap();
    assert_eq!(
        a.limits.len(),
        1,
        "the search-only quota does not count reads"
    );
}

#[tokio::test]
async fn address_quotas_count_before_authentication_and_ipv6_by_prefix() {
    let h = harness("quotas:\n  - { id: per-address, key: address, rate: 2/1m }\n");
    let get = Method::GET;
    // No token at all: the address quota still counts (the proxy runs this stage first).
    for _ in 0..2 {
        h.limiter
            .check_before_auth(&keys(&get, "/fhir/Patient/1", "patient-read", None))
            .await
            .unwrap();
    }
    let refused = h
        .limiter
        .check_before_auth(&keys(&get, "/fhir/Patient/1", "patient-read", None))
        .await
        .unwrap_err();
    assert_eq!(&*refused.quota, "per-address");
    // Address quotas are not counted again after authentication.
    let p = principal("app", "u", "user/Patient.r");
    assert!(h
        .limiter
        .check_after_auth(&keys(&get, "/fhir/Patient/1", "patient-read", Some(&p)))
        .await
        .unwrap()
        .limits
        .is_empty());

    let v6 = |s: &str| RequestKeys {
        address: Some(s.parse().unwrap()),
        ..keys(&get, "/fhir/Patient/1", "patient-read", None)
    };
    h.limiter
        .check_before_auth(&v6("2001:db8:1:2::1"))
        .await
        .unwrap();
    h.limiter
        .check_before_auth(&v6("2001:db8:1:2::ffff"))
        .await
        .unwrap();
    // Same /64: the third address is the same bucket.
    assert!(h
        .limiter
        .check_before_auth(&v6("2001:db8:1:2:aaaa::3"))
        .await
        .is_err());
    assert!(h
        .limiter
        .check_before_auth(&v6("2001:db8:1:3::1"))
        .await
        .is_ok());
}

#[tokio::test]
async fn forwarded_addresses_are_used_only_when_trusted() {
    let policy = Policy::parse(
        &format!("{ROUTES}quotas:\n  - {{ id: a, key: address, rate: 1/1m }}\n"),
        Path::new("p.yaml"),
    )
    .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.append("x-forwarded-for", "203.0.113.9, 10.9.9.9".parse().unwrap());
    headers.append("x-forwarded-for", "198.51.100.7".parse().unwrap());
    let peer = Some(ADDR);
    for (trust, expected) in [(true, "198.51.100.7"), (false, "192.0.2.1")] {
        let l = Limiter::new(
            policy.rate_limits(),
            "",
            &RateLimitConfig::default(),
            trust,
            None,
        )
        .unwrap();
        assert_eq!(
            l.client_address(peer, &headers),
            Some(expected.parse().unwrap())
        );
    }
    // A last entry that is not an address: the peer, never an earlier (forgeable) entry.
    headers.append("x-forwarded-for", "unknown".parse().unwrap());
    let l = Limiter::new(
        policy.rate_limits(),
        "",
        &RateLimitConfig::default(),
        true,
        None,
    )
    .unwrap();
    assert_eq!(l.client_address(peer, &headers), peer);
}

#[tokio::test]
async fn zero_cost_interactions_are_not_counted() {
    let h = harness("quotas:\n  - { id: q, key: client, rate: 1/1m, cost: { read: 0 } }\n");
    let p = principal("app", "u", "user/Patient.r");
    for _ in 0..5 {
        let a = h
            .check("/fhir/Patient/1", "patient-read", Some(&p))
            .await
            .unwrap();
        assert!(a.limits.is_empty());
    }
}

const GUARD: &str = "distinct_patients: { limit: 3, window: 1h }\n";

#[tokio::test]
async fn the_distinct_patients_guard_trips_at_the_configured_count() {
    let h = harness(GUARD);
    let p = principal("app", "u", "user/Patient.r user/Observation.s");
    for id in ["1", "2", "3"] {
        assert!(
            !h.check(&format!("/fhir/Patient/{id}"), "patient-read", Some(&p))
                .await
                .unwrap()
                .alert
        );
    }
    // Re-reading known patients, and searches on them, stay within the limit.
    h.check("/fhir/Patient/2", "patient-read", Some(&p))
        .await
        .unwrap();
    h.check(
        "/fhir/Observation?patient=Patient/3",
        "observation-search",
        Some(&p),
    )
    .await
    .unwrap();
    h.clock.advance(Duration::from_secs(600));
    let refused = h
        .check("/fhir/Patient/4", "patient-read", Some(&p))
        .await
        .unwrap_err();
    assert_eq!(&*refused.quota, DISTINCT_PATIENTS_ID);
    assert!(
        refused.limit.is_none(),
        "the guard's limit is not advertised"
    );
    // Patient 1 was last seen at 0 s and leaves the window at 3600 s.
    assert_eq!(refused.retry_after, Duration::from_secs(3000));
    assert_eq!(
        h.metric(
            "fhirwall_distinct_patients_exceeded_total",
            ("action", "deny")
        ),
        1.0
    );
    assert_eq!(
        h.metric(
            "fhirwall_rate_limited_total",
            ("quota", "distinct_patients")
        ),
        1.0
    );
    // A search naming two new patients at once is refused too.
    assert!(h
        .check(
            "/fhir/Observation?patient=5,6",
            "observation-search",
            Some(&p)
        )
        .await
        .is_err());
    // Another client is counted on its own.
    let other = principal("other-app", "u", "user/Patient.r");
    h.check("/fhir/Patient/4", "patient-read", Some(&other))
        .await
        .unwrap();
    // Once the window has slid past patient 1, there is room for one more.
    h.clock.advance(Duration::from_secs(3000));
    h.check("/fhir/Patient/4", "patient-read", Some(&p))
        .await
        .unwrap();
}

#[tokio::test]
async fn alert_mode_serves_and_reports_without_denying() {
    let h = harness("distinct_patients: { limit: 2, window: 1h, action: alert }\n");
    let p = principal("app", "u", "user/Patient.r");
    let mut alerts = 0;
    for id in 1..=5 {
        let a = h
            .check(&format!("/fhir/Patient/{id}"), "patient-read", Some(&p))
            .await
            .unwrap();
        alerts += usize::from(a.alert);
    }
    assert_eq!(alerts, 3);
    assert_eq!(
        h.metric(
            "fhirwall_distinct_patients_exceeded_total",
            ("action", "alert")
        ),
        3.0
    );
    assert_eq!(
        h.metric(
            "fhirwall_distinct_patients_exceeded_total",
            ("action", "deny")
        ),
        0.0
    );
    let mut limits = RequestLimits::default();
    limits.admit(Admitted {
        limits: vec![],
        alert: true,
    });
    let note = limits.audit_note().unwrap();
    assert_eq!(
        (note.quota.as_str(), note.action),
        ("distinct_patients", "alert")
    );
}

#[tokio::test]
async fn patient_tokens_and_subject_keys_are_handled_by_the_guard_spec() {
    let h = harness(GUARD);
    // patient/ tokens are confined by the policy; the guard does not count them.
    let patient = principal("app", "u", "patient/Patient.r");
    for id in 1..=10 {
        h.check(
            &format!("/fhir/Patient/{id}"),
            "patient-read",
            Some(&patient),
        )
        .await
        .unwrap();
    }
    let h = harness("distinct_patients: { key: subject, limit: 1, window: 1h }\n");
    let alice = principal("app", "alice", "user/Patient.r");
    let bob = principal("app", "bob", "user/Patient.r");
    h.check("/fhir/Patient/1", "patient-read", Some(&alice))
        .await
        .unwrap();
    h.check("/fhir/Patient/2", "patient-read", Some(&bob))
        .await
        .unwrap();
    assert!(h
        .check("/fhir/Patient/2", "patient-read", Some(&alice))
        .await
        .is_err());
}

#[tokio::test]
async fn without_redis_each_instance_admits_only_its_share() {
    // Redis is configured but never reached: the local share answers, never "unlimited".
    let cfg = RateLimitConfig {
        redis: Some(RedisConfig {
            url: "redis://127.0.0.1:1/0".into(),
            key_prefix: "t:".into(),
            timeout: Duration::from_millis(10),
            local_share: 0.25,
            retry_interval: Duration::from_secs(1),
        }),
        ..RateLimitConfig::default()
    };
    let h = harness_with("quotas:\n  - { id: q, key: client, rate: 8/1m }\ndistinct_patients: { limit: 8, window: 1h }\n", cfg);
    let p = principal("app", "u", "user/Patient.r");
    for id in 0..2 {
        let a = h
            .check(&format!("/fhir/Patient/{id}"), "patient-read", Some(&p))
            .await
            .unwrap();
        assert_eq!(
            a.limits[0].count, 2,
            "the policy advertised is the share in force"
        );
    }
    assert_eq!(
        &*h.check("/fhir/Patient/0", "patient-read", Some(&p))
            .await
            .unwrap_err()
            .quota,
        "q"
    );
    assert_eq!(
        h.metric("fhirwall_ratelimit_mode", ("mode", "fallback")),
        1.0
    );
    let check = h.limiter.readiness().unwrap();
    assert!(check.ok, "degraded, but ready");
}

#[tokio::test]
async fn the_ratelimit_fields_follow_the_draft() {
    let h = harness("quotas:\n  - { id: general, key: client, rate: 100/1m, burst: 10 }\n  - { id: exports, key: client, rate: 1/1h, routes: [export] }\n");
    let p = principal("app", "u", "system/*.r");
    let mut limits = RequestLimits::default();
    limits.admit(h.check("/fhir/$export", "export", Some(&p)).await.unwrap());
    assert_eq!(
        limits.header_values().unwrap(),
        (
            "\"exports\";q=1;w=3600, \"general\";q=100;w=60;fhirwall-burst=10".to_owned(),
            "\"exports\";r=0;t=3600, \"general\";r=9;t=1".to_owned()
        )
    );
    let mut limits = RequestLimits::default();
    let denial = limits.refuse(
        h.check("/fhir/$export", "export", Some(&p))
            .await
            .unwrap_err(),
    );
    assert_eq!(denial.reason.code(), "rate_limited");
    assert_eq!(limits.refused_quota(), Some("exports"));
    assert_eq!(
        limits.header_values().unwrap(),
        (
            "\"exports\";q=1;w=3600".to_owned(),
            "\"exports\";r=0;t=3600".to_owned()
        )
    );
    let note = limits.audit_note().unwrap();
    assert_eq!(
        (note.quota.as_str(), note.action, note.retry_after_s),
        ("exports", "deny", Some(3600))
    );
    assert!(RequestLimits::default().header_values().is_none());
}

#[tokio::test]
async fn idle_keys_are_pruned() {
    let h = harness("quotas:\n  - { id: q, key: client, rate: 60/1m }\n");
    for i in 0..100 {
        let p = principal(&format!("app-{i}"), "u", "user/Patient.r");
        h.check("/fhir/Patient/1", "patient-read", Some(&p))
            .await
            .unwrap();
    }
    assert_eq!(h.limiter.key_counts()[0].1, 100);
    h.clock.advance(Duration::from_secs(5));
    h.limiter.prune();
    assert_eq!(h.limiter.key_counts()[0].1, 0);
    assert_eq!(h.metric("fhirwall_ratelimit_keys", ("quota", "q")), 0.0);
}
