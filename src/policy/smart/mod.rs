//! SMART on FHIR authorization of FHIR R4 requests under the policy's `fhir:` base.
//!
//! Explicit routes cover legacy endpoints; for a FHIR base the policy only says "this prefix
//! is FHIR R4, enforce SMART scopes" and this module works out every request's needs itself
//! (SMART App Launch 2.2 "Scopes and Launch Context"; FHIR R4 http.html, search.html, the
//! patient CompartmentDefinition; SMART-SEMANTICS.md is the reference).
//!
//! One call, [`FhirSection::assess`], turns a request (method, path, query, the headers that
//! matter, and the body when asked for) and the caller's [`Principal`] into a [`Verdict`]:
//! the one [`Decision`], the [`Checks`] the proxy must still run (response body, stored
//! version, batch entries), and the [`Trace`] that explains it.
//!
//! The engine is in `engine.rs` (decisions), `check.rs` (response, stored-version and body
//! checks); the R4 tables and resource inspection are in `compartment.rs`.

mod check;
pub mod compartment;
mod engine;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use super::decision::{Decision, Denial};
use super::r4::ResourceType;
use super::scope::{ScopeRequirement, ScopeType};
use crate::auth::Principal;

/// The compiled `fhir:` section of a policy. Immutable, shared with the [`super::Policy`].
#[derive(Debug)]
pub struct FhirSection {
    /// The FHIR base path (e.g. `/fhir`), no trailing slash.
    base_path: Box<str>,
    /// `patient_scopes_outside_compartment` (SMART-SEMANTICS §3.4).
    outside_compartment: OutsideCompartment,
    /// `granular_search` (SMART-SEMANTICS §6).
    granular_search: GranularSearch,
    max_body_bytes: usize,
    max_response_bytes: usize,
    /// Absolute base URLs under which a reference counts as local.
    server_urls: Arc<[Box<str>]>,
    page_parameters: Box<[Box<str>]>,
    paging_ttl: Duration,
    paging_max_links: u64,
    /// Operations the policy enables beyond the built-in ones (SMART-SEMANTICS §8).
    operations: Box<[OperationRule]>,
    /// `fhir:<interaction>` route ids, shared so a decision does not allocate them.
    route_ids: Box<[(&'static str, Arc<str>)]>,
}

/// What `patient/` grants do on types outside the patient compartment (SMART-SEMANTICS §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutsideCompartment {
    /// Allowed without patient filtering (the default).
    Allow,
    /// Refused: `patient/` grants only reach compartment types.
    Deny,
}

/// What a granular grant does for a search not narrowed to its query (SMART-SEMANTICS §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GranularSearch {
    /// Refuse the search (the default).
    Deny,
    /// Forward it with the grant's query items appended ([`Checks::add_query`]).
    Narrow,
}

/// An operation the policy enables: `operations:` in the `fhir:` section.
#[derive(Debug, Clone)]
pub struct OperationRule {
    /// The name without `$`.
    pub name: Box<str>,
    /// Where it may be invoked.
    pub level: super::fhir::Level,
    /// The types it may be invoked on (`None`: any; always `None` at system level).
    pub types: Option<Box<[ResourceType]>>,
    /// The allowed methods (`GET`, `POST`).
    pub methods: Box<[Method]>,
    /// The scopes it needs.
    pub scopes: ScopeRequirement,
    /// `scopes` rendered once.
    pub required: Arc<str>,
}

/// The settings of a `fhir:` section, as read by the policy loader.
#[derive(Debug)]
pub(crate) struct FhirSettings {
    pub base_path: Box<str>,
    pub outside_compartment: OutsideCompartment,
    pub granular_search: GranularSearch,
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    pub server_urls: Vec<Box<str>>,
    pub page_parameters: Vec<Box<str>>,
    pub paging_ttl: Duration,
    pub paging_max_links: u64,
    pub operations: Vec<OperationRule>,
}

/// What the engine reads about a request.
#[derive(Debug, Clone, Copy)]
pub struct FhirRequest<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The full request path (starting with the base path), already through
    /// [`super::path::check`].
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The `If-None-Exist` header (conditional create), if any.
    pub if_none_exist: Option<&'a str>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// The complete request body, when the engine asked for it ([`Assessment::NeedsBody`]).
    pub body: Option<&'a [u8]>,
}

/// The result of [`FhirSection::assess`].
#[derive(Debug)]
pub enum Assessment {
    /// Decided.
    Verdict(Box<Verdict>),
    /// The body must be read (at most `max` bytes; larger is refused with 413 by the proxy)
    /// and `assess` called again with it.
    NeedsBody {
        /// The most the engine accepts.
        max: usize,
    },
}

/// The decision about a FHIR request, what remains to be checked, and why.
#[derive(Debug)]
pub struct Verdict {
    /// Allow or deny. An allow is conditional on every check in `checks` passing.
    pub decision: Decision,
    /// Checks the proxy must run before or after forwarding.
    pub checks: Checks,
    /// Why: every rule applied, for the 403 body, the audit record and `fhirwall explain`.
    pub trace: Trace,
    /// What the request was classified as (`None` when it could not be classified), for
    /// the audit record.
    pub request: Option<Classified>,
}

/// The audit facts of a classified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The interaction (`read`, `search-type`, `batch`, `operation`, ...): the route id
    /// without `fhir:`.
    pub interaction: &'static str,
    /// The resource type in the URL, if any.
    pub resource_type: Option<ResourceType>,
    /// The logical id in the URL (instance interactions; the compartment id of a
    /// compartment search).
    pub resource_id: Option<Box<str>>,
}

/// Checks that only the stored data or the response can settle.
#[derive(Debug, Default)]
pub struct Checks {
    /// Resources to read upstream (current version) and check before forwarding an update,
    /// patch or delete that a `patient/` grant allows (SMART-SEMANTICS §3.3, A23).
    pub before: Vec<StoredCheck>,
    /// The response body must pass this (instance reads of compartment types under
    /// `patient/`, granular scopes on reads). `None`: stream the response untouched.
    pub response: Option<ResourceCheck>,
    /// Query items (`name=value`, already encoded) to append to the forwarded query, when
    /// the policy narrows granular searches instead of refusing them.
    pub add_query: Option<Box<str>>,
    /// For a batch: the plan per entry (SMART-SEMANTICS §7).
    pub batch: Option<BatchPlan>,
    /// A search whose response carries next-page links the proxy must remember, so that a
    /// page request is authorized exactly as this search.
    pub remember_pages: bool,
}

/// A resource to read upstream before forwarding, and the check it must pass.
#[derive(Debug, Clone)]
pub struct StoredCheck {
    /// The path below the base to `GET` (`Observation/abc`).
    pub path: Box<str>,
    /// What the stored resource must satisfy.
    pub check: ResourceCheck,
    /// For a batch: the index of the entry this check guards; a failure refuses only that
    /// entry. `None`: the whole request (top-level requests, transactions).
    pub entry: Option<usize>,
}

/// What a returned (or stored) resource must satisfy. For a Bundle (history, searchset,
/// batch-response, transaction-response), every entry's `resource`.
#[derive(Debug, Clone)]
pub struct ResourceCheck {
    rules: Arc<check::Rules>,
}

/// One way a resource of a type covered by `target` can be allowed: in the compartment of
/// `patient` (if set; types outside it when `outside_ok`) and matching the granular query
/// (if set).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alternative {
    target: ScopeType,
    patient: Option<Arc<str>>,
    /// With `patient`: resources of types outside the patient compartment pass (a `*`
    /// grant under `patient_scopes_outside_compartment: allow`, SMART-SEMANTICS §3.4).
    outside_ok: bool,
    filter: Option<super::scope::GranularQuery>,
}

/// Why a resource failed a [`ResourceCheck`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

/// The per-entry plan of a batch Bundle.
#[derive(Debug)]
pub struct BatchPlan {
    /// One per entry of the original Bundle, in order.
    pub entries: Vec<EntryPlan>,
}

/// One batch entry: forwarded (with an optional check of its response entry), or answered
/// here with the denial.
#[derive(Debug)]
pub enum EntryPlan {
    /// Forward; check the response entry's resource if set.
    Forward(Option<ResourceCheck>),
    /// Do not forward; answer this entry with the denial's status and OperationOutcome.
    Refuse(Denial),
}

/// The reasons behind a decision, in the order they were applied.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The steps.
    pub steps: Vec<TraceStep>,
}

/// One step of a [`Trace`].
#[derive(Debug, Clone)]
pub struct TraceStep {
    /// The rule and where it comes from (`SAL2 scopes: r = read, vread, instance history`).
    pub rule: &'static str,
    /// What it found for this request.
    pub finding: String,
}

// === impl FhirSection ===

impl FhirSection {
    /// The FHIR base path, e.g. `/fhir`.
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Decides a request under the base. `principal` is `None` without a token (only
    /// public interactions, `GET metadata` and `GET .well-known/smart-configuration`, pass).
    pub fn assess(&self, req: &FhirRequest<'_>, principal: Option<&Principal>) -> Assessment {
        engine::assess(self, req, principal)
    }

    /// Query parameter names that mark a server's next-page links (`_getpages`): a request
    /// at the base carrying one is a page request, authorized only through a remembered
    /// search (the proxy's paging store), never as a system search.
    pub fn page_parameters(&self) -> &[Box<str>] {
        &self.page_parameters
    }

    /// The scopes fhirwall enforces, for `scopes_supported` in the SMART configuration it
    /// serves: the SMART v2 resource scopes in each context (with the v1 forms, which map
    /// onto them) and the launch and identity scopes an authorization server passes through
    /// (they grant no data here; SAL2 "Scopes for requesting context data").
    pub fn scopes_supported(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ctx in ["patient", "user", "system"] {
            for perms in ["cruds", "rs", "read", "write", "*"] {
                if ctx == "system" && perms == "*" {
                    continue;
                }
                out.push(format!("{ctx}/*.{perms}"));
            }
        }
        for s in [
            "openid",
            "fhirUser",
            "profile",
            "launch",
            "launch/patient",
            "launch/encounter",
            "offline_access",
            "online_access",
        ] {
            out.push(s.to_owned());
        }
        out
    }

    /// Request bodies read for a decision are at most this long (larger: 413).
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Response bodies held for a check are at most this long (larger: 403, fail closed).
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// This server's absolute base URLs (`server_urls`), under which references and
    /// Bundle entry URLs count as local.
    pub fn server_urls(&self) -> &[Box<str>] {
        &self.server_urls
    }

    /// How long a remembered page link stays valid.
    pub fn paging_ttl(&self) -> Duration {
        self.paging_ttl
    }

    /// The most page links remembered at once.
    pub fn paging_max_links(&self) -> u64 {
        self.paging_max_links
    }

    /// `patient_scopes_outside_compartment`.
    pub fn outside_compartment(&self) -> OutsideCompartment {
        self.outside_compartment
    }

    /// `granular_search`.
    pub fn granular_search(&self) -> GranularSearch {
        self.granular_search
    }

    /// The operations the policy enables beyond the built-in ones.
    pub fn operations(&self) -> &[OperationRule] {
        &self.operations
    }

    /// Compiles the loader's settings.
    pub(crate) fn new(s: FhirSettings) -> FhirSection {
        let route_ids = engine::ROUTE_CODES
            .iter()
            .map(|&c| (c, Arc::from(format!("fhir:{c}"))))
            .collect();
        FhirSection {
            base_path: s.base_path,
            outside_compartment: s.outside_compartment,
            granular_search: s.granular_search,
            max_body_bytes: s.max_body_bytes,
            max_response_bytes: s.max_response_bytes,
            server_urls: s.server_urls.into(),
            page_parameters: s.page_parameters.into(),
            paging_ttl: s.paging_ttl,
            paging_max_links: s.paging_max_links,
            operations: s.operations.into(),
            route_ids,
        }
    }

    /// The shared `fhir:<code>` route id.
    fn route_id(&self, code: &str) -> Arc<str> {
        self.route_ids
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, id)| id.clone())
            .unwrap_or_else(|| Arc::from(format!("fhir:{code}")))
    }
}

// === impl Verdict ===

impl Verdict {
    /// A one-line summary of the trace, for 403 diagnostics and audit records.
    pub fn summary(&self) -> String {
        self.trace.summary()
    }
}

// === impl Trace ===

impl Trace {
    /// The findings joined with `; `.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(&s.finding);
        }
        out
    }

    pub(crate) fn step(&mut self, rule: &'static str, finding: impl Into<String>) {
        self.steps.push(TraceStep {
            rule,
            finding: finding.into(),
        });
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            writeln!(f, "- {}: {}", s.rule, s.finding)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
