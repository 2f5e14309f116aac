// Batch and transaction Bundles POSTed to the base (SAL2: "batch and transaction requests
// should be validated based on the actual requests within them"; SMART-SEMANTICS 7): every
// entry classified like a top-level request; a batch forwards only the allowed entries and
// answers the others in place, in order; a transaction with one refused entry is refused whole.

use serde_json::{json, Value};

use crate::runner::*;
use crate::write::observation;

fn entry(method: &str, url: &str) -> Value {
    json!({ "request": { "method": method, "url": url } })
}

fn entry_with(method: &str, url: &str, resource: Value) -> Value {
    json!({ "request": { "method": method, "url": url }, "resource": resource })
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({ "resourceType": "Bundle", "type": kind, "entry": entries })
}

/// The bundle table.
pub fn cases() -> Vec<Case> {
    vec![
        // --- batch: partial forwarding, per-entry outcomes, order kept
        case("batch with every entry allowed", "SAL2 §batch: validated per entry; SMART-SEMANTICS 7")
            .scopes("user/Observation.rs user/Patient.r").post("")
            .json(bundle("batch", vec![entry("GET", "Observation/obs-1"), entry("GET", "Patient/123")]))
            .batch(&[200, 200], 2, ""),
        case("batch forwards only the allowed entries, in order", "SMART-SEMANTICS 7: batch answers refused entries in place")
            .scopes("user/Observation.rs").post("")
            .json(bundle("batch", vec![entry("GET", "Observation/obs-1"), entry("GET", "Patient/123"), entry("GET", "Observation?code=1234-5")]))
            .batch(&[200, 403, 200], 2, "secret-123"),
        case("batch refused entry first", "SMART-SEMANTICS 7: original order")
            .scopes("user/Patient.r").post("")
            .json(bundle("batch", vec![entry("GET", "Observation/obs-1"), entry("GET", "Patient/456")]))
            .batch(&[403, 200], 1, "secret-obs-1"),
        case("batch with every entry refused", "SMART-SEMANTICS 7: a refused entry is never executed")
            .scopes("user/Condition.r").post("")
            .json(bundle("batch", vec![entry("GET", "Observation/obs-1"), entry("DELETE", "Patient/456")]))
            .batch(&[403, 403], 0, "secret-"),
        case("batch entry response checked under patient/", "SMART-SEMANTICS 7 + 3.3: response entries with a failing check become 403")
            .scopes("patient/Observation.r").patient("123").post("")
            .json(bundle("batch", vec![entry("GET", "Observation/obs-1"), entry("GET", "Observation/obs-a")]))
            .batch(&[200, 403], 2, "secret-obs-a"),
        case("batch entry searching another patient", "SMART-SEMANTICS 7 + 3.3")
            .scopes("patient/Observation.rs").patient("123").post("")
            .json(bundle("batch", vec![entry("GET", "Observation?patient=456"), entry("GET", "Observation?patient=123")]))
            .batch(&[403, 200], 1, "secret-obs-a"),
        case("batch entry creating for another patient", "SMART-SEMANTICS 7 + 3.3: entry.resource is checked")
            .scopes("patient/Observation.c").patient("123").post("")
            .json(bundle("batch", vec![
                entry_with("POST", "Observation", observation(Some("Patient/456"))),
                entry_with("POST", "Observation", observation(Some("Patient/123"))),
            ]))
            .batch(&[403, 201], 1, ""),
        case("batch entry with an unsafe URL", "SMART-SEMANTICS 7: same path-safety rules per entry")
            .scopes("user/*.rs").post("")
            .json(bundle("batch", vec![entry("GET", "Patient/../Observation/obs-1"), entry("GET", "Patient/123")]))
            .batch(&[400, 200], 1, ""),
        case("batch entry with an absolute URL to another server", "SMART-SEMANTICS 7: absolute URL to another server refused")
            .scopes("user/*.rs").post("")
            .json(bundle("batch", vec![entry("GET", "https://other.example.org/fhir/Patient/123"), entry("GET", "Patient/123")]))
            .batch(&[400, 200], 1, ""),
        case("batch entry without a request", "SMART-SEMANTICS 7: an entry without request is refused")
            .scopes("user/*.rs").post("")
            .json(bundle("batch", vec![json!({ "resource": observation(Some("Patient/123")) }), entry("GET", "Patient/123")]))
            .batch(&[400, 200], 1, ""),
        case("batch entry conditional delete needs s", "SMART-SEMANTICS 7 + 4: entries classified like top-level requests")
            .scopes("user/Observation.d user/Patient.r").post("")
            .json(bundle("batch", vec![entry("DELETE", "Observation?identifier=urn:x|1"), entry("GET", "Patient/123")]))
            .batch(&[403, 200], 1, ""),
        case("batch update of another patient's resource", "SMART-SEMANTICS 7 + 3.3 / A23: each entry's stored version is checked")
            .scopes("patient/Observation.u").patient("123").post("")
            .json(bundle("batch", vec![
                entry_with("PUT", "Observation/obs-a", { let mut o = observation(Some("Patient/123")); o["id"] = json!("obs-a"); o }),
                entry_with("PUT", "Observation/obs-1", { let mut o = observation(Some("Patient/123")); o["id"] = json!("obs-1"); o }),
            ]))
            .batch(&[403, 200], 1, "secret-obs-a"),
        // --- transaction: all or nothing
        case("transaction with every entry allowed", "SAL2 §batch; SMART-SEMANTICS 7")
            .scopes("user/Observation.c user/Patient.r").post("")
            .json(bundle("transaction", vec![
                entry_with("POST", "Observation", observation(Some("Patient/456"))),
                entry("GET", "Patient/456"),
            ]))
            .allow(200),
        case("transaction with one refused entry is refused whole", "SMART-SEMANTICS 7 / A11: one refused entry refuses the whole request, naming the entry")
            .scopes("user/Observation.c").post("")
            .json(bundle("transaction", vec![
                entry_with("POST", "Observation", observation(Some("Patient/456"))),
                entry("DELETE", "Patient/456"),
            ]))
            .deny().mentioning("entry"),
        case("transaction creating for another patient", "SMART-SEMANTICS 7 + 3.3")
            .scopes("patient/Observation.c").patient("123").post("")
            .json(bundle("transaction", vec![
                entry_with("POST", "Observation", observation(Some("Patient/123"))),
                entry_with("POST", "Observation", observation(Some("Patient/456"))),
            ]))
            .deny(),
        case("transaction creating a Patient under patient/", "SMART-SEMANTICS 7: a transaction that creates a Patient is outside any patient/ grant")
            .scopes("patient/*.cruds").patient("123").post("")
            .json(bundle("transaction", vec![
                json!({ "fullUrl": "urn:uuid:5b5f0c2e-0000-4000-8000-000000000001", "resource": { "resourceType": "Patient" }, "request": { "method": "POST", "url": "Patient" } }),
                entry_with("POST", "Observation", observation(Some("urn:uuid:5b5f0c2e-0000-4000-8000-000000000001"))),
            ]))
            .deny(),
        case("transaction updating another patient's resource", "SMART-SEMANTICS 7 + A23: a refused entry refuses the whole transaction")
            .scopes("patient/Observation.u").patient("123").post("")
            .json(bundle("transaction", vec![
                entry_with("PUT", "Observation/obs-1", { let mut o = observation(Some("Patient/123")); o["id"] = json!("obs-1"); o }),
                entry_with("PUT", "Observation/obs-a", { let mut o = observation(Some("Patient/123")); o["id"] = json!("obs-a"); o }),
            ]))
            .deny_after_check(),
        // --- what is not a batch
        case("a collection Bundle at the base is refused", "SMART-SEMANTICS 7: only batch/transaction at [base]")
            .scopes("user/*.cruds").post("").json(bundle("collection", vec![])).deny_with(&[400, 403], Challenge::Any),
        case("another resource at the base is refused", "SMART-SEMANTICS 7: another resource at [base] is refused")
            .scopes("user/*.cruds").post("").json(observation(Some("Patient/123"))).deny_with(&[400, 403], Challenge::Any),
        case("an oversized batch is refused", "smart-api.md fhir.max_body_bytes: bodies read for a decision, larger -> 413")
            .scopes("user/*.rs").post("")
            .json(bundle("batch", (0..700).map(|i| entry("GET", &format!("Observation?code={i}&_elements={}", "x".repeat(100)))).collect()))
            .deny_with(&[413], Challenge::Any),
        case("a batch without a token", "RFC 6750 §3.1")
            .post("").json(bundle("batch", vec![entry("GET", "Patient/123")])).deny_with(&[401], Challenge::Bare),
    ]
}

#[tokio::test]
async fn bundle_table_conforms() {
    let table = Table::start("bundle").await;
    table.run_all(cases()).await;
}
