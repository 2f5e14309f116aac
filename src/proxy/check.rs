//! Response checks: a response the engine could not judge from the request alone (an
//! instance read of a compartment type under a `patient/` grant, a read under a granular
//! scope; SMART-SEMANTICS §3.3, §6) is held, parsed and checked before any byte of it
//! reaches the client; a violating one is replaced by a 403 OperationOutcome (`forbidden`).
//!
//! Memory bound: at most `fhir.max_response_bytes` per request in flight is held; a larger
//! body is refused (403, fail closed) as soon as it passes the bound, without reading the
//! rest. Responses without a check are streamed untouched.

use serde_json::Value;

use super::batch::{withheld, EntryCheck};
use super::respond::Answer;
use crate::policy::smart::Violation;

/// What to do with a held response.
#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// Send it as it came.
    Unchanged,
    /// Send this answer instead.
    Withhold(Answer),
}

/// Judges a held response body against its check.
///
/// An empty body carries no resource and passes. A non-2xx answer passes only when it is an
/// OperationOutcome (R4 http.html: failures carry one); any other resource in it (a 4xx with
/// a resource body) is checked like a 2xx one. A body that is not JSON cannot be checked and
/// is withheld (fail closed).
pub fn judge(status: u16, body: &[u8], check: &dyn EntryCheck) -> Release {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Release::Unchanged;
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            return Release::Withhold(withheld(&Violation(
                "the response could not be read as FHIR JSON to check it".into(),
            )))
        }
    };
    let success = (200..300).contains(&status);
    if !success && value.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome") {
        return Release::Unchanged;
    }
    match check.check(&value) {
        Ok(()) => Release::Unchanged,
        Err(v) => Release::Withhold(withheld(&v)),
    }
}

/// The answer for a response larger than the bound (fail closed).
pub fn too_large(max: usize) -> Answer {
    withheld(&Violation(format!(
        "the response is larger than the {max} bytes fhirwall can check"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OwnPatient;

    impl EntryCheck for OwnPatient {
        fn check(&self, r: &Value) -> Result<(), Violation> {
            if r["subject"]["reference"] == "Patient/123" {
                Ok(())
            } else {
                Err(Violation(
                    "Observation/x is not in Patient/123's compartment".into(),
                ))
            }
        }
    }

    #[test]
    fn the_own_patients_resource_is_released_unchanged() {
        let body = br#"{"resourceType":"Observation","subject":{"reference":"Patient/123"}}"#;
        assert_eq!(judge(200, body, &OwnPatient), Release::Unchanged);
    }

    #[test]
    fn another_patients_resource_is_replaced_by_a_403() {
        let body = br#"{"resourceType":"Observation","subject":{"reference":"Patient/456"}}"#;
        let Release::Withhold(a) = judge(200, body, &OwnPatient) else {
            panic!("expected withholding");
        };
        assert_eq!((a.status, a.issue_code), (403, "forbidden"));
        assert!(a.diagnostics.contains("compartment"), "{}", a.diagnostics);
    }

    #[test]
    fn error_outcomes_and_empty_bodies_pass_but_a_4xx_resource_is_checked() {
        let oo = br#"{"resourceType":"OperationOutcome","issue":[]}"#;
        assert_eq!(judge(404, oo, &OwnPatient), Release::Unchanged);
        assert_eq!(judge(410, b"", &OwnPatient), Release::Unchanged);
        let foreign = br#"{"resourceType":"Observation","subject":{"reference":"Patient/456"}}"#;
        assert!(matches!(
            judge(422, foreign, &OwnPatient),
            Release::Withhold(_)
        ));
    }

    #[test]
    fn a_body_that_is_not_json_is_withheld() {
        assert!(matches!(
            judge(200, b"<html>", &OwnPatient),
            Release::Withhold(_)
        ));
    }
}
