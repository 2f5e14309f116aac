//! The checks only data can settle: a returned resource (or every resource of a returned
//! Bundle), the stored version of a resource before it is changed, and a request body before
//! it is written (SMART-SEMANTICS §3.3 "decided on the response ... or by an upstream read",
//! §6 items 3 and 4).
//!
//! Everything here fails closed: a resource without a known `resourceType`, a parameter the
//! R4 tables cannot evaluate, an unresolvable reference, all count as "not allowed".

use std::sync::Arc;

use serde_json::Value;

use super::compartment::{self, PatientRef};
use super::{Alternative, ResourceCheck, Violation};
use crate::policy::r4::ResourceType;
use crate::policy::scope::{GranularQuery, ScopeType};

/// How deep Bundles inside Bundles are followed (a searchset entry holding a Bundle).
const MAX_DEPTH: usize = 4;

/// The rules of a [`ResourceCheck`].
#[derive(Debug)]
pub(super) enum Rules {
    /// Each resource must be of a `free` type, or pass an alternative covering its type.
    Resources {
        free: Box<[ScopeType]>,
        alternatives: Box<[Alternative]>,
        bases: Arc<[Box<str>]>,
    },
    /// A transaction-response: entry `i` is checked by check `i` (`None`: unchecked).
    PerEntry(Box<[Option<ResourceCheck>]>),
}

// === impl ResourceCheck ===

impl ResourceCheck {
    /// A check of resources: types in `free` pass as they are, others must pass one of
    /// `alternatives`. `None` when nothing would ever be refused (no alternatives).
    pub(super) fn resources(
        free: Vec<ScopeType>,
        alternatives: Vec<Alternative>,
        bases: Arc<[Box<str>]>,
    ) -> Option<ResourceCheck> {
        if alternatives.is_empty() {
            return None;
        }
        Some(ResourceCheck {
            rules: Arc::new(Rules::Resources {
                free: free.into(),
                alternatives: alternatives.into(),
                bases,
            }),
        })
    }

    /// A check of a transaction-response Bundle, entry by entry. `None` when no entry has a
    /// check.
    pub(super) fn per_entry(entries: Vec<Option<ResourceCheck>>) -> Option<ResourceCheck> {
        if entries.iter().all(Option::is_none) {
            return None;
        }
        Some(ResourceCheck {
            rules: Arc::new(Rules::PerEntry(entries.into())),
        })
    }

    /// Checks a returned resource (or every entry resource of a Bundle).
    pub fn check(&self, resource: &Value) -> Result<(), Violation> {
        match &*self.rules {
            Rules::Resources {
                free,
                alternatives,
                bases,
            } => {
                let bases: Vec<&str> = bases.iter().map(|b| &**b).collect();
                check_resource(free, alternatives, &bases, resource, 0)
            }
            Rules::PerEntry(checks) => {
                // FHIR R4 http.html#transaction-response: one entry per request entry, in
                // order; anything else cannot be matched up, so it is refused.
                let entries = bundle_entries(resource)
                    .filter(|_| resource.get("type").and_then(Value::as_str) != Some("searchset"))
                    .ok_or_else(|| {
                        violation("the response is not a transaction-response Bundle")
                    })?;
                if entries.len() != checks.len() {
                    return Err(violation(
                        "the transaction-response does not have one entry per request entry",
                    ));
                }
                for (entry, check) in entries.iter().zip(checks.iter()) {
                    if let (Some(check), Some(r)) = (check, entry.get("resource")) {
                        check.check(r)?;
                    }
                }
                Ok(())
            }
        }
    }
}

fn violation(s: impl Into<String>) -> Violation {
    Violation(s.into())
}

/// The `entry` array of a Bundle, if `v` is one.
fn bundle_entries(v: &Value) -> Option<&Vec<Value>> {
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return None;
    }
    match v.get("entry") {
        None => Some(const { &Vec::new() }),
        Some(e) => e.as_array(),
    }
}

fn check_resource(
    free: &[ScopeType],
    alternatives: &[Alternative],
    bases: &[&str],
    v: &Value,
    depth: usize,
) -> Result<(), Violation> {
    let Some(rt) = v.get("resourceType").and_then(Value::as_str) else {
        return Err(violation("a returned body is not a FHIR resource"));
    };
    if rt == "Bundle" {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        // R4 bundle-type: these carry the results of interactions; each entry resource is
        // what the client sees.
        if matches!(
            kind,
            "searchset" | "history" | "batch-response" | "transaction-response"
        ) {
            if depth >= MAX_DEPTH {
                return Err(violation("Bundles nested too deeply to check"));
            }
            let entries = bundle_entries(v)
                .ok_or_else(|| violation("a returned Bundle has a malformed `entry`"))?;
            for e in entries {
                if let Some(r) = e.get("resource") {
                    check_resource(free, alternatives, bases, r, depth + 1)?;
                } else if let Some(o) = e.pointer("/response/outcome") {
                    check_resource(free, alternatives, bases, o, depth + 1)?;
                }
            }
            return Ok(());
        }
    }
    // Search outcomes and error answers carry no resource data of a type.
    if rt == "OperationOutcome" {
        return Ok(());
    }
    let Some(t) = ResourceType::from_name(rt) else {
        return Err(violation(format!(
            "a returned resource has an unknown type `{rt}`"
        )));
    };
    if free.iter().any(|f| f.covers(ScopeType::Type(t))) {
        return Ok(());
    }
    for alt in alternatives
        .iter()
        .filter(|a| a.target.covers(ScopeType::Type(t)))
    {
        let in_patient = match &alt.patient {
            None => true,
            // §3.4: a `patient/*` grant reaches types outside the compartment unfiltered
            // unless the policy refuses that.
            Some(_) if alt.outside_ok && !t.in_patient_compartment() => true,
            Some(p) => compartment::in_compartment(v, p, bases),
        };
        if in_patient && alt.filter.as_ref().is_none_or(|q| matches_query(t, q, v)) {
            return Ok(());
        }
    }
    let why = if alternatives.iter().any(|a| a.patient.is_some()) {
        "outside the token's patient compartment or granular scopes"
    } else {
        "outside the token's granular scopes"
    };
    Err(violation(format!("a returned {rt} is {why}")))
}

/// True when `resource` (of type `t`) matches every item of a granular query; a parameter
/// the tables cannot evaluate does not match (SMART-SEMANTICS §6 item 5).
pub(super) fn matches_query(t: ResourceType, q: &GranularQuery, resource: &Value) -> bool {
    q.pairs()
        .all(|(n, v)| compartment::matches_param(t, n, v, resource) == Ok(true))
}

/// Why a written body is refused under a `patient/` grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyRefusal {
    /// The body references no patient through the type's compartment elements.
    NoPatient,
    /// It references another patient, another server, or something unresolvable.
    OtherPatient,
    /// A Patient body whose `id` is not the context patient.
    OtherPatientId,
}

impl BodyRefusal {
    pub(super) fn detail(self) -> &'static str {
        match self {
            BodyRefusal::NoPatient => "the resource written does not reference the context patient",
            BodyRefusal::OtherPatient => {
                "the resource written references a patient other than the context patient"
            }
            BodyRefusal::OtherPatientId => "the Patient written is not the context patient",
        }
    }
}

/// SMART-SEMANTICS §3.3 "create / update body": evaluated with `t`'s inclusion
/// parameters, the body references `Patient/<patient>` and no other patient.
pub(super) fn body_in_compartment(
    t: ResourceType,
    body: &Value,
    patient: &str,
    bases: &[Box<str>],
) -> Result<(), BodyRefusal> {
    if t.name() == "Patient" {
        return match body.get("id").and_then(Value::as_str) {
            Some(id) if id == patient => Ok(()),
            _ => Err(BodyRefusal::OtherPatientId),
        };
    }
    let bases: Vec<&str> = bases.iter().map(|b| &**b).collect();
    let refs = compartment::patient_references(t, body, &bases);
    if refs.is_empty() {
        return Err(BodyRefusal::NoPatient);
    }
    if refs
        .iter()
        .all(|r| matches!(r, PatientRef::Local(id) if id == patient))
    {
        Ok(())
    } else {
        Err(BodyRefusal::OtherPatient)
    }
}

/// Under a `patient/` grant, a JSON Patch (RFC 6902) may not touch the elements that tie a
/// resource to its patient (the type's compartment inclusion elements), its `id`, or the
/// whole document: the stored version is checked before forwarding, so a patch that leaves
/// those elements alone keeps the resource in the compartment. Other patch formats
/// (FHIRPath Patch, XML Patch) are not inspected and refused.
pub(super) fn json_patch_keeps_compartment(t: ResourceType, patch: &Value) -> bool {
    let Some(ops) = patch.as_array() else {
        return false;
    };
    let mut guarded: Vec<&str> = vec!["id", "resourceType", "meta"];
    if t.name() == "Patient" {
        guarded.push("link");
    }
    for p in compartment::inclusion_params(t) {
        for path in p.paths {
            guarded.push(path.split('.').next().unwrap_or(path));
        }
    }
    let touches = |ptr: &str| -> bool {
        // A JSON Pointer: "" (whole document) or "/member/...". `~1`/`~0` escapes cannot
        // produce an element name, so compare the first reference token as written.
        let Some(rest) = ptr.strip_prefix('/') else {
            return true;
        };
        let first = rest.split('/').next().unwrap_or("");
        first.is_empty() || guarded.contains(&first) || first.contains('~')
    };
    ops.iter().all(|op| {
        let path = op.get("path").and_then(Value::as_str);
        let from = op.get("from").and_then(Value::as_str);
        match path {
            None => false,
            Some(p) => !touches(p) && from.is_none_or(|f| !touches(f)),
        }
    })
}
