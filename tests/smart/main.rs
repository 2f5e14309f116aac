//! SMART on FHIR conformance suite (issue 3): tables of cases (granted scopes, patient
//! context, method, URL, headers, body -> allow or deny, each citing the rule it checks in
//! SMART App Launch 2.2 / FHIR R4 / SMART-SEMANTICS.md), run through the real `fhirwall`
//! binary in front of a FHIR R4 backend that holds several patients' data.
//!
//! One `#[tokio::test]` per table: it starts one issuer, backend and gateway, runs every case
//! in order, and fails once listing every deviating case (table/case [rule]: why), so one run
//! shows them all. Tokens are minted once per scope set.

#[path = "../support/mod.rs"]
mod support;

mod runner;

mod auth;
mod backend;
mod bundle;
mod granular;
mod operations;
mod paging;
mod paths;
mod read;
mod search;
mod switches;
mod write;

/// Issue 3 "Must show": a conformance suite of at least 150 cases.
#[test]
fn the_suite_has_at_least_150_cases() {
    let total = read::cases().len()
        + search::cases().len()
        + write::cases().len()
        + bundle::cases().len()
        + granular::cases().len()
        + operations::cases().len()
        + paths::cases().len()
        + auth::cases().len()
        + paging::cases().len()
        + switches::cases().len();
    assert!(total >= 150, "only {total} cases");
}
