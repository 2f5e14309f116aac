// Operations (SMART-SEMANTICS 8): $everything (instance: r+s on the compartment, confined;
// type level: not confinable), $export (system/Patient/Group, user/ or system/ grants only,
// `_type` narrows), $lastn (s, confined like a search), and every other operation refused
// unless the policy lists it (the suite's policy lists type-level POST Observation/$validate).

use serde_json::json;

use crate::runner::*;

/// The operations table.
pub fn cases() -> Vec<Case> {
    let parameters = json!({ "resourceType": "Parameters", "parameter": [] });
    vec![
        // --- $everything
        case(
            "$everything of the own patient",
            "SMART-SEMANTICS 8: Patient/[id]/$everything = r+s on the compartment, [id] = P",
        )
        .scopes("patient/*.rs")
        .patient("123")
        .get("/Patient/123/$everything")
        .allow(200),
        case(
            "$everything of another patient",
            "SMART-SEMANTICS 8: [id] must be the context patient",
        )
        .scopes("patient/*.rs")
        .patient("123")
        .get("/Patient/456/$everything")
        .deny(),
        case(
            "$everything needs every compartment type",
            "SMART-SEMANTICS 8: r+s on every patient-compartment type",
        )
        .scopes("patient/Observation.rs patient/Patient.rs")
        .patient("123")
        .get("/Patient/123/$everything")
        .deny(),
        case("$everything needs r and s", "SMART-SEMANTICS 8")
            .scopes("patient/*.s")
            .patient("123")
            .get("/Patient/123/$everything")
            .deny(),
        case(
            "$everything by POST",
            "SMART-SEMANTICS 8: GET/POST Patient/[id]/$everything",
        )
        .scopes("patient/*.read")
        .patient("123")
        .post("/Patient/123/$everything")
        .json(parameters.clone())
        .allow(200),
        case("$everything with a user scope", "SMART-SEMANTICS 2 + 8")
            .scopes("user/*.rs")
            .get("/Patient/456/$everything")
            .allow(200),
        case(
            "type-level $everything under patient/",
            "SMART-SEMANTICS 8 / 3.3: not confinable, deny under patient/",
        )
        .scopes("patient/*.rs")
        .patient("123")
        .get("/Patient/$everything")
        .deny(),
        case(
            "type-level $everything with a user scope",
            "SMART-SEMANTICS 8",
        )
        .scopes("user/*.rs")
        .get("/Patient/$everything")
        .allow(200),
        // --- $export
        case(
            "system $export with system/*.read",
            "SMART-SEMANTICS 8: $export = r+s on every exported type (Bulk Data system/*.read)",
        )
        .scopes("system/*.read")
        .get("/$export")
        .allow(202),
        case(
            "system $export under patient/",
            "SMART-SEMANTICS 8: user/ or system/ grants only",
        )
        .scopes("patient/*.rs")
        .patient("123")
        .get("/$export")
        .deny(),
        case(
            "system $export narrowed by _type",
            "SMART-SEMANTICS 8: _type narrows",
        )
        .scopes("system/Observation.rs")
        .get("/$export?_type=Observation")
        .allow(202),
        case(
            "system $export without _type needs every type",
            "SMART-SEMANTICS 8",
        )
        .scopes("system/Observation.rs")
        .get("/$export")
        .deny(),
        case("system $export needs r and s", "SMART-SEMANTICS 8: r+s")
            .scopes("system/*.s")
            .get("/$export")
            .deny(),
        case("Patient $export", "SMART-SEMANTICS 8: Patient/$export")
            .scopes("system/*.rs")
            .get("/Patient/$export")
            .allow(202),
        case(
            "Patient $export with a user scope",
            "SMART-SEMANTICS 8: user/ or system/",
        )
        .scopes("user/*.rs")
        .get("/Patient/$export?_type=Observation,Patient")
        .allow(202),
        case("Group $export", "SMART-SEMANTICS 8: Group/[id]/$export")
            .scopes("system/*.rs")
            .get("/Group/g1/$export")
            .allow(202),
        case("Group $export under patient/", "SMART-SEMANTICS 8")
            .scopes("patient/*.rs")
            .patient("123")
            .get("/Group/g1/$export")
            .deny(),
        // --- $lastn
        case(
            "$lastn confined",
            "SMART-SEMANTICS 8: Observation/$lastn = s, confined like a search",
        )
        .scopes("patient/Observation.s")
        .patient("123")
        .get("/Observation/$lastn?patient=123")
        .allow(200),
        case("$lastn for another patient", "SMART-SEMANTICS 8 + 3.3")
            .scopes("patient/Observation.s")
            .patient("123")
            .get("/Observation/$lastn?patient=456")
            .deny(),
        case("$lastn unconfined", "SMART-SEMANTICS 8 + 3.3")
            .scopes("patient/Observation.s")
            .patient("123")
            .get("/Observation/$lastn?code=1234-5")
            .deny(),
        case("$lastn needs s", "SMART-SEMANTICS 8")
            .scopes("user/Observation.r")
            .get("/Observation/$lastn?code=1234-5")
            .deny(),
        // --- configured and unlisted operations
        case(
            "a listed operation with its scope",
            "SMART-SEMANTICS 8 / A10: allowed when the policy maps it",
        )
        .scopes("user/Observation.r")
        .post("/Observation/$validate")
        .json(parameters.clone())
        .allow(200),
        case(
            "a listed operation without its scope",
            "smart-api.md fhir.operations scopes",
        )
        .scopes("user/Observation.s")
        .post("/Observation/$validate")
        .json(parameters.clone())
        .deny(),
        case(
            "a listed operation with another method",
            "smart-api.md fhir.operations methods",
        )
        .scopes("user/Observation.r")
        .get("/Observation/$validate")
        .deny_with(&[403], Challenge::Any),
        case(
            "a listed operation on another type",
            "smart-api.md fhir.operations types",
        )
        .scopes("user/*.cruds")
        .post("/Condition/$validate")
        .json(parameters.clone())
        .deny_with(&[403], Challenge::Any),
        case(
            "a listed operation at another level",
            "smart-api.md fhir.operations level",
        )
        .scopes("user/*.cruds")
        .post("/Observation/obs-1/$validate")
        .json(parameters.clone())
        .deny_with(&[403], Challenge::Any),
        case(
            "unlisted instance operation",
            "SMART-SEMANTICS 8: anything else refused unless configured",
        )
        .scopes("user/*.cruds")
        .post("/Observation/obs-1/$meta-add")
        .json(parameters.clone())
        .deny_with(&[403], Challenge::Any),
        case("unlisted system operation", "SMART-SEMANTICS 8")
            .scopes("system/*.cruds")
            .post("/$graphql")
            .json(json!({ "query": "{ PatientList { id } }" }))
            .deny_with(&[403], Challenge::Any),
        case(
            "unlisted destructive operation",
            "SMART-SEMANTICS 8: $purge refused",
        )
        .scopes("system/*.cruds")
        .post("/Patient/123/$purge")
        .deny_with(&[403], Challenge::Any),
    ]
}

#[tokio::test]
async fn operations_table_conforms() {
    let table = Table::start("operations").await;
    table.run_all(cases()).await;
}
