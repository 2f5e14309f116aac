//! FHIR R4 tables and resource inspection for SMART enforcement: the patient
//! CompartmentDefinition (which types, through which search parameters and elements), the
//! target types of reference search parameters (for `_include`, chains), and the token
//! search parameters granular scopes use (`category`, `code`, `status`, ...).
//!
//! Sources: FHIR R4 4.0.1 `compartmentdefinition-patient.json` and `search-parameters.json`
//! (SMART-SEMANTICS §3.2, §5, §6).
//!
//! INTEGRATION STUB: signatures fixed; bodies are being written.

use serde_json::Value;

use crate::policy::r4::ResourceType;

/// A search parameter through which a type is in the patient compartment (R4-COMP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InclusionParam {
    /// The search parameter code, e.g. `subject`.
    pub name: &'static str,
    /// The parameter's only R4 target is `Patient`, so a bare id value is unambiguous.
    pub patient_only: bool,
    /// The resource elements the parameter indexes, as simple dotted paths from the
    /// resource root (`subject`, `participant.actor`), each ending in a `Reference`.
    pub paths: &'static [&'static str],
}

/// A patient reference found in a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatientRef {
    /// `Patient/<id>` (relative, or absolute with one of the given base URLs).
    Local(String),
    /// A reference fhirwall cannot tie to a local patient: another server's URL, a
    /// contained (`#x`) or logical (identifier-only) reference to a Patient, or an
    /// unparseable reference.
    Unresolvable,
}

/// A search parameter (or value form) the resource inspection cannot evaluate: fail closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot evaluate search parameter `{0}` on a resource")]
pub struct Unsupported(pub String);

/// The inclusion parameters of `t` in the patient compartment; empty when `t` is not in it.
/// For `Patient` itself: `link`.
pub fn inclusion_params(_t: ResourceType) -> &'static [InclusionParam] {
    todo!("compartment tables")
}

/// True when `t` has a `patient` search parameter whose only target is `Patient` (the
/// `+patient` types of SMART-SEMANTICS §3.2, e.g. Observation), which confines a search.
pub fn has_patient_param(_t: ResourceType) -> bool {
    todo!("compartment tables")
}

/// The R4 target types of the reference search parameter `param` of `t`; `None` when `t`
/// has no such reference parameter (unknown or not a reference). An `Any`-target
/// parameter returns every resource type.
pub fn reference_targets(_t: ResourceType, _param: &str) -> Option<&'static [ResourceType]> {
    todo!("compartment tables")
}

/// The patient references `resource` (of type `t`) makes through its compartment inclusion
/// elements. `bases` are this server's absolute base URLs (`https://ehr.example/fhir`),
/// under which an absolute reference counts as local.
pub fn patient_references(_t: ResourceType, _resource: &Value, _bases: &[&str]) -> Vec<PatientRef> {
    todo!("compartment tables")
}

/// True when `resource` is in the compartment of patient `patient`: a `Patient` whose `id`
/// is `patient`, or a compartment-type resource with an inclusion reference to
/// `Patient/<patient>`. A resource whose `resourceType` is missing or unknown, or of a
/// type outside the compartment, is not in it.
pub fn in_compartment(_resource: &Value, _patient: &str, _bases: &[&str]) -> bool {
    todo!("compartment tables")
}

/// Evaluates one search item `name=value` (as written in a granular scope, not yet
/// percent-decoded) against `resource` of type `t`, as the FHIR search would (token
/// `system|code`, `code`, `|code`, `system|`). Parameters or modifiers the table does not
/// cover are [`Unsupported`].
pub fn matches_param(
    _t: ResourceType,
    _name: &str,
    _value: &str,
    _resource: &Value,
) -> Result<bool, Unsupported> {
    todo!("compartment tables")
}
