// Instance-level reads (read, vread, instance history), HEAD, capabilities and discovery:
// letters (SAL2 r), v1/v2, wildcards, contexts, and response-side compartment checks against a
// backend that returns other patients' resources (obs-a, cond-x belong to Patient/456).

use crate::runner::*;

/// The read table.
pub fn cases() -> Vec<Case> {
    vec![
        // --- Patient/<id>: decided on the URL (SMART-SEMANTICS 3.3 first row)
        case(
            "patient token reads its own Patient",
            "SAL2 §scopes: r = read; SMART-SEMANTICS 3.3 Patient/<id> == P",
        )
        .scopes("patient/Patient.r")
        .patient("123")
        .get("/Patient/123")
        .allow(200),
        case(
            "patient token cannot read another Patient",
            "SMART-SEMANTICS 3.3: Patient/<id> only when id == P",
        )
        .scopes("patient/Patient.r")
        .patient("123")
        .get("/Patient/456")
        .deny(),
        case(
            "an id that starts with the context id is another patient",
            "SMART-SEMANTICS 3.3: exact id comparison",
        )
        .scopes("patient/Patient.r")
        .patient("123")
        .get("/Patient/1234")
        .deny(),
        case(
            "ids are case-sensitive",
            "SMART-SEMANTICS 3.2: ids are case-sensitive (R4-HTTP)",
        )
        .scopes("patient/Patient.r")
        .patient("abc")
        .get("/Patient/ABC")
        .deny(),
        case(
            "a linked patient is not reachable",
            "SMART-SEMANTICS 3.2 / A12: only Patient/<ctx>, not Patient.link",
        )
        .scopes("patient/Patient.r")
        .patient("123")
        .get("/Patient/789")
        .deny(),
        case(
            "patient scope without a patient claim grants nothing",
            "SMART-SEMANTICS 2 / A15: no patient claim => deny (401 or 403)",
        )
        .scopes("patient/Patient.r")
        .get("/Patient/123")
        .deny_with(&[401, 403], Challenge::Any),
        case(
            "user scope reads any Patient",
            "SMART-SEMANTICS 2: user/ is not confined, even with a patient claim",
        )
        .scopes("user/Patient.r")
        .patient("123")
        .get("/Patient/456")
        .allow(200),
        case(
            "system scope reads any Patient",
            "SMART-SEMANTICS 2: system/ is not confined",
        )
        .scopes("system/Patient.r")
        .get("/Patient/456")
        .allow(200),
        case("HEAD is a read", "SMART-SEMANTICS 4 / A24: HEAD = read")
            .scopes("patient/Patient.r")
            .patient("123")
            .head("/Patient/123")
            .allow(200),
        case(
            "HEAD of another patient is refused",
            "SMART-SEMANTICS 4 / A24: HEAD = read, confined like GET",
        )
        .scopes("patient/Patient.r")
        .patient("123")
        .head("/Patient/456")
        .deny_with(&[403], Challenge::Error("insufficient_scope")),
        // --- letters
        case(
            "search-only scope does not read",
            "SAL2 §scopes: r and s are independent (SMART-SEMANTICS 1.2)",
        )
        .scopes("user/Observation.s")
        .get("/Observation/obs-1")
        .deny()
        .needing("user/Observation.r"),
        case(
            "create-only scope does not read",
            "SAL2: write access does not imply read access",
        )
        .scopes("user/Observation.cud")
        .get("/Observation/obs-1")
        .deny(),
        case(
            "read scope for another type does not read",
            "SAL2 §scopes: the scope names the resource type",
        )
        .scopes("user/Condition.rs")
        .get("/Observation/obs-1")
        .deny(),
        case("v1 read reads", "SAL2 §scopes v1: .read = .rs")
            .scopes("user/Observation.read")
            .get("/Observation/obs-a")
            .allow(200),
        case(
            "v1 write does not read",
            "SAL2 §scopes v1: .write = .cud (no read)",
        )
        .scopes("user/Observation.write")
        .get("/Observation/obs-a")
        .deny()
        .needing("user/Observation.r"),
        case("v1 star reads", "SAL2 §scopes v1: .* = .cruds")
            .scopes("user/Observation.*")
            .get("/Observation/obs-a")
            .allow(200),
        case(
            "type wildcard reads any type",
            "SAL2 §wildcard scopes: * = every resource type",
        )
        .scopes("user/*.r")
        .get("/Condition/cond-x")
        .allow(200),
        case(
            "v1 wildcard reads any type",
            "SAL1 clinical scope syntax: user/*.read",
        )
        .scopes("user/*.read")
        .get("/Encounter/enc-1")
        .allow(200),
        case("system wildcard v1 reads", "Bulk Data v1: system/*.read")
            .scopes("system/*.read")
            .get("/Practitioner/pr-1")
            .allow(200),
        case(
            "letters from two grants combine",
            "SAL2 §scope equivalence: scopes are a union",
        )
        .scopes("user/Observation.s user/Observation.r")
        .get("/Observation/obs-1")
        .allow(200),
        // --- compartment types read under patient/: decided on the response
        case(
            "patient token reads its own Observation",
            "SMART-SEMANTICS 3.3: T/<id> in P's compartment, decided on the response",
        )
        .scopes("patient/Observation.r")
        .patient("123")
        .get("/Observation/obs-1")
        .allow(200),
        case(
            "patient token cannot read another patient's Observation",
            "SMART-SEMANTICS 3.3: response outside the compartment -> 403",
        )
        .scopes("patient/Observation.r")
        .patient("123")
        .get("/Observation/obs-a")
        .withheld("Patient/456"),
        case(
            "the other patient reads it",
            "SMART-SEMANTICS 3.3: response in the compartment",
        )
        .scopes("patient/Observation.rs")
        .patient("456")
        .get("/Observation/obs-a")
        .allow(200),
        case(
            "an Observation about a Group is not the patient's",
            "SMART-SEMANTICS 3.2: subject Group/123 is not Patient/123",
        )
        .scopes("patient/Observation.r")
        .patient("123")
        .get("/Observation/obs-g")
        .withheld("Group/123"),
        case(
            "patient wildcard read checks the response",
            "SMART-SEMANTICS 3.3 with a * grant",
        )
        .scopes("patient/*.read")
        .patient("123")
        .get("/Condition/cond-x")
        .withheld("Patient/456"),
        case(
            "patient token reads its own Condition",
            "SMART-SEMANTICS 3.3 (Condition: patient, subject)",
        )
        .scopes("patient/Condition.r")
        .patient("123")
        .get("/Condition/cond-1")
        .allow(200),
        case(
            "patient token reads its own Encounter",
            "SMART-SEMANTICS 3.3 (Encounter: subject)",
        )
        .scopes("patient/Encounter.r")
        .patient("123")
        .get("/Encounter/enc-1")
        .allow(200),
        case(
            "user token reads another patient's Observation",
            "SMART-SEMANTICS 2: user/ unconfined, no response check",
        )
        .scopes("user/Observation.r")
        .patient("123")
        .get("/Observation/obs-a")
        .allow(200),
        case("vread of the own Observation", "SAL2 §scopes: r = vread")
            .scopes("patient/Observation.r")
            .patient("123")
            .get("/Observation/obs-1/_history/1")
            .allow(200),
        case(
            "vread of another patient's Observation",
            "SAL2 r = vread; SMART-SEMANTICS 3.3 on the response",
        )
        .scopes("patient/Observation.r")
        .patient("123")
        .get("/Observation/obs-a/_history/1")
        .withheld("Patient/456"),
        case("vread needs r", "SAL2 §scopes: vread is r, not s")
            .scopes("user/Observation.s")
            .get("/Observation/obs-1/_history/1")
            .deny(),
        case(
            "instance history of the own Observation",
            "SAL2 §scopes: r = instance history",
        )
        .scopes("patient/Observation.r")
        .patient("123")
        .get("/Observation/obs-1/_history")
        .allow(200),
        case(
            "instance history of another patient's Observation",
            "SMART-SEMANTICS 4: history Bundle entries checked",
        )
        .scopes("patient/Observation.r")
        .patient("123")
        .get("/Observation/obs-a/_history")
        .withheld("Patient/456"),
        case(
            "instance history needs r, not s",
            "SAL2 §scopes: instance history is r",
        )
        .scopes("user/Observation.s")
        .get("/Observation/obs-1/_history")
        .deny(),
        case(
            "instance history of the own Patient",
            "SAL2 r = instance history; 3.3 Patient id == P",
        )
        .scopes("patient/Patient.r")
        .patient("123")
        .get("/Patient/123/_history")
        .allow(200),
        case(
            "instance history of another Patient",
            "SMART-SEMANTICS 3.3: Patient/<id> == P",
        )
        .scopes("patient/Patient.r")
        .patient("123")
        .get("/Patient/456/_history")
        .deny(),
        case("vread of the own Patient", "SAL2 r = vread; SMART-SEMANTICS 3.3 Patient/<id> == P")
            .scopes("patient/Patient.r").patient("123").get("/Patient/123/_history/1").allow(200),
        case("vread of another Patient", "SMART-SEMANTICS 3.3")
            .scopes("patient/Patient.r").patient("123").get("/Patient/456/_history/1").deny(),
        case("a checked read cannot ask for XML", "smart-api.md response checks: the body is checked as FHIR JSON; fail closed (common.md)")
            .scopes("patient/Observation.r").patient("123").get("/Observation/obs-1?_format=xml").deny_with(&[400, 403, 406], Challenge::Any),
        // --- types outside the patient compartment (3.4)
        case(
            "patient scope reads a Practitioner",
            "SMART-SEMANTICS 3.4: outside the compartment, allowed unconfined by default",
        )
        .scopes("patient/Practitioner.r")
        .patient("123")
        .get("/Practitioner/pr-1")
        .allow(200),
        case("patient scope reads a Medication", "SMART-SEMANTICS 3.4")
            .scopes("patient/Medication.read")
            .patient("123")
            .get("/Medication/med-1")
            .allow(200),
        case("patient scope reads an Organization", "SMART-SEMANTICS 3.4")
            .scopes("patient/*.rs")
            .patient("123")
            .get("/Organization/org-1")
            .allow(200),
        // --- unknown types and ids
        case(
            "unknown resource type is refused",
            "issue 3: unknown resource types are refused (SMART-SEMANTICS 12: 400/404)",
        )
        .scopes("user/*.cruds")
        .get("/Observations/obs-1")
        .refused(),
        case(
            "abstract type is refused",
            "SMART-SEMANTICS 1.1: Resource/DomainResource are abstract",
        )
        .scopes("user/*.cruds")
        .get("/DomainResource/obs-1")
        .refused(),
        case(
            "R5-only type is refused",
            "SMART-SEMANTICS 1.1: SubscriptionTopic is not R4",
        )
        .scopes("user/*.cruds")
        .get("/SubscriptionTopic/x")
        .refused(),
        // --- capabilities and discovery (SMART-SEMANTICS 9)
        case(
            "metadata is public",
            "SMART-SEMANTICS 9 / A19: GET metadata public",
        )
        .get("/metadata")
        .allow(200),
        case(
            "metadata with a token too",
            "SMART-SEMANTICS 9: capabilities need no letters",
        )
        .scopes("openid")
        .get("/metadata")
        .allow(200),
        case(
            "POST metadata is not public",
            "SMART-SEMANTICS 9: only GET metadata is public",
        )
        .post("/metadata")
        .deny_with(&[401], Challenge::Bare),
        case(
            "Metadata (case) is not the public endpoint",
            "SMART-SEMANTICS 9: `Metadata` (case) is not public",
        )
        .get("/Metadata")
        .deny_with(&[400, 401, 403, 404], Challenge::Any),
        case(
            "smart-configuration is public",
            "SAL2 conformance: .well-known/smart-configuration without a token",
        )
        .get("/.well-known/smart-configuration")
        .public(200),
        case(
            "no token on a resource read",
            "RFC 6750 §3.1: no credentials -> 401, no error code",
        )
        .get("/Patient/123")
        .deny_with(&[401], Challenge::Bare),
        // --- explicit routes come first (smart-api.md "Routing order")
        case(
            "explicit route is decided by the route",
            "smart-api.md routing order 1: explicit routes first",
        )
        .scopes("user/Basic.r")
        .get("/legacy/report")
        .allow(200),
        case(
            "explicit route refuses without its scope",
            "smart-api.md routing order 1: the route's scopes",
        )
        .scopes("user/*.s")
        .get("/legacy/report")
        .deny(),
    ]
}

#[tokio::test]
async fn read_table_conforms() {
    let table = Table::start("read").await;
    table.run_all(cases()).await;
}
