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
//! INTEGRATION STUB: signatures fixed; bodies are being written (engine: `engine.rs`; R4
//! tables and resource inspection: `compartment.rs`).

pub mod compartment;

use std::fmt;
use std::sync::Arc;

use http::Method;

use super::decision::{Decision, Denial};
use crate::auth::Principal;

/// The compiled `fhir:` section of a policy. Immutable, shared with the [`super::Policy`].
#[derive(Debug)]
pub struct FhirSection {
    /// The FHIR base path (e.g. `/fhir`), no trailing slash.
    base_path: Box<str>,
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
}

/// What a returned (or stored) resource must satisfy: at least one alternative. For a
/// Bundle (history, searchset, batch-response entry), every entry's `resource`.
#[derive(Debug, Clone)]
pub struct ResourceCheck {
    alternatives: Arc<[Alternative]>,
}

/// One way a resource can be allowed: in the compartment of `patient` (if set) and
/// matching the granular query (if set). Both unset never appears (no check needed).
#[derive(Debug, Clone)]
struct Alternative {
    #[allow(dead_code)]
    patient: Option<Arc<str>>,
    #[allow(dead_code)]
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
    pub fn assess(&self, _req: &FhirRequest<'_>, _principal: Option<&Principal>) -> Assessment {
        todo!("engine")
    }

    /// Query parameter names that mark a server's next-page links (`_getpages`): a request
    /// at the base carrying one is a page request, authorized only through a remembered
    /// search (the proxy's paging store), never as a system search.
    pub fn page_parameters(&self) -> &[Box<str>] {
        todo!("engine")
    }

    /// The resource scopes fhirwall enforces, for `scopes_supported` in the SMART
    /// configuration it serves.
    pub fn scopes_supported(&self) -> Vec<String> {
        todo!("engine")
    }
}

// === impl ResourceCheck ===

impl ResourceCheck {
    /// Checks a returned resource (or every entry resource of a Bundle).
    pub fn check(&self, _resource: &serde_json::Value) -> Result<(), Violation> {
        let _ = &self.alternatives;
        todo!("engine")
    }
}

// === impl Trace ===

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            writeln!(f, "- {}: {}", s.rule, s.finding)?;
        }
        Ok(())
    }
}
