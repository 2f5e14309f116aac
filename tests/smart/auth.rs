// Tokens and scope grammar: missing/invalid tokens (RFC 6750 §3.1), invalid scope values that
// must grant nothing (SMART-SEMANTICS 1.1, A1), non-resource scopes (1.4), contexts (2).

use crate::runner::*;

/// The auth table.
pub fn cases() -> Vec<Case> {
    vec![
        // --- credentials (SMART-SEMANTICS 11)
        case(
            "no token",
            "RFC 6750 §3.1: no credentials -> 401 with a bare challenge",
        )
        .get("/Observation?patient=123")
        .deny_with(&[401], Challenge::Bare),
        case(
            "not a JWT",
            "RFC 6750 §3.1: invalid token -> 401 invalid_token",
        )
        .auth(Auth::Garbage)
        .get("/Patient/123")
        .deny_with(&[401], Challenge::Error("invalid_token")),
        case(
            "expired token",
            "RFC 6750 §3.1 / SMART-SEMANTICS 11: expired -> 401 invalid_token",
        )
        .auth(Auth::Expired)
        .get("/Patient/123")
        .deny_with(&[401], Challenge::Error("invalid_token")),
        case("bad signature", "RFC 6750 §3.1")
            .auth(Auth::BadSignature)
            .get("/Patient/123")
            .deny_with(&[401], Challenge::Error("invalid_token")),
        case(
            "token in the query string",
            "SMART-SEMANTICS 11: token in the query -> 400 invalid_request",
        )
        .get("/Patient/123?access_token=abc")
        .deny_with(&[400], Challenge::Error("invalid_request")),
        case("no token on a write", "RFC 6750 §3.1")
            .post("/Observation")
            .deny_with(&[401], Challenge::Bare),
        case("no token on a search under the base", "RFC 6750 §3.1")
            .get("?_type=Patient")
            .deny_with(&[401], Challenge::Bare),
        // --- invalid scopes grant nothing (SMART-SEMANTICS 1.1, A1)
        case(
            "out-of-order letters",
            "SAL2 line 86 / A1: `.sr` is ignored, never read as `.rs`",
        )
        .scopes("user/Observation.sr")
        .get("/Observation/obs-1")
        .deny(),
        case("duplicate letters", "SMART-SEMANTICS 1.1: `.rr` invalid")
            .scopes("user/Observation.rr")
            .get("/Observation/obs-1")
            .deny(),
        case(
            "unknown letter",
            "SMART-SEMANTICS 1.1: `.rsx` invalid, no valid prefix kept",
        )
        .scopes("user/Observation.rsx")
        .get("/Observation/obs-1")
        .deny(),
        case(
            "upper-case letters",
            "SMART-SEMANTICS 1.1: `.RS` invalid (case-sensitive)",
        )
        .scopes("user/Observation.RS")
        .get("/Observation/obs-1")
        .deny(),
        case(
            "no letters",
            "SMART-SEMANTICS 1.1: `patient/Observation.` grants nothing",
        )
        .scopes("user/Observation.")
        .get("/Observation/obs-1")
        .deny(),
        case(
            "out-of-order write letters",
            "SAL2 line 86: `.dus` is not a defined scope",
        )
        .scopes("user/Observation.dus")
        .delete("/Observation/obs-1")
        .deny(),
        case(
            "lower-case type",
            "SMART-SEMANTICS 1.1: `observation` is not a type",
        )
        .scopes("user/observation.rs")
        .get("/Observation/obs-1")
        .deny(),
        case(
            "unknown type",
            "SMART-SEMANTICS 1.1: `Observations` is not an R4 type",
        )
        .scopes("user/Observations.rs")
        .get("/Observation/obs-1")
        .deny(),
        case(
            "R5-only type scope",
            "SMART-SEMANTICS 1.1: SubscriptionTopic is not R4",
        )
        .scopes("user/SubscriptionTopic.rs user/Observation.s")
        .get("/Observation/obs-1")
        .deny(),
        case(
            "wildcard context",
            "SMART-SEMANTICS 1.3: `*/Observation.read` is not in the grammar",
        )
        .scopes("*/Observation.read")
        .get("/Observation/obs-1")
        .deny(),
        case(
            "capitalized context",
            "SAL2 line 412: `Patient/` is not the `patient` context",
        )
        .scopes("Patient/Observation.rs")
        .patient("123")
        .get("/Observation?patient=123")
        .deny(),
        case(
            "unknown context",
            "SMART-SEMANTICS 1.1: context is patient, user or system",
        )
        .scopes("admin/Observation.rs")
        .get("/Observation/obs-1")
        .deny(),
        case(
            "invalid scopes do not hide valid ones",
            "SMART-SEMANTICS 1.1: invalid scopes are ignored, valid ones still count",
        )
        .scopes("user/Observation.sr user/Observation.rx user/Observation.r")
        .get("/Observation/obs-1")
        .allow(200),
        // --- non-resource scopes grant no data (SMART-SEMANTICS 1.4)
        case(
            "identity scopes grant nothing",
            "SMART-SEMANTICS 1.4: openid fhirUser profile grant no FHIR data",
        )
        .scopes("openid fhirUser profile")
        .patient("123")
        .get("/Patient/123")
        .deny(),
        case(
            "launch scopes grant nothing",
            "SMART-SEMANTICS 1.4: launch, launch/patient",
        )
        .scopes("launch launch/patient launch/encounter")
        .patient("123")
        .get("/Patient/123")
        .deny(),
        case(
            "refresh scopes grant nothing",
            "SMART-SEMANTICS 1.4: offline_access, online_access",
        )
        .scopes("offline_access online_access")
        .patient("123")
        .get("/Patient/123")
        .deny(),
        case(
            "extension scopes grant nothing",
            "SAL2 extensibility: URI and __ scopes are for non-FHIR APIs",
        )
        .scopes("https://example.org/scopes/all __everything")
        .get("/Patient/123")
        .deny(),
        case("empty scope grants nothing", "SMART-SEMANTICS 3.5 step 2")
            .scopes("")
            .get("/Patient/123")
            .deny(),
        // --- v1/v2 mixing and contexts (SMART-SEMANTICS 1.3, 2)
        case(
            "v1 and v2 union",
            "SMART-SEMANTICS 1.3: v1 and v2 in one token are unioned",
        )
        .scopes("user/Observation.write user/Observation.s")
        .delete("/Observation/obs-a")
        .allow(200),
        case(
            "system context reads",
            "SMART-SEMANTICS 2: system/ unconfined",
        )
        .scopes("system/Observation.cruds")
        .get("/Observation/obs-a")
        .allow(200),
        case(
            "patient claim does not confine user/",
            "SMART-SEMANTICS 2: user/ not confined even with a patient claim",
        )
        .scopes("user/Observation.s")
        .patient("123")
        .get("/Observation?patient=456")
        .allow(200),
        case(
            "fhirUser claim does not set the patient",
            "SMART-SEMANTICS 3.1: fhirUser identifies the user, not the patient context",
        )
        .scopes("patient/Patient.r fhirUser")
        .get("/Patient/123")
        .deny_with(&[401, 403], Challenge::Any),
    ]
}

#[tokio::test]
async fn auth_table_conforms() {
    let table = Table::start("auth").await;
    table.run_all(cases()).await;
}
