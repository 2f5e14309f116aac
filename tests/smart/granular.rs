// Granular SMART v2 scopes (`.rs?category=system|code`, SAL2 "finer-grained resource
// constraints", SMART-SEMANTICS 6): a search is allowed only when provably narrowed to the
// granted items; a read only when the returned resource matches (checked on the response); a
// write only when the written resource matches; malformed granular scopes grant nothing.

use serde_json::json;

use crate::runner::*;
use crate::write::observation;

/// `patient/Observation.rs` limited to laboratory observations.
const PATIENT_LAB: &str = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
/// `user/Observation.rs` limited to laboratory observations.
const USER_LAB: &str = "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
/// Laboratory and vital-signs granted by two granular scopes.
const PATIENT_LAB_AND_VITALS: &str = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";

/// The granular table.
pub fn cases() -> Vec<Case> {
    let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    let lab_encoded =
        "http%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fobservation-category%7Claboratory";
    let vitals = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";
    vec![
        // --- search (SMART-SEMANTICS 6.2)
        case("granular search narrowed to the category", "SMART-SEMANTICS 6.2: the request carries p=v exactly")
            .scopes(PATIENT_LAB).patient("123").get(&format!("/Observation?patient=123&category={lab}")).allow(200),
        case("granular search with %7C", "SMART-SEMANTICS 6.2 + 12: values percent-decoded before comparison")
            .scopes(PATIENT_LAB).patient("123").get("/Observation?patient=123&category=http://terminology.hl7.org/CodeSystem/observation-category%7Claboratory").allow(200),
        case("granular search fully percent-encoded", "SMART-SEMANTICS 6.2 + 12")
            .scopes(PATIENT_LAB).patient("123").get(&format!("/Observation?patient=123&category={lab_encoded}")).allow(200),
        case("granular search not narrowed", "SMART-SEMANTICS 6.2 / A5: not provable -> deny")
            .scopes(PATIENT_LAB).patient("123").get("/Observation?patient=123").deny(),
        case("granular search without the system", "SMART-SEMANTICS 6.2 / A6: category=laboratory is not provably the granted token")
            .scopes(PATIENT_LAB).patient("123").get("/Observation?patient=123&category=laboratory").deny(),
        case("granular search for another category", "SMART-SEMANTICS 6.1")
            .scopes(PATIENT_LAB).patient("123").get(&format!("/Observation?patient=123&category={vitals}")).deny(),
        case("granular search with a list reaching outside", "SMART-SEMANTICS 6.2: all comma values must be granted")
            .scopes(PATIENT_LAB).patient("123").get(&format!("/Observation?patient=123&category={lab},{vitals}")).deny(),
        case("granular search with a modifier", "SMART-SEMANTICS 6.2: same name and modifier")
            .scopes(PATIENT_LAB).patient("123").get(&format!("/Observation?patient=123&category:not={lab}")).deny(),
        case("two granular scopes cover their union", "SMART-SEMANTICS 6.2: a comma list covered by the union [interpretation]")
            .scopes(PATIENT_LAB_AND_VITALS).patient("123").get(&format!("/Observation?patient=123&category={lab},{vitals}")).allow(200),
        case("granular search still confined", "SMART-SEMANTICS 3.5 step 4: confinement and query both apply")
            .scopes(PATIENT_LAB).patient("123").get(&format!("/Observation?category={lab}")).deny(),
        case("granular compartment search", "SMART-SEMANTICS 6.2 + 3.3 compartment URL")
            .scopes(PATIENT_LAB).patient("123").get(&format!("/Patient/123/Observation?category={lab}")).allow(200),
        case("granular user search narrowed", "SMART-SEMANTICS 6.2 under user/")
            .scopes(USER_LAB).get(&format!("/Observation?category={lab}")).allow(200),
        case("granular user search not narrowed", "SMART-SEMANTICS 6.2")
            .scopes(USER_LAB).get("/Observation?code=1234-5").deny(),
        case("a resource-level scope makes the granular one irrelevant", "SMART-SEMANTICS 6.1: grants are unioned")
            .scopes("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory patient/Observation.s").patient("123").get("/Observation?patient=123").allow(200),
        // --- read (SMART-SEMANTICS 6.3: checked on the response)
        case("granular read of a matching resource", "SMART-SEMANTICS 6.3: the returned resource matches")
            .scopes(PATIENT_LAB).patient("123").get("/Observation/obs-1").allow(200),
        case("granular read of another category", "SMART-SEMANTICS 6.3: mismatch -> 403")
            .scopes(PATIENT_LAB).patient("123").get("/Observation/obs-2").withheld("vital-signs"),
        case("granular read of another patient's matching category", "SMART-SEMANTICS 6.3 + 3.3: both checks")
            .scopes(PATIENT_LAB).patient("123").get("/Observation/obs-a").withheld("Patient/456"),
        case("granular user read of any patient's matching category", "SMART-SEMANTICS 6.3 under user/")
            .scopes(USER_LAB).get("/Observation/obs-a").allow(200),
        case("granular user read of another category", "SMART-SEMANTICS 6.3")
            .scopes(USER_LAB).get("/Observation/obs-b").withheld("vital-signs"),
        case("granular vread checked too", "SMART-SEMANTICS 6.3: read/vread/history")
            .scopes(USER_LAB).get("/Observation/obs-b/_history/1").withheld("vital-signs"),
        case("granular Condition scope", "USCORE scopes: Condition category granular scopes")
            .scopes("patient/Condition.rs?category=http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item").patient("123")
            .get("/Condition?patient=123&category=http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item").allow(200),
        // --- writes (SMART-SEMANTICS 6.4)
        case("granular create of a matching resource", "SMART-SEMANTICS 6.4 / A7: the written resource must match")
            .scopes("user/Observation.c?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")
            .post("/Observation").json(observation(Some("Patient/456"))).allow(201),
        case("granular create of another category", "SMART-SEMANTICS 6.4 / A7")
            .scopes("user/Observation.c?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs")
            .post("/Observation").json(observation(Some("Patient/456"))).deny(),
        // --- malformed granular scopes grant nothing (SMART-SEMANTICS 1.1)
        case("a query without items grants nothing", "SMART-SEMANTICS 1.1: `.rs?` is malformed, never `.rs`")
            .scopes("patient/Observation.rs?").patient("123").get("/Observation?patient=123").deny(),
        case("an item without = grants nothing", "SMART-SEMANTICS 1.1: `.rs?category` is malformed")
            .scopes("patient/Observation.rs?category").patient("123").get("/Observation?patient=123").deny(),
        case("a v1 scope with a query grants nothing", "SMART-SEMANTICS 1.2: v1 with a query suffix is ignored")
            .scopes("user/Observation.read?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")
            .get(&format!("/Observation?category={lab}")).deny(),
        case("a malformed granular scope does not widen the read", "SMART-SEMANTICS 1.1")
            .scopes("user/Observation.rs?").get("/Observation/obs-1").deny(),
        case("granular batch read entries", "SMART-SEMANTICS 7 + 6.3")
            .scopes(USER_LAB).post("")
            .json(json!({ "resourceType": "Bundle", "type": "batch", "entry": [
                { "request": { "method": "GET", "url": "Observation/obs-b" } },
                { "request": { "method": "GET", "url": "Observation/obs-a" } },
            ] }))
            .batch(&[403, 200], 2, "secret-obs-b"),
    ]
}

#[tokio::test]
async fn granular_table_conforms() {
    let table = Table::start("granular").await;
    table.run_all(cases()).await;
}
