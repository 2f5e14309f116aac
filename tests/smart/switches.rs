// The two policy switches of the `fhir:` section, turned the other way
// (tests/fixtures/smart-policy-strict.yaml): `patient_scopes_outside_compartment: deny`
// (SMART-SEMANTICS 3.4 "refusable by a policy switch") and `granular_search: narrow`
// (smart-api.md: "fhirwall narrows it by adding the parameter").

use crate::runner::*;

const PATIENT_LAB: &str = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
const USER_LAB: &str = "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

/// The switches table.
pub fn cases() -> Vec<Case> {
    vec![
        case(
            "patient scope on a Practitioner read is refused",
            "SMART-SEMANTICS 3.4: outside-compartment access refusable by a policy switch",
        )
        .scopes("patient/Practitioner.r")
        .patient("123")
        .get("/Practitioner/pr-1")
        .deny(),
        case(
            "patient scope on a Practitioner search is refused",
            "SMART-SEMANTICS 3.4 switch",
        )
        .scopes("patient/Practitioner.rs")
        .patient("123")
        .get("/Practitioner?name=Delta")
        .deny(),
        case(
            "patient wildcard on an Organization is refused",
            "SMART-SEMANTICS 3.4 switch",
        )
        .scopes("patient/*.rs")
        .patient("123")
        .get("/Organization/org-1")
        .deny(),
        case(
            "user scope on a Practitioner is unaffected",
            "SMART-SEMANTICS 3.4: the switch is about patient/ grants",
        )
        .scopes("user/Practitioner.r")
        .get("/Practitioner/pr-1")
        .allow(200),
        case(
            "compartment types are unaffected",
            "SMART-SEMANTICS 3.3 still applies",
        )
        .scopes("patient/Observation.r")
        .patient("123")
        .get("/Observation/obs-1")
        .allow(200),
        case(
            "a granular search is narrowed by fhirwall",
            "smart-api.md granular_search: narrow (fhirwall appends the scope's items)",
        )
        .scopes(PATIENT_LAB)
        .patient("123")
        .get("/Observation?patient=123")
        .narrowed(200, "category", LAB),
        case(
            "a granular user search is narrowed",
            "smart-api.md granular_search: narrow",
        )
        .scopes(USER_LAB)
        .get("/Observation?code=1234-5")
        .narrowed(200, "category", LAB),
        case(
            "an already narrowed search keeps its category",
            "SMART-SEMANTICS 6.2",
        )
        .scopes(PATIENT_LAB)
        .patient("123")
        .get(&format!("/Observation?patient=123&category={LAB}"))
        .narrowed(200, "category", LAB),
        case(
            "narrowing does not confine",
            "SMART-SEMANTICS 3.3: confinement is still required under patient/",
        )
        .scopes(PATIENT_LAB)
        .patient("123")
        .get(&format!("/Observation?category={LAB}"))
        .deny(),
        case(
            "granular reads are still checked on the response",
            "SMART-SEMANTICS 6.3",
        )
        .scopes(USER_LAB)
        .get("/Observation/obs-b")
        .withheld("vital-signs"),
    ]
}

#[tokio::test]
async fn switches_table_conforms() {
    let table = Table::start_with_policy("switches", "smart-policy-strict.yaml").await;
    table.run_all(cases()).await;
}
