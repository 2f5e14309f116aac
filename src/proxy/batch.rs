//! Batch and transaction Bundles: the Bundle fhirwall forwards (only the entries the engine
//! allowed) and the `batch-response` it returns (the backend's entries put back at their
//! original positions, refused entries answered here).
//!
//! SAL2 "batch and transaction requests should be validated based on the actual requests
//! within them"; SMART-SEMANTICS §7: a refused batch entry is never executed and is answered
//! with its own 4xx entry and OperationOutcome, in the original order. FHIR R4
//! http.html#transaction: the batch-response has "the same number of entries" "in the same
//! order" as the request, so the k-th response entry answers the k-th forwarded entry.

use serde_json::{json, Map, Value};

use super::respond::Answer;
use crate::policy::smart::{BatchPlan, EntryPlan, ResourceCheck, Violation};
use crate::policy::Denial;

/// Something a returned entry resource must pass (a [`ResourceCheck`]; tests use others).
pub trait EntryCheck: Send + Sync {
    /// Ok when the resource may reach the client.
    fn check(&self, resource: &Value) -> Result<(), Violation>;
}

/// One original entry as the merge sees it.
#[derive(Clone)]
pub enum Slot<'a> {
    /// Forwarded; its response entry's resource must pass the check, if any.
    Forward(Option<&'a dyn EntryCheck>),
    /// Answered here: the denial's (or a failed stored-version check's) status and
    /// OperationOutcome.
    Refuse(Answer),
}

/// What to do with a batch Bundle after the plan.
#[derive(Debug)]
pub enum Prepared {
    /// Forward this Bundle (the original with only the allowed entries).
    Forward(Value),
    /// Nothing is forwarded: every entry was refused; this is the whole batch-response.
    AnswerHere(Value),
}

/// Why a batch could not be forwarded or merged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// The request body is not a Bundle with an `entry` array matching the plan.
    #[error("the request Bundle does not match its plan ({0})")]
    Request(&'static str),
    /// The backend's answer is not a batch-response with one entry per forwarded entry.
    #[error("the FHIR server's batch-response does not match the forwarded batch ({0})")]
    Response(&'static str),
}

// === impl EntryCheck ===

impl EntryCheck for ResourceCheck {
    fn check(&self, resource: &Value) -> Result<(), Violation> {
        ResourceCheck::check(self, resource)
    }
}

/// The slots of an engine plan (`realm` for the refusals' challenges).
pub fn slots<'a>(plan: &'a BatchPlan, realm: &str) -> Vec<Slot<'a>> {
    plan.entries
        .iter()
        .map(|e| match e {
            EntryPlan::Forward(c) => Slot::Forward(c.as_ref().map(|c| c as &dyn EntryCheck)),
            EntryPlan::Refuse(d) => Slot::Refuse(refusal(d, realm)),
        })
        .collect()
}

/// The answer for a refused entry.
pub fn refusal(d: &Denial, realm: &str) -> Answer {
    Answer::for_denial(d, realm)
}

/// True when every entry is forwarded unchanged (the Bundle bytes can go as they are).
pub fn forwards_all(slots: &[Slot<'_>]) -> bool {
    slots.iter().all(|s| matches!(s, Slot::Forward(_)))
}

/// Builds what goes upstream: the request Bundle with its refused entries removed, and every
/// other element (`id`, `meta`, `type`, ...) kept. When nothing is left, the batch-response
/// is built here and nothing is forwarded.
pub fn prepare(bundle: &Value, slots: &[Slot<'_>]) -> Result<Prepared, BatchError> {
    let Some(object) = bundle.as_object() else {
        return Err(BatchError::Request("not a JSON object"));
    };
    let entries = match object.get("entry") {
        Some(Value::Array(e)) => e.as_slice(),
        None => &[],
        Some(_) => return Err(BatchError::Request("`entry` is not an array")),
    };
    if entries.len() != slots.len() {
        return Err(BatchError::Request("entry count"));
    }
    if forwards_all(slots) {
        return Ok(Prepared::Forward(bundle.clone()));
    }
    let kept: Vec<Value> = entries
        .iter()
        .zip(slots)
        .filter(|(_, s)| matches!(s, Slot::Forward(_)))
        .map(|(e, _)| e.clone())
        .collect();
    if kept.is_empty() {
        let answered = slots
            .iter()
            .map(|s| match s {
                Slot::Refuse(a) => refused_entry(a),
                // Unreachable: nothing is forwarded.
                Slot::Forward(_) => refused_entry(&Answer::internal()),
            })
            .collect();
        return Ok(Prepared::AnswerHere(batch_response(answered)));
    }
    let mut out: Map<String, Value> = object.clone();
    out.insert("entry".into(), Value::Array(kept));
    Ok(Prepared::Forward(Value::Object(out)))
}

/// Puts the backend's batch-response entries back at their original positions, answers the
/// refused entries, and replaces every response entry whose resource fails its check with a
/// 403 entry (the data is withheld; what the backend executed stays executed).
pub fn merge(response: Value, slots: &[Slot<'_>]) -> Result<Value, BatchError> {
    let Value::Object(mut object) = response else {
        return Err(BatchError::Response("not a JSON object"));
    };
    if object.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(BatchError::Response("not a Bundle"));
    }
    let returned = match object.remove("entry") {
        Some(Value::Array(e)) => e,
        None => Vec::new(),
        Some(_) => return Err(BatchError::Response("`entry` is not an array")),
    };
    let forwarded = slots
        .iter()
        .filter(|s| matches!(s, Slot::Forward(_)))
        .count();
    if returned.len() != forwarded {
        return Err(BatchError::Response("entry count"));
    }
    let mut returned = returned.into_iter();
    let mut merged = Vec::with_capacity(slots.len());
    for slot in slots {
        let entry = match slot {
            Slot::Refuse(a) => refused_entry(a),
            Slot::Forward(check) => {
                // Counted above: one returned entry per forwarded slot.
                let entry = returned.next().unwrap_or(Value::Null);
                match (check, entry.get("resource")) {
                    (Some(check), Some(resource)) => match check.check(resource) {
                        Ok(()) => entry,
                        Err(v) => refused_entry(&withheld(&v)),
                    },
                    _ => entry,
                }
            }
        };
        merged.push(entry);
    }
    if !merged.is_empty() {
        object.insert("entry".into(), Value::Array(merged));
    }
    Ok(Value::Object(object))
}

/// The answer for a resource withheld by a failed response check.
pub fn withheld(v: &Violation) -> Answer {
    Answer {
        status: 403,
        www_authenticate: None,
        retry_after: None,
        issue_code: "forbidden",
        diagnostics: format!("the response was withheld: {v}"),
    }
}

/// A batch-response entry answering an entry here: `response.status` ("403 Forbidden") and
/// the OperationOutcome in `response.outcome` (R4 Bundle.entry.response).
pub fn refused_entry(answer: &Answer) -> Value {
    let reason = http::StatusCode::from_u16(answer.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let outcome: Value = serde_json::from_slice(&answer.body()).unwrap_or(Value::Null);
    json!({
        "response": {
            "status": format!("{} {reason}", answer.status).trim_end().to_owned(),
            "outcome": outcome,
        }
    })
}

/// A `batch-response` Bundle answered by fhirwall itself.
fn batch_response(entries: Vec<Value>) -> Value {
    let mut b = Map::new();
    b.insert("resourceType".into(), json!("Bundle"));
    b.insert("type".into(), json!("batch-response"));
    if !entries.is_empty() {
        b.insert("entry".into(), Value::Array(entries));
    }
    Value::Object(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DenyReason;

    struct NotPatient(&'static str);

    impl EntryCheck for NotPatient {
        fn check(&self, resource: &Value) -> Result<(), Violation> {
            match resource["subject"]["reference"].as_str() {
                Some(r) if r == format!("Patient/{}", self.0) => Ok(()),
                _ => Err(Violation("not in the patient's compartment".into())),
            }
        }
    }

    fn denial() -> Answer {
        refusal(
            &Denial::new(
                DenyReason::InsufficientScope {
                    needed: "patient/Condition.c".into(),
                },
                "entry 1 needs patient/Condition.c",
            ),
            "r",
        )
    }

    fn request(n: usize) -> Value {
        let entries: Vec<Value> = (0..n)
            .map(|i| json!({"request": {"method": "GET", "url": format!("Observation/o{i}")}}))
            .collect();
        json!({"resourceType": "Bundle", "id": "b1", "type": "batch", "entry": entries})
    }

    #[test]
    fn only_allowed_entries_are_forwarded_and_the_rest_of_the_bundle_is_kept() {
        let d = denial();
        let slots = [
            Slot::Forward(None),
            Slot::Refuse(d.clone()),
            Slot::Forward(None),
        ];
        let Prepared::Forward(b) = prepare(&request(3), &slots).unwrap() else {
            panic!("expected a forward");
        };
        assert_eq!(b["id"], "b1");
        assert_eq!(b["type"], "batch");
        let urls: Vec<&str> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request"]["url"].as_str().unwrap())
            .collect();
        assert_eq!(urls, ["Observation/o0", "Observation/o2"]);
    }

    #[test]
    fn a_batch_with_every_entry_refused_is_answered_without_the_backend() {
        let d = denial();
        let slots = [Slot::Refuse(d.clone()), Slot::Refuse(d.clone())];
        let Prepared::AnswerHere(b) = prepare(&request(2), &slots).unwrap() else {
            panic!("expected an answer");
        };
        assert_eq!(b["type"], "batch-response");
        assert_eq!(b["entry"].as_array().unwrap().len(), 2);
        assert_eq!(b["entry"][1]["response"]["status"], "403 Forbidden");
        assert_eq!(
            b["entry"][1]["response"]["outcome"]["resourceType"],
            "OperationOutcome"
        );
    }

    #[test]
    fn response_entries_return_to_their_original_positions() {
        let d = denial();
        let slots = [
            Slot::Refuse(d.clone()),
            Slot::Forward(None),
            Slot::Forward(None),
        ];
        let response = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "200 OK"}, "resource": {"resourceType": "Observation", "id": "o1"}},
            {"response": {"status": "404 Not Found"}},
        ]});
        let m = merge(response, &slots).unwrap();
        let e = m["entry"].as_array().unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0]["response"]["status"], "403 Forbidden");
        assert_eq!(e[1]["resource"]["id"], "o1");
        assert_eq!(e[2]["response"]["status"], "404 Not Found");
    }

    #[test]
    fn a_response_entry_failing_its_check_becomes_a_403_entry() {
        let own = NotPatient("123");
        let slots = [Slot::Forward(Some(&own)), Slot::Forward(Some(&own))];
        let response = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "200 OK"}, "resource": {"resourceType": "Observation", "subject": {"reference": "Patient/123"}}},
            {"response": {"status": "200 OK"}, "resource": {"resourceType": "Observation", "subject": {"reference": "Patient/456"}}},
        ]});
        let m = merge(response, &slots).unwrap();
        assert_eq!(m["entry"][0]["response"]["status"], "200 OK");
        assert_eq!(m["entry"][1]["response"]["status"], "403 Forbidden");
        assert!(m["entry"][1].get("resource").is_none());
        assert_eq!(
            m["entry"][1]["response"]["outcome"]["issue"][0]["code"],
            "forbidden"
        );
    }

    #[test]
    fn a_response_with_the_wrong_number_of_entries_is_refused() {
        let slots = [Slot::Forward(None), Slot::Forward(None)];
        let response = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "200 OK"}},
        ]});
        assert_eq!(
            merge(response, &slots).unwrap_err(),
            BatchError::Response("entry count")
        );
    }

    #[test]
    fn a_plan_that_does_not_match_the_bundle_is_refused() {
        let slots = [Slot::Forward(None)];
        assert_eq!(
            prepare(&request(2), &slots).unwrap_err(),
            BatchError::Request("entry count")
        );
    }
}
