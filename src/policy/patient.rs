//! Patient-context confinement: when a request is allowed by a `patient/` scope, the route's
//! `patient:` binding must show that it is about the token's patient (SMART-SEMANTICS §3.3).
//!
//! Two bindings exist. `segment: NAME` compares a captured path segment with the patient id
//! (`/Patient/{id}`). `query: NAME` requires exactly one occurrence of the query parameter
//! `NAME`, whose value is exactly the id or `Patient/<id>` (`/Observation?patient=123`): a
//! comma list is an OR, a second occurrence may win on some servers, and modifiers change the
//! meaning, so none of those confine. The check never allocates.

use std::borrow::Cow;

/// How a route ties its requests to a patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatientBinding {
    /// The path capture at index `capture` (named `name`) must equal the patient id.
    Segment {
        /// Index into the route's captures.
        capture: usize,
        /// The parameter's name, for messages.
        name: Box<str>,
    },
    /// The query parameter with this name must appear once, with the patient as its value.
    Query(Box<str>),
}

/// Why a request is not confined to the token's patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unconfined {
    /// The token carries no patient context.
    NoPatient,
    /// The token's patient context is not a FHIR id, so it cannot be compared safely.
    InvalidPatient,
    /// The bound path segment names another patient.
    OtherPatientSegment,
    /// The bound query parameter is absent.
    QueryMissing,
    /// The bound query parameter appears more than once.
    QueryRepeated,
    /// The bound query parameter's value is not exactly the patient.
    QueryOtherValue,
    /// The query cannot be read unambiguously (bad percent-encoding, `;` separators, `%25`
    /// in a parameter name).
    QueryUnreadable,
}

/// Checks `binding` for a request. `captures` gives the route's capture `i` of `path`.
pub fn check<'p>(
    binding: &PatientBinding,
    capture: impl FnOnce(usize) -> Option<&'p str>,
    query: Option<&str>,
    patient: Option<&str>,
) -> Result<(), Unconfined> {
    let patient = patient.ok_or(Unconfined::NoPatient)?;
    if !is_fhir_id(patient) {
        return Err(Unconfined::InvalidPatient);
    }
    match binding {
        PatientBinding::Segment { capture: i, .. } => match capture(*i) {
            // Exact, raw comparison: ids are case-sensitive and never percent-encoded (the
            // id alphabet has nothing to encode, and encoded unreserved characters were
            // already refused by path::check).
            Some(seg) if seg == patient => Ok(()),
            _ => Err(Unconfined::OtherPatientSegment),
        },
        PatientBinding::Query(name) => check_query(query.unwrap_or(""), name, patient),
    }
}

/// FHIR R4 id: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn check_query(query: &str, name: &str, patient: &str) -> Result<(), Unconfined> {
    // Some servers also split on `;`; fhirwall cannot know which, so it does not guess.
    if query.contains(';') {
        return Err(Unconfined::QueryUnreadable);
    }
    let mut value = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        // A server that decodes twice reads `pati%2565nt` as `patient`.
        if n.contains("%25") {
            return Err(Unconfined::QueryUnreadable);
        }
        // Names are compared after percent-decoding, as the backend reads them, so
        // `pati%65nt=456` counts as a second occurrence. `+` is not decoded: `name` has no
        // space or `+`, so a name with `+` differs from it under either reading.
        if decoded_eq(n, name, "").ok_or(Unconfined::QueryUnreadable)? {
            if value.is_some() {
                return Err(Unconfined::QueryRepeated);
            }
            value = Some(v);
        }
    }
    let v = value.ok_or(Unconfined::QueryMissing)?;
    let matches = decoded_eq(v, patient, "").ok_or(Unconfined::QueryUnreadable)?
        || decoded_eq(v, patient, "Patient/").ok_or(Unconfined::QueryUnreadable)?;
    // `patient` is a FHIR id, so a value equal to it cannot hold a `,` (OR), a `:` or `\`.
    if matches {
        Ok(())
    } else {
        Err(Unconfined::QueryOtherValue)
    }
}

/// Whether `raw`, percent-decoded, equals `prefix` + `expected`; `None` for invalid
/// percent-encoding.
fn decoded_eq(raw: &str, expected: &str, prefix: &str) -> Option<bool> {
    let raw = raw.as_bytes();
    let mut want = prefix.bytes().chain(expected.bytes());
    let mut equal = true;
    let mut i = 0;
    while i < raw.len() {
        let b = if raw[i] == b'%' {
            let hi = raw.get(i + 1).and_then(|&c| (c as char).to_digit(16))?;
            let lo = raw.get(i + 2).and_then(|&c| (c as char).to_digit(16))?;
            i += 3;
            (hi * 16 + lo) as u8
        } else {
            i += 1;
            raw[i - 1]
        };
        // Keep scanning after a mismatch so that invalid encoding is always reported.
        if want.next() != Some(b) {
            equal = false;
        }
    }
    Some(equal && want.next().is_none())
}

// === impl Unconfined ===

impl Unconfined {
    /// The client-facing explanation.
    pub fn detail(self, binding: &PatientBinding) -> Cow<'static, str> {
        const LIMITED: &str = "this token's patient/ scopes are limited to its patient context";
        match (self, binding) {
            (Unconfined::NoPatient, _) => Cow::Borrowed(
                "this token's patient/ scopes are limited to its patient context, and the token has no patient context",
            ),
            (Unconfined::InvalidPatient, _) => Cow::Borrowed(
                "this token's patient/ scopes are limited to its patient context, which is not a valid FHIR id",
            ),
            (Unconfined::OtherPatientSegment, PatientBinding::Segment { name, .. }) => {
                Cow::Owned(format!("{LIMITED}; the `{name}` in the path is another patient"))
            }
            (Unconfined::QueryMissing, PatientBinding::Query(name)) => Cow::Owned(format!(
                "{LIMITED}; the request must carry the `{name}` parameter with the context patient's id"
            )),
            (Unconfined::QueryRepeated, PatientBinding::Query(name)) => Cow::Owned(format!(
                "{LIMITED}; the `{name}` parameter must appear exactly once"
            )),
            (Unconfined::QueryOtherValue, PatientBinding::Query(name)) => Cow::Owned(format!(
                "{LIMITED}; the `{name}` parameter must be exactly the context patient's id, as `<id>` or `Patient/<id>`"
            )),
            (Unconfined::QueryUnreadable, _) => Cow::Owned(format!(
                "{LIMITED}; the query string cannot be read unambiguously (invalid percent-encoding, `;`, or `%25` in a parameter name)"
            )),
            _ => Cow::Borrowed(LIMITED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Result<(), Unconfined> {
        check(
            &PatientBinding::Query("patient".into()),
            |_| None,
            Some(q),
            Some("123"),
        )
    }

    fn segment(seg: &str, patient: Option<&str>) -> Result<(), Unconfined> {
        let b = PatientBinding::Segment {
            capture: 0,
            name: "id".into(),
        };
        check(&b, |i| (i == 0).then_some(seg), None, patient)
    }

    #[test]
    fn a_segment_binding_needs_the_exact_patient_id() {
        assert_eq!(segment("123", Some("123")), Ok(()));
        assert_eq!(
            segment("456", Some("123")),
            Err(Unconfined::OtherPatientSegment)
        );
        assert_eq!(
            segment("ABC", Some("abc")),
            Err(Unconfined::OtherPatientSegment)
        );
        assert_eq!(
            segment("1234", Some("123")),
            Err(Unconfined::OtherPatientSegment)
        );
    }

    #[test]
    fn a_token_without_a_valid_patient_context_is_never_confined() {
        assert_eq!(segment("123", None), Err(Unconfined::NoPatient));
        assert_eq!(segment("", Some("")), Err(Unconfined::InvalidPatient));
        assert_eq!(segment("a,b", Some("a,b")), Err(Unconfined::InvalidPatient));
        assert_eq!(segment("a b", Some("a b")), Err(Unconfined::InvalidPatient));
        let long = "a".repeat(65);
        assert_eq!(segment(&long, Some(&long)), Err(Unconfined::InvalidPatient));
    }

    #[test]
    fn a_query_binding_accepts_the_id_or_a_patient_reference() {
        assert_eq!(query("patient=123"), Ok(()));
        assert_eq!(query("patient=Patient/123"), Ok(()));
        assert_eq!(query("patient=Patient%2F123"), Ok(()));
        assert_eq!(query("patient=%31%32%33"), Ok(()));
        assert_eq!(query("_count=10&patient=123&code=x,y"), Ok(()));
        assert_eq!(query("patient=123&&_sort=date"), Ok(()));
    }

    #[test]
    fn a_query_binding_refuses_other_values() {
        for q in [
            "patient=456",
            "patient=",
            "patient",
            "patient=123,456",
            "patient=456,123",
            "patient=Patient/456",
            "patient=patient/123",
            "patient=Group/123",
            "patient=https://other/fhir/Patient/123",
            "patient=123+",
            "patient=12%203",
        ] {
            assert_eq!(query(q), Err(Unconfined::QueryOtherValue), "{q}");
        }
    }

    #[test]
    fn a_query_binding_needs_exactly_one_unmodified_occurrence() {
        assert_eq!(query(""), Err(Unconfined::QueryMissing));
        assert_eq!(query("subject=Patient/123"), Err(Unconfined::QueryMissing));
        assert_eq!(query("patient:Patient=123"), Err(Unconfined::QueryMissing));
        assert_eq!(query("Patient=123"), Err(Unconfined::QueryMissing));
        assert_eq!(
            query("patient=123&patient=456"),
            Err(Unconfined::QueryRepeated)
        );
        assert_eq!(
            query("patient=123&patient=123"),
            Err(Unconfined::QueryRepeated)
        );
        // An encoded name is the same parameter to the backend.
        assert_eq!(
            query("patient=123&pati%65nt=456"),
            Err(Unconfined::QueryRepeated)
        );
        // Modifiers and chains on other occurrences only narrow the search (AND).
        assert_eq!(query("patient=123&patient:missing=false"), Ok(()));
    }

    #[test]
    fn ambiguous_queries_are_refused() {
        assert_eq!(
            query("patient=123;patient=456"),
            Err(Unconfined::QueryUnreadable)
        );
        assert_eq!(
            query("patient=123&pati%2565nt=456"),
            Err(Unconfined::QueryUnreadable)
        );
        assert_eq!(query("patient=12%3"), Err(Unconfined::QueryUnreadable));
        assert_eq!(
            query("pat%zzient=1&patient=123"),
            Err(Unconfined::QueryUnreadable)
        );
    }

    #[test]
    fn fhir_ids_follow_the_r4_grammar() {
        assert!(is_fhir_id("123"));
        assert!(is_fhir_id("a-b.C"));
        assert!(is_fhir_id(&"x".repeat(64)));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id("a_b"));
        assert!(!is_fhir_id("a/b"));
        assert!(!is_fhir_id("é"));
    }

    #[test]
    fn details_explain_the_confinement() {
        let b = PatientBinding::Query("patient".into());
        assert_eq!(
            Unconfined::QueryOtherValue.detail(&b),
            "this token's patient/ scopes are limited to its patient context; the `patient` \
             parameter must be exactly the context patient's id, as `<id>` or `Patient/<id>`"
        );
    }
}
