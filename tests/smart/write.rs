// Writes: create, update, patch, delete and their conditional forms; the letters they need
// (SAL2 c/u/d, SMART-SEMANTICS 4 "write letter + s" for conditional ones), bodies that must
// reference the context patient (3.3), confinement per grant (2), stored versions read before
// an update/patch/delete under patient/ (A23), and the body size bound (413).

use serde_json::{json, Value};

use crate::runner::*;

/// An Observation about `subject` (a reference such as `Patient/123`), or about nobody.
pub fn observation(subject: Option<&str>) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory",
        }] }],
        "code": { "coding": [{ "system": "http://loinc.org", "code": "1234-5" }] },
    });
    if let Some(subject) = subject {
        o["subject"] = json!({ "reference": subject });
    }
    o
}

/// [`observation`] with an id (for updates).
fn observation_with_id(id: &str, subject: &str) -> Value {
    let mut o = observation(Some(subject));
    o["id"] = json!(id);
    o
}

const JSON_PATCH: &str = "application/json-patch+json";

fn status_patch() -> Vec<u8> {
    br#"[{"op":"replace","path":"/status","value":"amended"}]"#.to_vec()
}

/// The write table.
pub fn cases() -> Vec<Case> {
    vec![
        // --- create (SAL2 c = type-level create)
        case("user create for any patient", "SAL2 §scopes: c = create; SMART-SEMANTICS 2 user/ unconfined")
            .scopes("user/Observation.c").post("/Observation").json(observation(Some("Patient/456"))).allow(201),
        case("patient create for the own patient", "SMART-SEMANTICS 3.3: the body references Patient/P")
            .scopes("patient/Observation.c").patient("123").post("/Observation").json(observation(Some("Patient/123"))).allow(201),
        case("patient create for another patient", "SMART-SEMANTICS 3.3: a body referencing another patient is refused")
            .scopes("patient/Observation.c").patient("123").post("/Observation").json(observation(Some("Patient/456"))).deny(),
        case("patient create about nobody", "SMART-SEMANTICS 3.3: a body referencing no patient is refused")
            .scopes("patient/Observation.c").patient("123").post("/Observation").json(observation(None)).deny(),
        case("patient create about a Group with the patient's id", "SMART-SEMANTICS 3.2: Group/123 is not Patient/123")
            .scopes("patient/Observation.c").patient("123").post("/Observation").json(observation(Some("Group/123"))).deny(),
        case("patient create referencing another server", "SMART-SEMANTICS 3.3: another server's Patient is refused")
            .scopes("patient/Observation.c").patient("123").post("/Observation").json(observation(Some("https://other.example.org/fhir/Patient/123"))).deny(),
        case("patient create with a second patient as performer", "SMART-SEMANTICS 3.3: every inclusion parameter (Observation performer) is checked")
            .scopes("patient/Observation.c").patient("123").post("/Observation")
            .json({ let mut o = observation(Some("Patient/123")); o["performer"] = json!([{ "reference": "Patient/456" }]); o }).deny(),
        case("create needs c", "SAL2 §scopes: r/s do not create")
            .scopes("patient/Observation.rs").patient("123").post("/Observation").json(observation(Some("Patient/123"))).deny()
        .needing("patient/Observation.c"),
        case("v1 write creates", "SAL2: .write = .cud")
            .scopes("patient/Observation.write").patient("123").post("/Observation").json(observation(Some("Patient/123"))).allow(201),
        case("v1 read does not create", "SAL2: .read = .rs")
            .scopes("user/Observation.read").post("/Observation").json(observation(Some("Patient/123"))).deny(),
        case("wildcard create", "SAL2 §wildcard scopes")
            .scopes("user/*.c").post("/Observation").json(observation(Some("Patient/456"))).allow(201),
        case("patient cannot create a Patient", "SMART-SEMANTICS 3.3 / 7: a new Patient is not Patient/P")
            .scopes("patient/Patient.c").patient("123").post("/Patient").json(json!({ "resourceType": "Patient", "name": [{ "family": "New" }] })).deny(),
        case("body type must be the URL type", "R4-HTTP create: the body is a resource of [type]")
            .scopes("patient/Observation.c").patient("123").post("/Observation")
            .json(json!({ "resourceType": "Condition", "subject": { "reference": "Patient/123" } })).deny_with(&[400, 403], Challenge::Any),
        case("unparsable body under patient/", "SMART-SEMANTICS 3.3: the body must be evaluated; fail closed")
            .scopes("patient/Observation.c").patient("123").post("/Observation").raw(FHIR_JSON_TYPE, b"{not json".to_vec()).deny_with(&[400, 403], Challenge::Any),
        case("outside-compartment create under patient/", "SMART-SEMANTICS 3.4: non-compartment types unconfined")
            .scopes("patient/Medication.c").patient("123").post("/Medication").json(json!({ "resourceType": "Medication", "code": { "text": "x" } })).allow(201),
        case("a Bundle resource create is a create", "SMART-SEMANTICS 7: POST [base]/Bundle needs Bundle c, entries not executed")
            .scopes("user/Bundle.c").post("/Bundle").json(json!({ "resourceType": "Bundle", "type": "collection", "entry": [] })).allow(201),
        case("a Bundle resource create is not a batch", "SMART-SEMANTICS 7: POST [base]/Bundle is not a batch")
            .scopes("user/Observation.c").post("/Bundle")
            .json(json!({ "resourceType": "Bundle", "type": "batch", "entry": [{ "request": { "method": "POST", "url": "Observation" }, "resource": observation(Some("Patient/1")) }] })).deny(),
        case("an oversized body is refused", "smart-api.md fhir.max_body_bytes: larger -> 413")
            .scopes("patient/Observation.c")
        .patient("123").post("/Observation")
            .json({ let mut o = observation(Some("Patient/123")); o["note"] = json!([{ "text": "x".repeat(70_000) }]); o })
            .deny_with(&[413], Challenge::Any),
        // --- per-grant confinement (SMART-SEMANTICS 2)
        case("patient c + user rs cannot create for another patient", "SMART-SEMANTICS 2: each permission follows the scope that grants it")
            .scopes("patient/Observation.c user/Observation.rs").patient("123").post("/Observation").json(observation(Some("Patient/456"))).deny(),
        case("patient rs + user c creates for another patient", "SMART-SEMANTICS 2: the c comes from user/")
            .scopes("patient/Observation.rs user/Observation.c").patient("123").post("/Observation").json(observation(Some("Patient/456"))).allow(201),
        // --- update (SAL2 u)
        case("patient update of the own Observation", "SAL2 u = update; SMART-SEMANTICS 3.3 stored version + body")
            .scopes("patient/Observation.u").patient("123").put("/Observation/obs-1").json(observation_with_id("obs-1", "Patient/123")).allow(200),
        case("patient update of another patient's Observation", "SMART-SEMANTICS 3.3 / A23: upstream read of the current version")
            .scopes("patient/Observation.u").patient("123").put("/Observation/obs-a").json(observation_with_id("obs-a", "Patient/123")).deny_after_read(),
        case("patient update moving the own Observation away", "SMART-SEMANTICS 3.3: the updated body must reference P")
            .scopes("patient/Observation.u").patient("123").put("/Observation/obs-1").json(observation_with_id("obs-1", "Patient/456")).deny_after_check(),
        case("update needs u, c is not enough", "SMART-SEMANTICS 4: upsert also needs u")
            .scopes("user/Observation.c").put("/Observation/obs-new").json(observation_with_id("obs-new", "Patient/123")).deny(),
        case("user update of any Observation", "SMART-SEMANTICS 2")
            .scopes("user/Observation.u").put("/Observation/obs-a").json(observation_with_id("obs-a", "Patient/456")).allow(200),
        case("patient update of the own Patient", "SMART-SEMANTICS 3.3: Patient/<id> == P")
            .scopes("patient/Patient.u").patient("123").put("/Patient/123").json(json!({ "resourceType": "Patient", "id": "123" })).allow(200),
        case("patient update of another Patient", "SMART-SEMANTICS 3.3")
            .scopes("patient/Patient.u").patient("123").put("/Patient/456").json(json!({ "resourceType": "Patient", "id": "456" })).deny(),
        case("v1 write updates", "SAL2: .write = .cud")
            .scopes("user/Observation.write").put("/Observation/obs-a").json(observation_with_id("obs-a", "Patient/456")).allow(200),
        // --- patch (SAL2 u)
        case("patient patch of the own Observation", "SAL2 u = patch; SMART-SEMANTICS 3.3 stored version")
            .scopes("patient/Observation.u").patient("123").patch("/Observation/obs-1").raw(JSON_PATCH, status_patch()).allow(200),
        case("patient patch of another patient's Observation", "SMART-SEMANTICS 3.3 / A23")
            .scopes("patient/Observation.u").patient("123").patch("/Observation/obs-a").raw(JSON_PATCH, status_patch()).deny_after_read(),
        case("patient patch moving the subject away", "SMART-SEMANTICS 4: the result of a patch must stay in the compartment")
            .scopes("patient/Observation.u").patient("123").patch("/Observation/obs-1")
            .raw(JSON_PATCH, br#"[{"op":"replace","path":"/subject/reference","value":"Patient/456"}]"#.to_vec()).deny_after_check(),
        case("patch needs u", "SAL2 §scopes: patch is u")
            .scopes("user/Observation.crds").patch("/Observation/obs-1").raw(JSON_PATCH, status_patch()).deny(),
        // --- delete (SAL2 d)
        case("patient delete of the own Observation", "SAL2 d = delete; SMART-SEMANTICS 3.3 stored version")
            .scopes("patient/Observation.d").patient("123").delete("/Observation/obs-1").allow(200),
        case("patient delete of another patient's Observation", "SMART-SEMANTICS 3.3 / A23")
            .scopes("patient/Observation.d").patient("123").delete("/Observation/obs-a").deny_after_read(),
        case("user delete of any Observation", "SMART-SEMANTICS 2")
            .scopes("user/Observation.d").delete("/Observation/obs-a").allow(200),
        case("delete needs d", "SAL2 §scopes")
            .scopes("user/Observation.cru").delete("/Observation/obs-a").deny(),
        case("v1 write deletes", "SAL2: .write = .cud")
            .scopes("user/Observation.write").delete("/Observation/obs-a").allow(200),
        case("patient delete of another Patient", "SMART-SEMANTICS 3.3")
            .scopes("patient/Patient.d").patient("123").delete("/Patient/456").deny(),
        case("patient delete of the own Patient", "SAL2 d; SMART-SEMANTICS 3.3 Patient/<id> == P")
            .scopes("patient/Patient.d").patient("123").delete("/Patient/123").allow(200),
        // --- conditional create (c + s, criteria confined)
        case("conditional create needs s", "SMART-SEMANTICS 4 / A8: conditional create = c + s")
            .scopes("user/Observation.c").post("/Observation").header("If-None-Exist", "identifier=urn:x|1")
            .json(observation(Some("Patient/456"))).deny()
        .needing("user/Observation.s"),
        case("conditional create with c and s", "SMART-SEMANTICS 4 / A8")
            .scopes("user/Observation.cs").post("/Observation").header("If-None-Exist", "identifier=urn:x|1")
            .json(observation(Some("Patient/456"))).allow(201),
        case("patient conditional create with confined criteria", "SMART-SEMANTICS 4: the If-None-Exist query must be confined under patient/")
            .scopes("patient/Observation.cs").patient("123").post("/Observation").header("If-None-Exist", "patient=123&identifier=urn:x|1")
            .json(observation(Some("Patient/123"))).allow(201),
        case("patient conditional create with unconfined criteria", "SMART-SEMANTICS 4 + 3.3")
            .scopes("patient/Observation.cs").patient("123").post("/Observation").header("If-None-Exist", "identifier=urn:x|1")
            .json(observation(Some("Patient/123"))).deny(),
        case("patient conditional create with another patient's criteria", "SMART-SEMANTICS 4 + 3.3: the criteria must name P")
            .scopes("patient/Observation.cs").patient("123").post("/Observation").header("If-None-Exist", "patient=456&identifier=urn:x|1")
            .json(observation(Some("Patient/123"))).deny(),
        // --- conditional update / patch / delete (write letter + s)
        case("conditional update needs s", "SMART-SEMANTICS 4 / A8: PUT [type]?q = u + s")
            .scopes("user/Observation.u").put("/Observation?identifier=urn:x|1").json(observation(Some("Patient/456"))).deny(),
        case("conditional update with u and s", "SMART-SEMANTICS 4 / A8")
            .scopes("user/Observation.us").put("/Observation?identifier=urn:x|1").json(observation(Some("Patient/456"))).allow(200),
        case("patient conditional update confined", "SMART-SEMANTICS 4 + 3.3: criteria confined like a search")
            .scopes("patient/Observation.us").patient("123").put("/Observation?patient=123&identifier=urn:x|1").json(observation(Some("Patient/123"))).allow(200),
        case("patient conditional update unconfined", "SMART-SEMANTICS 4 + 3.3")
            .scopes("patient/Observation.us").patient("123").put("/Observation?identifier=urn:x|1").json(observation(Some("Patient/123"))).deny(),
        case("conditional patch with u and s", "SMART-SEMANTICS 4: PATCH [type]?q = u + s")
            .scopes("user/Observation.us").patch("/Observation?identifier=urn:x|1").raw(JSON_PATCH, status_patch()).allow(200),
        case("conditional patch without s", "SMART-SEMANTICS 4")
            .scopes("user/Observation.u").patch("/Observation?identifier=urn:x|1").raw(JSON_PATCH, status_patch()).deny(),
        case("conditional delete with d and s", "SMART-SEMANTICS 4: DELETE [type]?q = d + s")
            .scopes("user/Observation.ds").delete("/Observation?identifier=urn:x|1").allow(200),
        case("conditional delete without s", "SMART-SEMANTICS 4 / A8")
            .scopes("user/Observation.d").delete("/Observation?identifier=urn:x|1").deny(),
        case("patient conditional delete unconfined", "SMART-SEMANTICS 4 + 3.3")
            .scopes("patient/Observation.ds").patient("123").delete("/Observation?identifier=urn:x|1").deny(),
        case("patient conditional delete confined", "SMART-SEMANTICS 4 + 3.3")
            .scopes("patient/Observation.ds").patient("123").delete("/Observation?patient=123&identifier=urn:x|1").allow(200),
        case("method override header is refused", "SMART-SEMANTICS 12: X-HTTP-Method-Override refused")
            .scopes("user/Observation.rs").get("/Observation/obs-1").header("X-HTTP-Method-Override", "DELETE").deny_with(&[400], Challenge::Any),
    ]
}

const FHIR_JSON_TYPE: &str = "application/fhir+json";

#[tokio::test]
async fn write_table_conforms() {
    let table = Table::start("write").await;
    table.run_all(cases()).await;
}
