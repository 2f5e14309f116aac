//! The policy evaluation of one request, after authentication: pure (no session, no IO), so
//! the same function decides for the live policy and for a shadow policy.
//!
//! Routing order (issue 3 contract): an explicit route decides as before; a path no route
//! matches that lies at or below the `fhir:` base goes to the FHIR engine; anything else is
//! refused (default deny). Path-safety refusals from [`Policy::route`] are final.

use http::Method;

use super::paging::Remembered;
use crate::auth::Principal;
use crate::policy::smart::{Assessment, FhirRequest, Verdict};
use crate::policy::{Decision, DenyReason, Policy};

/// What the policy decides on.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request path (no query).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// `If-None-Exist` (conditional create).
    pub if_none_exist: Option<&'a str>,
    /// `Content-Type`.
    pub content_type: Option<&'a str>,
    /// The request body, once read for the engine.
    pub body: Option<&'a [u8]>,
    /// The search this request is a remembered page link of: it is then decided as that
    /// search (see [`super::paging`]).
    pub page_of: Option<&'a Remembered>,
}

/// The outcome of [`evaluate`].
#[derive(Debug)]
pub enum Evaluated {
    /// Decided by an explicit route (or refused before any rule applied).
    Decision(Decision),
    /// Decided by the FHIR engine, with the checks that remain and the trace.
    Verdict(Box<Verdict>),
    /// The FHIR engine needs the body (at most `max` bytes) to decide.
    NeedsBody {
        /// The largest body the engine accepts.
        max: usize,
    },
}

// === impl Evaluated ===

impl Evaluated {
    /// The decision, unless the body is still needed.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Evaluated::Decision(d) => Some(d),
            Evaluated::Verdict(v) => Some(&v.decision),
            Evaluated::NeedsBody { .. } => None,
        }
    }
}

/// True when `path` is the base path or below it.
pub fn under_base(path: &str, base: &str) -> bool {
    path.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Decides a request under `policy` for `principal` (`None`: no token).
pub fn evaluate(
    policy: &Policy,
    facts: &RequestFacts<'_>,
    principal: Option<&Principal>,
) -> Evaluated {
    let denial = match policy.route(facts.method, facts.path) {
        Ok(m) => {
            return Evaluated::Decision(policy.authorize(&m, facts.path, facts.query, principal))
        }
        Err(d) => d,
    };
    let fhir = policy
        .fhir()
        .filter(|f| denial.reason == DenyReason::NoRoute && under_base(facts.path, f.base_path()));
    let Some(fhir) = fhir else {
        return Evaluated::Decision(Decision::Deny(denial));
    };
    let req = match facts.page_of {
        // A page is authorized exactly as the search that produced it.
        Some(search) => FhirRequest {
            method: &Method::GET,
            path: &search.path,
            query: search.query.as_deref(),
            if_none_exist: None,
            content_type: None,
            body: None,
        },
        None => FhirRequest {
            method: facts.method,
            path: facts.path,
            query: facts.query,
            if_none_exist: facts.if_none_exist,
            content_type: facts.content_type,
            body: facts.body,
        },
    };
    match fhir.assess(&req, principal) {
        Assessment::Verdict(v) => Evaluated::Verdict(v),
        Assessment::NeedsBody { max } => Evaluated::NeedsBody { max },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_and_paths_below_it_are_under_the_base() {
        assert!(under_base("/fhir", "/fhir"));
        assert!(under_base("/fhir/Patient/1", "/fhir"));
        assert!(!under_base("/fhirx", "/fhir"));
        assert!(under_base("/Patient", ""));
    }
}
