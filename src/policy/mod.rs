//! The policy: which requests are allowed, compiled once from a YAML file (`policies/`).
//!
//! [`Policy::route`] refuses unsafe paths ([`path`]) and finds the route for a method and
//! path in a compiled trie ([`route`], default deny); [`Policy::authorize`] decides, from the
//! route's scope requirement ([`scope`]) and the caller's [`Principal`], whether the request
//! may go upstream, confining `patient/` grants to the token's patient ([`patient`]). Both
//! return parts of the one [`Decision`] the rest of the gateway reads.
//!
//! Everything a decision needs is computed at load: route ids and rendered requirements are
//! shared strings, scopes are parsed, the trie is built. A decision allocates only for the
//! permit's `granted_by` text and for the details of a denial.

pub mod decision;
mod explain;
pub mod fhir;
mod load;
pub mod path;
pub mod patient;
pub mod r4;
pub mod route;
pub mod scope;
pub mod smart;

pub use decision::{Decision, Denial, DenyReason, Permit};
pub use explain::Explanation;

use std::path::Path;
use std::sync::Arc;

use crate::auth::Principal;
use crate::config::{Diagnostic, Diagnostics};
use crate::ratelimit::spec::RateLimitPolicy;

use self::patient::PatientBinding;
use self::route::{Captures, Trie};
use self::scope::{Evaluation, ScopeRequirement};

/// A compiled policy. Immutable; share it behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    version: Arc<str>,
    routes: Box<[Route]>,
    trie: Trie,
    warnings: Diagnostics,
    /// The literal `base_path` (`""` when none).
    base_path: Box<str>,
    /// `quotas:` and `distinct_patients:`.
    rate_limits: RateLimitPolicy,
    /// The `fhir:` section: SMART enforcement derived per request under a FHIR base.
    fhir: Option<smart::FhirSection>,
}

/// One compiled route.
#[derive(Debug)]
struct Route {
    id: Arc<str>,
    public: bool,
    /// The requirement rendered once (`""` for public routes).
    required: Arc<str>,
    requirement: ScopeRequirement,
    patient: Option<PatientBinding>,
    /// Parameter names in capture order.
    params: Box<[Box<str>]>,
}

/// The route a request matched. Holds no borrow of the request path (captures are byte
/// ranges), so the proxy can keep it across the token verification `await`;
/// [`Policy::authorize`] is given the same path again.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'p> {
    route: &'p Route,
    captures: Captures,
}

/// An empty `granted_by` does not allocate.
const NOTHING: &str = "";

impl Policy {
    /// Loads and compiles the policy file at `path`.
    pub fn load(path: &Path) -> Result<Policy, Diagnostics> {
        match std::fs::read_to_string(path) {
            Ok(src) => Policy::parse(&src, path),
            Err(e) => {
                let mut d = Diagnostics::default();
                d.push(Diagnostic::error(
                    path,
                    0,
                    0,
                    "",
                    format!("cannot read the policy file: {e}"),
                ));
                Err(d)
            }
        }
    }

    /// Compiles policy source text; `path` is used in diagnostics. On failure, returns every
    /// problem found (errors, and any warnings found along the way).
    pub fn parse(src: &str, path: &Path) -> Result<Policy, Diagnostics> {
        load::compile(src, path)
    }

    /// Non-fatal findings (lint) from the load.
    pub fn warnings(&self) -> &Diagnostics {
        &self.warnings
    }

    /// Content hash of the policy source (first 16 hex digits of its SHA-256), for audit
    /// records and the info metric.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The version as a shared string (cheap to clone into audit records).
    pub fn version_arc(&self) -> &Arc<str> {
        &self.version
    }

    /// The policy's `base_path` (`""` when it has none).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The policy's quotas and distinct-patients guard.
    pub fn rate_limits(&self) -> &RateLimitPolicy {
        &self.rate_limits
    }

    /// The `fhir:` section, when the policy declares a FHIR base whose requests fhirwall
    /// classifies itself (requests an explicit route does not match go there).
    pub fn fhir(&self) -> Option<&smart::FhirSection> {
        self.fhir.as_ref()
    }

    /// Every route id, in file order, for pre-registering metric labels.
    pub fn route_ids(&self) -> Vec<Arc<str>> {
        self.routes.iter().map(|r| r.id.clone()).collect()
    }

    /// Checks the path is safe and finds its route. `path` is the raw request path (no
    /// query). Errors are complete denials (unsafe path: 400; no route: 403). A path whose
    /// most specific pattern does not allow `method` has no route.
    pub fn route(&self, method: &http::Method, path: &str) -> Result<RouteMatch<'_>, Denial> {
        if let Err(e) = path::check(path) {
            return Err(Denial::new(DenyReason::UnsafePath, e.to_string()));
        }
        let no_route = || {
            Denial::new(
                DenyReason::NoRoute,
                format!("no policy route allows {} on this path", method.as_str()),
            )
        };
        let m = route::method_index(method).ok_or_else(no_route)?;
        let found = self.trie.find(path).ok_or_else(no_route)?;
        let idx = found.route_for(m).ok_or_else(no_route)?;
        Ok(RouteMatch {
            route: &self.routes[idx as usize],
            captures: found.captures,
        })
    }

    /// Decides a matched request. `principal` is `None` when the request carried no token;
    /// public routes allow it, others deny with [`DenyReason::MissingToken`]. `path` must be
    /// the path given to [`Policy::route`]; `query` is the raw query string, without `?`.
    pub fn authorize(
        &self,
        m: &RouteMatch<'_>,
        path: &str,
        query: Option<&str>,
        principal: Option<&Principal>,
    ) -> Decision {
        let r = m.route;
        if r.public {
            return Decision::Allow(Permit::new(
                r.id.clone(),
                true,
                r.required.clone(),
                NOTHING.into(),
            ));
        }
        let deny = |reason, detail: std::borrow::Cow<'static, str>| {
            Decision::Deny(Denial::new(reason, detail).on_route(r.id.clone(), r.required.clone()))
        };
        let Some(principal) = principal else {
            return deny(
                DenyReason::MissingToken,
                "this route requires a bearer token".into(),
            );
        };
        let mut unconfined = None;
        let evaluation = r.requirement.evaluate(&principal.scopes, || {
            let Some(binding) = &r.patient else {
                // No binding on the route: nothing to confine by (the loader warns).
                return true;
            };
            let result = patient::check(
                binding,
                |i| m.captures.get(path, i),
                query,
                principal.patient.as_deref(),
            );
            unconfined = result.err();
            result.is_ok()
        });
        match evaluation {
            Evaluation::Satisfied { alternative, .. } => Decision::Allow(Permit::new(
                r.id.clone(),
                false,
                r.required.clone(),
                r.requirement.granted_by(&principal.scopes, alternative),
            )),
            Evaluation::OutsideContext => {
                let detail = match (unconfined, &r.patient) {
                    (Some(u), Some(b)) => u.detail(b),
                    // Unreachable: OutsideContext means the check above ran and failed.
                    _ => "this token's patient/ scopes are limited to its patient context".into(),
                };
                deny(DenyReason::PatientContext, detail)
            }
            Evaluation::Insufficient => {
                let needed = r.requirement.needed(&principal.scopes);
                let detail =
                    format!("the token's scopes do not allow this request; it needs {needed}");
                deny(
                    DenyReason::InsufficientScope {
                        needed: needed.into_boxed_str(),
                    },
                    detail.into(),
                )
            }
        }
    }
}

impl RouteMatch<'_> {
    /// The matched route's id.
    pub fn route_id(&self) -> &Arc<str> {
        &self.route.id
    }

    /// True when the route needs no token.
    pub fn is_public(&self) -> bool {
        self.route.public
    }

    /// The route's requirement rendered as text (for denials and audit), e.g.
    /// `any_of: patient/Patient.r user/Patient.r`; `""` for public routes.
    pub fn required(&self) -> &Arc<str> {
        &self.route.required
    }

    /// The value captured for the pattern parameter `name`, sliced out of `path` (the path
    /// that was matched). A `{*tail}` capture spans several segments.
    pub fn capture<'a>(&self, path: &'a str, name: &str) -> Option<&'a str> {
        let i = self.route.params.iter().position(|p| &**p == name)?;
        self.captures.get(path, i)
    }
}

#[cfg(test)]
mod tests;
