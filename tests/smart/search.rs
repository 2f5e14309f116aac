// Searches: type search by GET and POST _search, compartment search, system search with _type,
// type and system history, the patient/ confinement rules of SMART-SEMANTICS 3.3 (which
// parameters confine, which do not), and the types _include/_revinclude/chains/_has reach (§5).

use crate::runner::*;

/// The search table.
pub fn cases() -> Vec<Case> {
    vec![
        // --- confinement by parameter (SMART-SEMANTICS 3.3 "search on T in the compartment")
        case(
            "patient= confines",
            "SMART-SEMANTICS 3.3: patient (Patient-only) with one value P",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=123")
        .allow(200),
        case(
            "patient=Patient/P confines",
            "SMART-SEMANTICS 3.3: a typed reference to Patient/P",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=Patient/123")
        .allow(200),
        case(
            "patient=Patient%2FP confines",
            "SMART-SEMANTICS 12: query values are percent-decoded before comparison",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=Patient%2F123")
        .allow(200),
        case(
            "subject=Patient/P confines",
            "SMART-SEMANTICS 3.3: typed reference on a multi-target parameter",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?subject=Patient/123")
        .allow(200),
        case(
            "subject:Patient=P confines",
            "SMART-SEMANTICS 3.3: the :Patient modifier types a bare id",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?subject:Patient=123")
        .allow(200),
        case(
            "extra narrowing parameters keep it confined",
            "SMART-SEMANTICS 3.3: some occurrence confines; others only narrow",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?code=1234-5&patient=123&_count=50&_sort=-date")
        .allow(200),
        case(
            "bare subject=P does not confine",
            "SMART-SEMANTICS 3.2 / A20: subject=123 matches Group/123 too",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?subject=123")
        .deny(),
        case(
            "another patient is refused",
            "SMART-SEMANTICS 3.3: the value must be P",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=456")
        .deny(),
        case(
            "a comma list is an OR",
            "SMART-SEMANTICS 3.3: patient=123,456 does not confine",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=123,456")
        .deny(),
        case(
            "an encoded comma list is an OR too",
            "SMART-SEMANTICS 3.3 + 12: values decoded before comparison",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=123%2C456")
        .deny(),
        case(
            ":missing does not confine",
            "SMART-SEMANTICS 3.3: any other modifier does not confine",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient:missing=false")
        .deny(),
        case(
            ":not does not confine",
            "SMART-SEMANTICS 3.3: :not does not confine",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient:not=456")
        .deny(),
        case(
            ":identifier does not confine",
            "SMART-SEMANTICS 3.3: :identifier does not confine",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient:identifier=urn:mrn|123")
        .deny(),
        case(
            "a chain does not confine",
            "SMART-SEMANTICS 3.3: patient.name= does not confine",
        )
        .scopes("patient/Observation.rs patient/Patient.rs")
        .patient("123")
        .get("/Observation?patient.name=Alpha")
        .deny(),
        case(
            "no parameter is unconfined",
            "SMART-SEMANTICS 3.3 / A4: unconfined searches are denied",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation")
        .deny(),
        case(
            "other parameters only is unconfined",
            "SMART-SEMANTICS 3.3 / A4",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?code=1234-5")
        .deny(),
        case(
            "an empty patient value is unconfined",
            "SMART-SEMANTICS 3.3: exactly one value that is P",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=")
        .deny(),
        case(
            "a Group reference is not the patient",
            "SMART-SEMANTICS 3.3: a reference to Patient/P",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?subject=Group/123")
        .deny(),
        case(
            "Condition patient= confines",
            "SMART-SEMANTICS 3.2: Condition patient[P-only]",
        )
        .scopes("patient/Condition.rs")
        .patient("123")
        .get("/Condition?patient=123")
        .allow(200),
        case(
            "Encounter subject=Patient/P confines",
            "SMART-SEMANTICS 3.2: Encounter subject[Group,Patient]",
        )
        .scopes("patient/Encounter.rs")
        .patient("123")
        .get("/Encounter?subject=Patient/123")
        .allow(200),
        case(
            "Group needs a typed member reference",
            "SMART-SEMANTICS 3.2: Group member[7 types], only a typed reference confines",
        )
        .scopes("patient/Group.rs")
        .patient("123")
        .get("/Group?member=123")
        .deny(),
        case(
            "user/ search is unconfined",
            "SMART-SEMANTICS 2: user/ not confined",
        )
        .scopes("user/Observation.s")
        .patient("123")
        .get("/Observation?code=1234-5")
        .allow(200),
        case(
            "system/ search is unconfined",
            "SMART-SEMANTICS 2: system/ not confined",
        )
        .scopes("system/Observation.rs")
        .get("/Observation")
        .allow(200),
        // --- letters
        case(
            "read without search cannot search",
            "SAL2 §scopes: s = type-level search; r does not imply s",
        )
        .scopes("patient/Observation.r")
        .patient("123")
        .get("/Observation?patient=123")
        .deny()
        .needing("patient/Observation.s"),
        case(
            "search without read can search",
            "SAL2 §scopes: s alone allows search",
        )
        .scopes("patient/Observation.s")
        .patient("123")
        .get("/Observation?patient=123")
        .allow(200),
        case("v1 read searches", "SAL2: .read = .rs")
            .scopes("patient/Observation.read")
            .patient("123")
            .get("/Observation?patient=123")
            .allow(200),
        case("v1 write does not search", "SAL2: .write = .cud")
            .scopes("patient/Observation.write")
            .patient("123")
            .get("/Observation?patient=123")
            .deny(),
        case("type wildcard searches", "SAL2 §wildcard scopes")
            .scopes("patient/*.s")
            .patient("123")
            .get("/Observation?patient=123")
            .allow(200),
        case(
            "result parameters need no letters",
            "SMART-SEMANTICS 4: _count, _sort, _summary, _elements, _total",
        )
        .scopes("user/Observation.s")
        .get("/Observation?_count=5&_sort=date&_summary=true&_elements=code&_total=accurate")
        .allow(200),
        case(
            "_query is refused",
            "SMART-SEMANTICS 4: _query cannot be classified safely",
        )
        .scopes("user/*.cruds")
        .get("/Observation?_query=everything")
        .deny_with(&[400, 403], Challenge::Any),
        // --- Patient search
        case(
            "Patient _id=P confines",
            "SMART-SEMANTICS 3.3: search on Patient with _id=P",
        )
        .scopes("patient/Patient.rs")
        .patient("123")
        .get("/Patient?_id=123")
        .allow(200),
        case("Patient _id=other is refused", "SMART-SEMANTICS 3.3")
            .scopes("patient/Patient.rs")
            .patient("123")
            .get("/Patient?_id=456")
            .deny(),
        case(
            "Patient _id list is refused",
            "SMART-SEMANTICS 3.3: single value",
        )
        .scopes("patient/Patient.rs")
        .patient("123")
        .get("/Patient?_id=123,456")
        .deny(),
        case(
            "Patient search by name is unconfined",
            "SMART-SEMANTICS 3.3",
        )
        .scopes("patient/Patient.rs")
        .patient("123")
        .get("/Patient?name=Alpha")
        .deny(),
        case(
            "outside-compartment type searched unconfined",
            "SMART-SEMANTICS 3.4: not subject to confinement",
        )
        .scopes("patient/Practitioner.rs")
        .patient("123")
        .get("/Practitioner?name=Delta")
        .allow(200),
        // --- POST _search (form body)
        case(
            "POST _search is a search",
            "SMART-SEMANTICS 4: POST [type]/_search is a search, not a create",
        )
        .scopes("patient/Observation.s")
        .patient("123")
        .post("/Observation/_search")
        .form("patient=123")
        .allow(200),
        case(
            "POST _search for another patient",
            "SMART-SEMANTICS 4 + 3.3: body parameters are read",
        )
        .scopes("patient/Observation.s")
        .patient("123")
        .post("/Observation/_search")
        .form("patient=456")
        .deny(),
        case("POST _search unconfined", "SMART-SEMANTICS 3.3")
            .scopes("patient/Observation.s")
            .patient("123")
            .post("/Observation/_search")
            .form("code=1234-5")
            .deny(),
        case(
            "POST _search needs s, not c",
            "SMART-SEMANTICS 4: not a create",
        )
        .scopes("patient/Observation.c")
        .patient("123")
        .post("/Observation/_search")
        .form("patient=123")
        .deny(),
        case(
            "POST _search combines URL and body",
            "SMART-SEMANTICS 4: URL and body params combine",
        )
        .scopes("patient/Observation.s")
        .patient("123")
        .post("/Observation/_search?patient=123")
        .form("code=1234-5")
        .allow(200),
        case(
            "POST _search hides an include in the body",
            "SMART-SEMANTICS 4 + 5: body params add requirements too",
        )
        .scopes("patient/Observation.s")
        .patient("123")
        .post("/Observation/_search")
        .form("patient=123&_revinclude=Provenance:target")
        .deny(),
        // --- compartment search
        case(
            "compartment search of the own patient",
            "SMART-SEMANTICS 3.3: URL Patient/P/T confines",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Patient/123/Observation")
        .allow(200),
        case(
            "compartment search of another patient",
            "SMART-SEMANTICS 3.3",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Patient/456/Observation")
        .deny(),
        case(
            "compartment search needs s",
            "SMART-SEMANTICS 4: s on the type",
        )
        .scopes("patient/Observation.r")
        .patient("123")
        .get("/Patient/123/Observation")
        .deny(),
        case("compartment search with user scope", "SMART-SEMANTICS 2")
            .scopes("user/Observation.s")
            .get("/Patient/456/Observation?code=1234-5")
            .allow(200),
        case(
            "compartment star with a wildcard scope",
            "SMART-SEMANTICS 4: Patient/[id]/* needs s on every compartment type",
        )
        .scopes("patient/*.rs")
        .patient("123")
        .get("/Patient/123/*")
        .allow(200),
        case(
            "compartment star with one type is refused",
            "SMART-SEMANTICS 4: s on every compartment type",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Patient/123/*")
        .deny(),
        // --- system search (SMART-SEMANTICS 4: s on each _type, or on *)
        case(
            "system search with _type",
            "SMART-SEMANTICS 4: system search needs s on each _type",
        )
        .scopes("user/Observation.s")
        .get("?_type=Observation")
        .allow(200),
        case(
            "system search with two types needs both",
            "SMART-SEMANTICS 4",
        )
        .scopes("user/Observation.s")
        .get("?_type=Observation,Condition")
        .deny(),
        case("system search with both types granted", "SMART-SEMANTICS 4")
            .scopes("user/Observation.s user/Condition.s")
            .get("?_type=Observation,Condition")
            .allow(200),
        case(
            "system search without _type needs *",
            "SMART-SEMANTICS 4: s on * if no _type",
        )
        .scopes("user/Observation.s")
        .get("?code=1234-5")
        .deny(),
        case("system search without _type with *", "SMART-SEMANTICS 4")
            .scopes("user/*.s")
            .get("?code=1234-5")
            .allow(200),
        case(
            "system search under patient/ is refused",
            "SMART-SEMANTICS 3.3: system search cannot be confined",
        )
        .scopes("patient/*.rs")
        .patient("123")
        .get("?_type=Observation&patient=123")
        .deny(),
        case(
            "POST system _search",
            "SMART-SEMANTICS 4: POST [base]/_search is a system search",
        )
        .scopes("user/Observation.s")
        .post("/_search")
        .form("_type=Observation")
        .allow(200),
        case(
            "POST system _search needs the _type's s",
            "SMART-SEMANTICS 4",
        )
        .scopes("user/Condition.s")
        .post("/_search")
        .form("_type=Observation")
        .deny(),
        // --- history (SAL2: s = type-level and system-level history)
        case(
            "type history needs s",
            "SAL2 §scopes: s = type-level history",
        )
        .scopes("user/Observation.s")
        .get("/Observation/_history")
        .allow(200),
        case(
            "type history with r only",
            "SAL2 §scopes: type history is s, not r",
        )
        .scopes("user/Observation.r")
        .get("/Observation/_history")
        .deny(),
        case(
            "type history under patient/ is refused",
            "SMART-SEMANTICS 3.3 / A21: not confinable",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation/_history")
        .deny(),
        case(
            "system history needs s on *",
            "SMART-SEMANTICS 4: GET _history = s on *",
        )
        .scopes("user/*.s")
        .get("/_history")
        .allow(200),
        case("system history with one type", "SMART-SEMANTICS 4")
            .scopes("user/Observation.s")
            .get("/_history")
            .deny(),
        case(
            "system history under patient/ is refused",
            "SMART-SEMANTICS 3.3: not confinable",
        )
        .scopes("patient/*.rs")
        .patient("123")
        .get("/_history")
        .deny(),
        // --- included resources are checked on the response (SMART-SEMANTICS 5 "Confinement")
        case(
            "included resources of the own patient pass",
            "SMART-SEMANTICS 5: included compartment resources checked on the response",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=123&_id=obs-1&_include=Observation:has-member:Observation")
        .allow(200),
        case(
            "an included resource of another patient is withheld",
            "SMART-SEMANTICS 5: a reference can point outside the compartment",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=123&_id=obs-2&_include=Observation:has-member:Observation")
        .withheld("Patient/456"),
        case(
            "included resources under user/ are not checked",
            "SMART-SEMANTICS 2: user/ unconfined",
        )
        .scopes("user/Observation.s")
        .get("/Observation?_id=obs-2&_include=Observation:has-member:Observation")
        .allow(200),
        case(
            "has-member reaches every target type",
            "SMART-SEMANTICS 5: s on every target of param (R4-SP has-member)",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=123&_include=Observation:has-member")
        .deny(),
        // --- _include, _revinclude, chains, _has (SMART-SEMANTICS 5)
        case(
            "_include needs s on the targets",
            "SMART-SEMANTICS 5: _include=Src:param -> s on every target of param",
        )
        .scopes("patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=123&_include=Observation:performer")
        .deny(),
        case(
            "_include with a typed target",
            "SMART-SEMANTICS 5: only Target if given",
        )
        .scopes("patient/Observation.rs patient/Practitioner.rs")
        .patient("123")
        .get("/Observation?patient=123&_include=Observation:performer:Practitioner")
        .allow(200),
        case(
            "_include of the subject Patient",
            "SMART-SEMANTICS 5: included Patient inherits the confinement",
        )
        .scopes("patient/Observation.rs patient/Patient.rs")
        .patient("123")
        .get("/Observation?patient=123&_include=Observation:subject:Patient")
        .allow(200),
        case(
            "_include of the subject without Patient.s",
            "SMART-SEMANTICS 5",
        )
        .scopes("patient/Observation.rs patient/Patient.r")
        .patient("123")
        .get("/Observation?patient=123&_include=Observation:subject:Patient")
        .deny(),
        case(
            "_include=* needs s on *",
            "SMART-SEMANTICS 5: _include=* -> s on *",
        )
        .scopes("user/Observation.s user/Patient.s")
        .get("/Observation?_include=*")
        .deny(),
        case("_include=* with *", "SMART-SEMANTICS 5")
            .scopes("user/*.s")
            .get("/Observation?_include=*")
            .allow(200),
        case(
            "_include:iterate counts too",
            "SMART-SEMANTICS 5: _include:iterate",
        )
        .scopes("user/Observation.s")
        .get("/Observation?_include:iterate=Observation:subject:Patient")
        .deny(),
        case(
            "_revinclude needs s on the source",
            "SMART-SEMANTICS 5: _revinclude=Src:param -> s on Src",
        )
        .scopes("user/Observation.s")
        .get("/Observation?_revinclude=Provenance:target")
        .deny()
        .needing("user/Provenance.s"),
        case("_revinclude with the source granted", "SMART-SEMANTICS 5")
            .scopes("user/Observation.s user/Provenance.s")
            .get("/Observation?_revinclude=Provenance:target")
            .allow(200),
        case(
            "a chain needs s on the chained type",
            "SMART-SEMANTICS 5: chained param:Type.x -> s on Type",
        )
        .scopes("user/Observation.s")
        .get("/Observation?subject:Patient.name=Alpha")
        .deny(),
        case("a chain with the chained type granted", "SMART-SEMANTICS 5")
            .scopes("user/Observation.s user/Patient.s")
            .get("/Observation?subject:Patient.name=Alpha")
            .allow(200),
        case(
            "an untyped chain reaches every target",
            "SMART-SEMANTICS 5: param.x -> s on the chained type(s)",
        )
        .scopes("user/Observation.s user/Patient.s")
        .get("/Observation?subject.name=Alpha")
        .deny(),
        case(
            "_has needs s on its type",
            "SMART-SEMANTICS 5: _has:Type:param:x -> s on Type (issue 3: a _has leaks values)",
        )
        .scopes("user/Patient.s")
        .get("/Patient?_has:Observation:patient:code=1234-5")
        .deny(),
        case("_has with its type granted", "SMART-SEMANTICS 5")
            .scopes("user/Patient.s user/Observation.s")
            .get("/Patient?_has:Observation:patient:code=1234-5")
            .allow(200),
        case(
            "_has under patient/ inherits the confinement",
            "SMART-SEMANTICS 5: requirements inherit the primary confinement",
        )
        .scopes("patient/Patient.s patient/Observation.s")
        .patient("123")
        .get("/Patient?_id=123&_has:Observation:patient:code=1234-5")
        .allow(200),
    ]
}

#[tokio::test]
async fn search_table_conforms() {
    let table = Table::start("search").await;
    table.run_all(cases()).await;
}
