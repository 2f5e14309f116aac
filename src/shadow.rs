//! Shadow policy: a candidate policy decided beside the active one on live traffic, compared,
//! counted and logged, never enforced.
//!
//! The proxy calls [`observe`] once per request, after the active decision is made and before
//! the response is written. The shadow decision never changes the response, never awaits and
//! never verifies a token again: it reuses the principal the active path authenticated, so its
//! cost is one route lookup and one scope evaluation (no I/O, no lock).
//!
//! Only policy outcomes are compared. Refusals that say nothing about the policy (rate limits,
//! an unavailable audit trail or identity provider, method-override headers) are skipped.
//! When the shadow route needs a token that the active path never verified (the active policy
//! had no route for the request, or a public one), the shadow outcome is `unverified`: the
//! token is not verified a second time for a decision that is never enforced.
//!
//! Every compared request counts in `fhirwall_shadow_evaluations_total`; a difference (allow
//! vs deny, two different deny reasons, or `unverified`) counts in
//! `fhirwall_shadow_decisions_total{active,shadow,rule}` and is logged with the method, the
//! request id, both route ids and both outcomes: never the path, its ids or the query (PHI),
//! never a token.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::{bearer, Principal};
use crate::metrics::{method_label, Metrics};
use crate::policy::{Decision, Denial, DenyReason, Policy};

/// Most difference lines logged per second; past it they are only counted (the metric stays
/// exact), and the next logged line says how many were left out.
const LOG_LINES_PER_SECOND: u64 = 50;

/// What the active path established about the request's credentials. The shadow decision
/// takes it as given: no second token verification.
#[derive(Debug, Clone, Copy)]
pub enum Credentials<'a> {
    /// No bearer credentials at all.
    Anonymous,
    /// The active path verified the token: this principal.
    Verified(&'a Principal),
    /// The active path refused the token (an `invalid_token` denial).
    Refused(&'a Denial),
    /// The credentials are malformed (`invalid_request`, RFC 6750 §3.1); the proxy refuses
    /// them on every matched route, public or not. The detail is the client's message.
    Malformed(&'a str),
    /// A token was sent but the active path did not verify it (its route was public, or the
    /// request was refused before authentication).
    Unverified,
}

/// The parts of a request a policy decision reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The request method.
    pub method: &'a http::Method,
    /// The raw request path (no query).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
}

/// The shadow route needs a verified token and the active path did not verify one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// The shadow route the request matched.
    pub route_id: Arc<str>,
}

/// The shadow policy's decision about a request, as the proxy would make it from the policy
/// alone (route, then credentials, then scopes and patient context). [`Unverified`] when it
/// cannot be decided without verifying a token the active path did not verify.
///
/// One function on purpose: when the policy evaluation becomes a single side-effect-free
/// `(policy, facts, principal) -> Decision`, only this body changes.
pub fn evaluate(
    shadow: &Policy,
    req: &RequestFacts<'_>,
    credentials: &Credentials<'_>,
) -> Result<Decision, Unverified> {
    let m = match shadow.route(req.method, req.path) {
        Ok(m) => m,
        Err(denial) => return Ok(Decision::Deny(denial)),
    };
    let on_route =
        |d: Denial| Decision::Deny(d.on_route(m.route_id().clone(), m.required().clone()));
    Ok(match credentials {
        // The proxy parses the credentials before it looks at `public`.
        Credentials::Malformed(detail) => on_route(Denial::new(
            DenyReason::InvalidRequest,
            Cow::Owned((*detail).to_owned()),
        )),
        Credentials::Anonymous => shadow.authorize(&m, req.path, req.query, None),
        // Public routes ignore credentials, verified or not.
        _ if m.is_public() => shadow.authorize(&m, req.path, req.query, None),
        Credentials::Verified(p) => shadow.authorize(&m, req.path, req.query, Some(p)),
        Credentials::Refused(active) => {
            on_route(Denial::new(active.reason.clone(), active.detail.clone()))
        }
        Credentials::Unverified => {
            return Err(Unverified {
                route_id: m.route_id().clone(),
            })
        }
    })
}

/// Compares the shadow policy's decision with the active one and records a difference.
/// Never fails and never changes anything about the request.
pub fn observe(
    shadow: &Policy,
    req: &http::request::Parts,
    principal: Option<&Principal>,
    active: &Decision,
    request_id: &str,
    metrics: &Metrics,
) {
    if !comparable(active) {
        return;
    }
    let path = req.uri.path();
    let query = req.uri.query();
    let malformed;
    let credentials = match (principal, active) {
        (Some(p), _) => Credentials::Verified(p),
        (None, Decision::Deny(d)) if matches!(d.reason, DenyReason::InvalidToken { .. }) => {
            Credentials::Refused(d)
        }
        (None, _) => match bearer::extract(&req.headers, query) {
            Ok(None) => Credentials::Anonymous,
            Ok(Some(_)) => Credentials::Unverified,
            Err(e) => {
                malformed = e.to_string();
                Credentials::Malformed(&malformed)
            }
        },
    };
    let facts = RequestFacts {
        method: &req.method,
        path,
        query,
    };
    let candidate = evaluate(shadow, &facts, &credentials);
    metrics.shadow_evaluations.inc();
    let Some(diff) = Difference::between(active, &candidate) else {
        return;
    };
    metrics
        .shadow_decisions
        .with_label_values(&[diff.active, diff.shadow, diff.rule])
        .inc();
    if let Some(suppressed) = LOG_BUDGET.take(now_secs()) {
        tracing::info!(
            request.id = %request_id,
            method = method_label(&req.method),
            active.decision = diff.active,
            active.route = active.route_id().unwrap_or("-"),
            shadow.decision = diff.shadow,
            shadow.route = diff.rule,
            shadow.suppressed = suppressed,
            "shadow policy decided differently"
        );
    }
}

/// Whether the active decision is the policy's own: refusals made for other reasons say
/// nothing the shadow policy could disagree with.
fn comparable(active: &Decision) -> bool {
    match active {
        Decision::Allow(_) => true,
        Decision::Deny(d) => !matches!(
            d.reason,
            DenyReason::RateLimited { .. }
                | DenyReason::AuditUnavailable
                | DenyReason::IdentityProviderUnavailable
                | DenyReason::BadRequest
        ),
    }
}

/// A disagreement, as metric labels: outcomes are `allow`, a deny reason code, or (shadow
/// only) `unverified`; `rule` is the shadow decision's route id (`_none` when no shadow route
/// matched). All are bounded by the two policies.
#[derive(Debug, PartialEq, Eq)]
struct Difference<'a> {
    active: &'static str,
    shadow: &'static str,
    rule: &'a str,
}

// === impl Difference ===

impl<'a> Difference<'a> {
    /// `None` when both decide alike: both allow, or both deny for the same reason.
    fn between(active: &Decision, shadow: &'a Result<Decision, Unverified>) -> Option<Self> {
        let a = outcome(active);
        let (s, rule) = match shadow {
            Ok(d) => (outcome(d), d.route_id().unwrap_or("_none")),
            Err(u) => ("unverified", &*u.route_id),
        };
        (a != s).then_some(Difference {
            active: a,
            shadow: s,
            rule,
        })
    }
}

fn outcome(d: &Decision) -> &'static str {
    match d {
        Decision::Allow(_) => "allow",
        Decision::Deny(d) => d.reason.code(),
    }
}

/// A per-second budget of log lines, shared by every worker thread (two atomics, no lock).
struct LogBudget {
    /// `second << 20 | lines logged in that second`.
    state: AtomicU64,
    /// Lines left out since the last logged one.
    suppressed: AtomicU64,
}

static LOG_BUDGET: LogBudget = LogBudget {
    state: AtomicU64::new(0),
    suppressed: AtomicU64::new(0),
};

// === impl LogBudget ===

impl LogBudget {
    /// `Some(lines left out before this one)` when this line may be logged in second `now`.
    fn take(&self, now: u64) -> Option<u64> {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (second, used) = (current >> 20, current & 0xF_FFFF);
            let next = if second == now {
                if used >= LOG_LINES_PER_SECOND {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                current + 1
            } else {
                (now << 20) | 1
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(seen) => current = seen,
            }
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::auth::Principal;
    use crate::policy::scope::GrantedScopes;

    const ACTIVE: &str = r#"version: 1
routes:
  - id: metadata
    methods: [GET]
    path: /metadata
    public: true
  - id: patient-read
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [patient/Patient.r] }
    patient: { segment: id }
"#;

    /// The candidate: Observation reads added, metadata no longer public.
    const CANDIDATE: &str = r#"version: 1
routes:
  - id: metadata-v2
    methods: [GET]
    path: /metadata
    scopes: { any_of: [system/CapabilityStatement.r] }
  - id: patient-read
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [patient/Patient.r] }
    patient: { segment: id }
  - id: observation-read
    methods: [GET]
    path: /Observation/{id}
    scopes: { any_of: [patient/Observation.r] }
"#;

    fn policy(src: &str) -> Policy {
        Policy::parse(src, Path::new("policy.yaml")).unwrap_or_else(|d| panic!("{d}"))
    }

    fn principal(scopes: &str) -> Principal {
        Principal {
            issuer: Arc::from("https://idp.example.org"),
            subject: Some("user-1".into()),
            client_id: Some("app".into()),
            fhir_user: None,
            patient: Some("123".into()),
            jti: None,
            expires_at: 0,
            scopes: GrantedScopes::parse(scopes.split(' ')),
        }
    }

    fn request(path: &str, auth: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder().method("GET").uri(path);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).expect("request").into_parts().0
    }

    /// The active decision as the proxy makes it (minus rate limits and audit health).
    fn active(p: &Policy, req: &http::request::Parts, who: Option<&Principal>) -> Decision {
        let facts = RequestFacts {
            method: &req.method,
            path: req.uri.path(),
            query: req.uri.query(),
        };
        let creds = match who {
            Some(p) => Credentials::Verified(p),
            None => Credentials::Anonymous,
        };
        evaluate(p, &facts, &creds).expect("decidable")
    }

    fn diff(
        shadow: &Policy,
        req: &http::request::Parts,
        who: Option<&Principal>,
    ) -> Option<(String, String, String)> {
        let active_policy = policy(ACTIVE);
        let a = active(&active_policy, req, who);
        let metrics = Metrics::new();
        observe(shadow, req, who, &a, "req-1", &metrics);
        let text = String::from_utf8(metrics.render()).expect("utf8");
        text.lines()
            .find(|l| l.starts_with("fhirwall_shadow_decisions_total{"))
            .map(|l| {
                let label = |k: &str| {
                    let start = l.find(&format!("{k}=\"")).expect("label") + k.len() + 2;
                    l[start..].split('"').next().expect("value").to_owned()
                };
                (label("active"), label("shadow"), label("rule"))
            })
    }

    #[test]
    fn a_route_the_candidate_adds_is_counted_as_deny_to_allow() {
        let shadow = policy(CANDIDATE);
        let who = principal("patient/Observation.r");
        let got = diff(
            &shadow,
            &request("/Observation/9", Some("Bearer t")),
            Some(&who),
        );
        assert_eq!(
            got,
            Some(("no_route".into(), "allow".into(), "observation-read".into()))
        );
    }

    #[test]
    fn a_route_that_stops_being_public_is_counted_with_the_shadow_route() {
        let shadow = policy(CANDIDATE);
        let got = diff(&shadow, &request("/metadata", None), None);
        assert_eq!(
            got,
            Some(("allow".into(), "missing_token".into(), "metadata-v2".into()))
        );
    }

    #[test]
    fn identical_decisions_are_evaluated_but_not_counted_as_differences() {
        let shadow = policy(CANDIDATE);
        let who = principal("patient/Patient.r");
        let req = request("/Patient/123", Some("Bearer t"));
        let metrics = Metrics::new();
        let a = active(&policy(ACTIVE), &req, Some(&who));
        observe(&shadow, &req, Some(&who), &a, "req-1", &metrics);
        assert_eq!(metrics.shadow_evaluations.get(), 1);
        let text = String::from_utf8(metrics.render()).expect("utf8");
        assert!(!text.contains("fhirwall_shadow_decisions_total{"), "{text}");
    }

    #[test]
    fn a_token_the_active_path_did_not_verify_is_not_guessed_at() {
        // Public under the active policy: the token was never verified, and the candidate
        // needs it. No second verification: the shadow outcome is `unverified`.
        let shadow = policy(CANDIDATE);
        let got = diff(&shadow, &request("/metadata", Some("Bearer t")), None);
        assert_eq!(
            got,
            Some(("allow".into(), "unverified".into(), "metadata-v2".into()))
        );
    }

    #[test]
    fn a_refused_token_stays_refused_on_a_protected_shadow_route() {
        let shadow = policy(CANDIDATE);
        let facts = RequestFacts {
            method: &http::Method::GET,
            path: "/Patient/123",
            query: None,
        };
        let refused = Denial::new(
            DenyReason::InvalidToken { cause: "expired" },
            "the token has expired",
        );
        let d = evaluate(&shadow, &facts, &Credentials::Refused(&refused)).expect("decidable");
        assert_eq!(d.reason_code(), "invalid_token");
        assert_eq!(d.route_id(), Some("patient-read"));
    }

    #[test]
    fn malformed_credentials_are_refused_even_on_a_public_route() {
        let shadow = policy(ACTIVE);
        let facts = RequestFacts {
            method: &http::Method::GET,
            path: "/metadata",
            query: None,
        };
        let d = evaluate(&shadow, &facts, &Credentials::Malformed("two headers")).expect("d");
        assert_eq!(d.reason_code(), "invalid_request");
    }

    #[test]
    fn refusals_that_are_not_the_policys_are_not_compared() {
        let shadow = policy(CANDIDATE);
        let req = request("/Observation/9", None);
        let metrics = Metrics::new();
        let limited = Decision::Deny(Denial::new(DenyReason::AuditUnavailable, "down"));
        observe(&shadow, &req, None, &limited, "req-1", &metrics);
        assert_eq!(metrics.shadow_evaluations.get(), 0);
    }

    #[test]
    fn the_log_budget_refills_each_second_and_reports_what_it_left_out() {
        let budget = LogBudget {
            state: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        };
        for _ in 0..LOG_LINES_PER_SECOND {
            assert_eq!(budget.take(100), Some(0));
        }
        assert_eq!(budget.take(100), None);
        assert_eq!(budget.take(100), None);
        assert_eq!(budget.take(101), Some(2));
        assert_eq!(budget.take(101), Some(0));
    }
}
