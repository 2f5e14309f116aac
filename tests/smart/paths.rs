// The path tricks of the core issue under the FHIR base (SMART-SEMANTICS 12: "what is matched
// is what is forwarded"): every form that a backend could read as `Patient/456` while fhirwall
// reads something else is refused, for a token that may only read Patient/123. Sent byte for
// byte (no client-side normalization).

use crate::runner::*;

const P: &str = "patient/Patient.rs patient/Observation.rs";

/// The path table.
pub fn cases() -> Vec<Case> {
    vec![
        case(
            "dot-dot segment",
            "SMART-SEMANTICS 12: dot segments refused with 400",
        )
        .scopes(P)
        .patient("123")
        .get("/Patient/123/../456")
        .bad_path(),
        case("dot segment", "SMART-SEMANTICS 12")
            .scopes(P)
            .patient("123")
            .get("/./Patient/456")
            .bad_path(),
        case(
            "a lone .. id",
            "SMART-SEMANTICS 12: `Patient/..` caught before id parsing",
        )
        .scopes(P)
        .patient("123")
        .get("/Patient/..")
        .bad_path(),
        case("encoded dot-dot", "SMART-SEMANTICS 12: percent-encoded %2e")
            .scopes(P)
            .patient("123")
            .get("/Patient/123/%2e%2e/456")
            .bad_path(),
        case("encoded slash", "SMART-SEMANTICS 12: encoded /")
            .scopes(P)
            .patient("123")
            .get("/Patient%2F456")
            .bad_path(),
        case(
            "encoded slash inside an id",
            "SMART-SEMANTICS 12: encoded /",
        )
        .scopes(P)
        .patient("123")
        .get("/Patient/123%2F..%2F456")
        .bad_path(),
        case(
            "encoded type letter",
            "SMART-SEMANTICS 12: %50atient decodes to Patient/456: refuse, or decode once then authorize (403)",
        )
        .scopes(P)
        .patient("123")
        .get("/%50atient/456")
        .deny_with(&[400, 403], Challenge::Any),
        case(
            "encoded id digits",
            "SMART-SEMANTICS 12: Patient/%34%35%36 is Patient/456: refuse, or authorize the decoded path",
        )
        .scopes(P)
        .patient("123")
        .get("/Patient/%34%35%36")
        .deny_with(&[400, 403], Challenge::Any),
        case("encoded backslash", "SMART-SEMANTICS 12: encoded \\")
            .scopes(P)
            .patient("123")
            .get("/Patient/123%5C..%5C456")
            .bad_path(),
        case("encoded NUL", "SMART-SEMANTICS 12: encoded NUL")
            .scopes(P)
            .patient("123")
            .get("/Patient/456%00")
            .bad_path(),
        case(
            "encoded non-ASCII (full-width P)",
            "SMART-SEMANTICS 12: non-ASCII refused",
        )
        .scopes(P)
        .patient("123")
        .get("/%EF%BC%B0atient/456")
        .bad_path(),
        case("double-encoded slash", "SMART-SEMANTICS 12: encoded %")
            .scopes(P)
            .patient("123")
            .get("/Patient%252F456")
            .bad_path(),
        case(
            "lowercase type",
            "SMART-SEMANTICS 12: patient/123 is an unknown type, never Patient/123",
        )
        .scopes(P)
        .patient("123")
        .get("/patient/456")
        .refused(),
        case(
            "uppercase type",
            "SMART-SEMANTICS 12: PATIENT/123 is an unknown type",
        )
        .scopes(P)
        .patient("123")
        .get("/PATIENT/456")
        .refused(),
        case(
            "lowercase own type",
            "SMART-SEMANTICS 12: not Patient/123 either",
        )
        .scopes(P)
        .patient("123")
        .get("/patient/123")
        .refused(),
        case(
            "trailing slash",
            "SMART-SEMANTICS 12: trailing slash refused (or normalized and authorized)",
        )
        .scopes(P)
        .patient("123")
        .get("/Patient/456/")
        .deny_with(&[400, 403], Challenge::Any),
        case("double slash", "SMART-SEMANTICS 12: doubled slashes")
            .scopes(P)
            .patient("123")
            .get("//Patient/456")
            .bad_path(),
        case("double slash inside", "SMART-SEMANTICS 12: doubled slashes")
            .scopes(P)
            .patient("123")
            .get("/Patient//456")
            .bad_path(),
        case(
            "path parameter on the type",
            "SMART-SEMANTICS 12: `;` path parameters",
        )
        .scopes(P)
        .patient("123")
        .get("/Patient;x=1/456")
        .bad_path(),
        case(
            "path parameter on the id",
            "SMART-SEMANTICS 12: `;` path parameters",
        )
        .scopes(P)
        .patient("123")
        .get("/Patient/456;jsessionid=1")
        .bad_path(),
        case("path parameter hiding the own id", "SMART-SEMANTICS 12")
            .scopes(P)
            .patient("123")
            .get("/Patient/123;/../456")
            .bad_path(),
        case(
            "the base itself in another case",
            "SMART-SEMANTICS 12: case-sensitive; outside the FHIR base = no route",
        )
        .scopes("user/*.cruds")
        .get("/../FHIR/Patient/456")
        .bad_path(),
        case("compartment path with dot segment", "SMART-SEMANTICS 12")
            .scopes(P)
            .patient("123")
            .get("/Patient/123/Observation/../../456")
            .bad_path(),
    ]
}

#[tokio::test]
async fn paths_table_conforms() {
    let table = Table::start("paths").await;
    table.run_all(cases()).await;
}
