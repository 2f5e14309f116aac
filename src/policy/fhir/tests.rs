//! Table-driven tests of the FHIR R4 classifier. Each case names the rule it checks.

use super::*;

/// `Interaction [cond] [body=..] [filter] req req ...`, or `ERR Variant`.
fn render(r: Result<Request, Unclassifiable>) -> String {
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            let v = format!("{e:?}");
            let name = v.split(['(', ' ', '{']).next().unwrap_or("").to_owned();
            return format!("ERR {name}");
        }
    };
    let mut out = format!("{:?}", r.interaction);
    if r.conditional {
        out.push_str(" cond");
    }
    if r.body != BodyNeed::None {
        out.push_str(&format!(" body={:?}", r.body));
    }
    if r.filter {
        out.push_str(" filter");
    }
    for q in &r.requirements {
        out.push_str(&format!(" {q}"));
    }
    out
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).unwrap()
}

/// (rule, method, path, query, expected)
const CASES: &[(&str, &str, &str, Option<&str>, &str)] = &[
    // --- R4 http.html#read / #vread / #history; SAL2 `r` ---
    ("read is r", "GET", "Patient/123", None, "Read Patient.r"),
    (
        "leading slash is accepted",
        "GET",
        "/Patient/123",
        None,
        "Read Patient.r",
    ),
    (
        "HEAD is GET (A24)",
        "HEAD",
        "Observation/abc",
        None,
        "Read Observation.r",
    ),
    (
        "vread is r",
        "GET",
        "Observation/1/_history/2",
        None,
        "Vread Observation.r",
    ),
    (
        "instance history is r (SAL2)",
        "GET",
        "Observation/1/_history",
        None,
        "HistoryInstance Observation.r",
    ),
    (
        "type history is s (SAL2)",
        "GET",
        "Observation/_history",
        None,
        "HistoryType Observation.s",
    ),
    (
        "system history is s on *",
        "GET",
        "_history",
        None,
        "HistorySystem *.s",
    ),
    (
        "history params need nothing more",
        "GET",
        "Observation/_history",
        Some("_since=2020-01-01&_count=10"),
        "HistoryType Observation.s",
    ),
    // --- writes: SAL2 c/u/d ---
    (
        "create is c",
        "POST",
        "Observation",
        None,
        "Create Observation.c",
    ),
    (
        "update is u",
        "PUT",
        "Observation/1",
        None,
        "Update Observation.u",
    ),
    (
        "patch is u",
        "PATCH",
        "Observation/1",
        None,
        "Patch Observation.u",
    ),
    (
        "delete is d",
        "DELETE",
        "Observation/1",
        None,
        "Delete Observation.d",
    ),
    (
        "conditional update is u+s (A8)",
        "PUT",
        "Observation",
        Some("identifier=x|1"),
        "Update cond Observation.us",
    ),
    (
        "conditional patch is u+s (A8)",
        "PATCH",
        "Observation",
        Some("identifier=x|1"),
        "Patch cond Observation.us",
    ),
    (
        "conditional delete is d+s (A8)",
        "DELETE",
        "Observation",
        Some("identifier=x|1"),
        "Delete cond Observation.ds",
    ),
    (
        "conditional criteria reach chains",
        "DELETE",
        "Observation",
        Some("subject:Patient.name=x"),
        "Delete cond Observation.ds Patient.s",
    ),
    (
        "PUT on a type without criteria is refused",
        "PUT",
        "Observation",
        None,
        "ERR PathShape",
    ),
    (
        "DELETE on a type with an empty query is refused",
        "DELETE",
        "Observation",
        Some(""),
        "ERR PathShape",
    ),
    (
        "POST to an instance is undefined",
        "POST",
        "Observation/1",
        None,
        "ERR Method",
    ),
    (
        "PUT to history is undefined",
        "PUT",
        "Observation/1/_history/2",
        None,
        "ERR Method",
    ),
    (
        "OPTIONS is not an interaction",
        "OPTIONS",
        "Observation",
        None,
        "ERR Method",
    ),
    // --- search.html ---
    (
        "type search is s",
        "GET",
        "Observation",
        Some("code=1234"),
        "SearchType Observation.s",
    ),
    (
        "search without params is s",
        "GET",
        "Observation",
        None,
        "SearchType Observation.s",
    ),
    (
        "POST _search needs the form",
        "POST",
        "Observation/_search",
        None,
        "SearchType body=SearchForm Observation.s",
    ),
    (
        "GET _search is not R4",
        "GET",
        "Observation/_search",
        None,
        "ERR Method",
    ),
    (
        "system search is s on *",
        "GET",
        "",
        Some("_lastUpdated=gt2020"),
        "SearchSystem *.s",
    ),
    (
        "system search _type narrows to each type",
        "GET",
        "",
        Some("_type=Observation,Condition"),
        "SearchSystem Observation.s Condition.s",
    ),
    (
        "system search _type unknown type",
        "GET",
        "",
        Some("_type=Observation,observation"),
        "ERR UnknownType",
    ),
    (
        "system POST _search",
        "POST",
        "_search",
        None,
        "SearchSystem body=SearchForm *.s",
    ),
    (
        "_type on a type search is refused",
        "GET",
        "Observation",
        Some("_type=Patient"),
        "ERR Parameter",
    ),
    (
        "result params add nothing",
        "GET",
        "Observation",
        Some("_count=5&_sort=-date&_summary=true&_elements=id&_total=accurate&_format=json"),
        "SearchType Observation.s",
    ),
    (
        "_query is refused (SMART-SEMANTICS §4)",
        "GET",
        "Observation",
        Some("_query=foo"),
        "ERR Parameter",
    ),
    (
        "_filter is flagged unconfined",
        "GET",
        "Observation",
        Some("_filter=code%20eq%201"),
        "SearchType filter Observation.s",
    ),
    (
        "_type keeps a * reached by _include=*",
        "GET",
        "",
        Some("_include=*&_type=Observation"),
        "SearchSystem Observation.s *.s",
    ),
    (
        "_type keeps a * reached by an untyped chain",
        "GET",
        "",
        Some("_type=Observation&subject.name=x"),
        "SearchSystem Observation.s *.s",
    ),
    (
        "_type twice is refused (AND or OR unclear)",
        "GET",
        "",
        Some("_type=Observation&_type=Condition"),
        "ERR Query",
    ),
    // --- compartment search ---
    (
        "compartment search is s on the type",
        "GET",
        "Patient/123/Observation",
        Some("code=x"),
        "SearchCompartment Observation.s",
    ),
    (
        "compartment * is s on *",
        "GET",
        "Patient/123/*",
        None,
        "SearchCompartment *.s",
    ),
    (
        "Encounter is a compartment",
        "GET",
        "Encounter/e1/Observation",
        None,
        "SearchCompartment Observation.s",
    ),
    (
        "Observation is not a compartment",
        "GET",
        "Observation/1/Patient",
        None,
        "ERR NotACompartment",
    ),
    (
        "compartment target type must be known",
        "GET",
        "Patient/123/observation",
        None,
        "ERR UnknownType",
    ),
    (
        "compartment id must be a FHIR id",
        "GET",
        "Patient/a_b/Observation",
        None,
        "ERR MalformedId",
    ),
    (
        "compartment search is GET only",
        "POST",
        "Patient/123/Observation",
        None,
        "ERR Method",
    ),
    // --- capabilities, batch ---
    (
        "metadata needs nothing",
        "GET",
        "metadata",
        None,
        "Capabilities",
    ),
    (
        "metadata mode param",
        "GET",
        "metadata",
        Some("mode=terminology&_format=json"),
        "Capabilities",
    ),
    (
        "metadata with other params is refused",
        "GET",
        "metadata",
        Some("_include=*"),
        "ERR Parameter",
    ),
    (
        "POST metadata is refused",
        "POST",
        "metadata",
        None,
        "ERR Method",
    ),
    (
        "Metadata is case-sensitive",
        "GET",
        "Metadata",
        None,
        "ERR UnknownType",
    ),
    (
        "POST base is batch/transaction",
        "POST",
        "",
        None,
        "BatchOrTransaction body=Bundle",
    ),
    (
        "POST / is batch/transaction",
        "POST",
        "/",
        None,
        "BatchOrTransaction body=Bundle",
    ),
    ("batch takes no query", "POST", "", Some("x=1"), "ERR Query"),
    ("PUT base is undefined", "PUT", "", None, "ERR Method"),
    (
        "POST Bundle is a create of a Bundle (§7)",
        "POST",
        "Bundle",
        None,
        "Create Bundle.c",
    ),
    // --- operations (requirements left to §8) ---
    (
        "instance operation",
        "GET",
        "Patient/123/$everything",
        None,
        "Operation",
    ),
    (
        "type operation",
        "POST",
        "Patient/$export",
        None,
        "Operation",
    ),
    (
        "system operation",
        "GET",
        "$export",
        Some("_type=Patient"),
        "Operation",
    ),
    (
        "operation on unknown type",
        "GET",
        "Foo/$everything",
        None,
        "ERR UnknownType",
    ),
    (
        "operation with bad name",
        "POST",
        "Patient/$",
        None,
        "ERR MalformedOperation",
    ),
    (
        "operation name chars",
        "POST",
        "Patient/$a.b",
        None,
        "ERR MalformedOperation",
    ),
    (
        "DELETE an operation is undefined",
        "DELETE",
        "Patient/1/$everything",
        None,
        "ERR Method",
    ),
    (
        "operation on a version is not assumed",
        "GET",
        "Patient/1/_history/2/$meta",
        None,
        "ERR History",
    ),
    // --- path shape, types and ids (§12) ---
    (
        "types are case-sensitive",
        "GET",
        "patient/123",
        None,
        "ERR UnknownType",
    ),
    (
        "R5-only type is unknown",
        "GET",
        "SubscriptionTopic/1",
        None,
        "ERR UnknownType",
    ),
    (
        "abstract Resource is unknown",
        "GET",
        "Resource/1",
        None,
        "ERR UnknownType",
    ),
    (
        "dot id is refused",
        "GET",
        "Patient/.",
        None,
        "ERR MalformedId",
    ),
    (
        "dot-dot id is refused",
        "GET",
        "Patient/..",
        None,
        "ERR MalformedId",
    ),
    (
        "id over 64 chars is refused",
        "GET",
        "Patient/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        None,
        "ERR MalformedId",
    ),
    (
        "id of 64 chars is fine",
        "GET",
        "Patient/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        None,
        "Read Patient.r",
    ),
    (
        "id with underscore is refused",
        "GET",
        "Patient/a_b",
        None,
        "ERR MalformedId",
    ),
    (
        "version id must be a FHIR id",
        "GET",
        "Patient/1/_history/v@1",
        None,
        "ERR MalformedId",
    ),
    (
        "trailing slash is refused",
        "GET",
        "Patient/123/",
        None,
        "ERR PathShape",
    ),
    (
        "double slash is refused",
        "GET",
        "Patient//123",
        None,
        "ERR PathShape",
    ),
    (
        "percent in path is refused",
        "GET",
        "Patient/%31",
        None,
        "ERR PathShape",
    ),
    (
        "unknown _history shape",
        "GET",
        "Patient/1/_history/2/x",
        None,
        "ERR History",
    ),
    (
        "history of history",
        "GET",
        "Patient/_history/1",
        None,
        "ERR History",
    ),
    (
        "too deep a path",
        "GET",
        "Patient/1/Observation/2",
        None,
        "ERR PathShape",
    ),
    // --- _include / _revinclude (§5) ---
    (
        "_include with target",
        "GET",
        "Observation",
        Some("_include=Observation:subject:Patient"),
        "SearchType Observation.s Patient.s",
    ),
    (
        "_include without target reaches the R4-SP targets of the parameter (§5)",
        "GET",
        "Observation",
        Some("_include=Observation:performer"),
        "SearchType Observation.s Practitioner.s Organization.s CareTeam.s Patient.s PractitionerRole.s RelatedPerson.s",
    ),
    (
        "_include=* is *",
        "GET",
        "Observation",
        Some("_include=*"),
        "SearchType Observation.s *.s",
    ),
    (
        "_include:iterate",
        "GET",
        "MedicationRequest",
        Some("_include:iterate=Medication:manufacturer:Organization"),
        "SearchType MedicationRequest.s Organization.s",
    ),
    (
        "_include encoded colons",
        "GET",
        "Observation",
        Some("_include=Observation%3Asubject%3APatient"),
        "SearchType Observation.s Patient.s",
    ),
    (
        "_include repeated",
        "GET",
        "Observation",
        Some("_include=Observation:subject:Patient&_include=Observation:encounter:Encounter"),
        "SearchType Observation.s Patient.s Encounter.s",
    ),
    (
        "_include unknown target",
        "GET",
        "Observation",
        Some("_include=Observation:subject:patient"),
        "ERR Parameter",
    ),
    (
        "_include unknown source",
        "GET",
        "Observation",
        Some("_include=Observations:subject"),
        "ERR Parameter",
    ),
    (
        "_include malformed",
        "GET",
        "Observation",
        Some("_include=subject"),
        "ERR Parameter",
    ),
    (
        "_include too many parts",
        "GET",
        "Observation",
        Some("_include=Observation:subject:Patient:x"),
        "ERR Parameter",
    ),
    (
        "_include:recurse is STU3",
        "GET",
        "Observation",
        Some("_include:recurse=Observation:subject:Patient"),
        "ERR Parameter",
    ),
    (
        "_revinclude is s on the source",
        "GET",
        "Patient",
        Some("_revinclude=Provenance:target"),
        "SearchType Patient.s Provenance.s",
    ),
    (
        "_revinclude:iterate",
        "GET",
        "Patient",
        Some("_revinclude:iterate=Observation:subject"),
        "SearchType Patient.s Observation.s",
    ),
    (
        "_revinclude unknown source",
        "GET",
        "Patient",
        Some("_revinclude=Foo:target"),
        "ERR Parameter",
    ),
    (
        "includes on compartment search",
        "GET",
        "Patient/1/Encounter",
        Some("_include=Encounter:practitioner:Practitioner"),
        "SearchCompartment Encounter.s Practitioner.s",
    ),
    // --- chains (§5) ---
    (
        "typed chain reaches the type",
        "GET",
        "Observation",
        Some("subject:Patient.name=peter"),
        "SearchType Observation.s Patient.s",
    ),
    (
        "untyped chain reaches the R4-SP targets of the parameter (§5)",
        "GET",
        "Observation",
        Some("subject.name=peter"),
        "SearchType Observation.s Group.s Device.s Patient.s Location.s",
    ),
    (
        "two-level chain",
        "GET",
        "Observation",
        Some("subject:Patient.organization:Organization.name=x"),
        "SearchType Observation.s Patient.s Organization.s",
    ),
    (
        "chain with unknown type",
        "GET",
        "Observation",
        Some("subject:patient.name=x"),
        "ERR Parameter",
    ),
    (
        "chain with uppercase unknown type",
        "GET",
        "Observation",
        Some("subject:Patients.name=x"),
        "ERR UnknownType",
    ),
    (
        "type modifier without chain reaches nothing",
        "GET",
        "Observation",
        Some("subject:Patient=123"),
        "SearchType Observation.s",
    ),
    (
        "type modifier must be a type",
        "GET",
        "Observation",
        Some("subject:Patiend=123"),
        "ERR UnknownType",
    ),
    (
        "lowercase modifier at the end is fine",
        "GET",
        "Observation",
        Some("code:text=x&status:missing=true"),
        "SearchType Observation.s",
    ),
    (
        "modifier inside a chain is refused",
        "GET",
        "Observation",
        Some("subject:missing.name=x"),
        "ERR Parameter",
    ),
    (
        "empty chain link is refused",
        "GET",
        "Observation",
        Some("subject..name=x"),
        "ERR Parameter",
    ),
    // --- _has (§5) ---
    (
        "_has is s on its type",
        "GET",
        "Patient",
        Some("_has:Observation:patient:code=1234"),
        "SearchType Patient.s Observation.s",
    ),
    (
        "nested _has",
        "GET",
        "Patient",
        Some("_has:Observation:patient:_has:AuditEvent:entity:agent=x"),
        "SearchType Patient.s Observation.s AuditEvent.s",
    ),
    (
        "_has ending in a chain",
        "GET",
        "Patient",
        Some("_has:Observation:patient:performer:Practitioner.name=x"),
        "SearchType Patient.s Observation.s Practitioner.s",
    ),
    (
        "_has with unknown type",
        "GET",
        "Patient",
        Some("_has:observation:patient:code=1"),
        "ERR UnknownType",
    ),
    (
        "_has too short",
        "GET",
        "Patient",
        Some("_has:Observation:patient=1"),
        "ERR Parameter",
    ),
    (
        "_has with no type",
        "GET",
        "Patient",
        Some("_has=1"),
        "ERR Parameter",
    ),
    (
        "_has encoded",
        "GET",
        "Patient",
        Some("_has%3AObservation%3Apatient%3Acode=1"),
        "SearchType Patient.s Observation.s",
    ),
    // --- query reading ---
    (
        "semicolon separators are refused",
        "GET",
        "Observation",
        Some("code=1;subject=2"),
        "ERR Query",
    ),
    (
        "double-encoded name is refused",
        "GET",
        "Observation",
        Some("_inc%2575de=*"),
        "ERR Query",
    ),
    (
        "plus in a name is refused",
        "GET",
        "Observation",
        Some("co+de=1"),
        "ERR Query",
    ),
    (
        "plus in a value is a space",
        "GET",
        "Observation",
        Some("code=a+b"),
        "SearchType Observation.s",
    ),
    (
        "non-UTF-8 escape is refused",
        "GET",
        "Observation",
        Some("code=%FF"),
        "ERR Query",
    ),
    (
        "non-ASCII is refused",
        "GET",
        "Observation",
        Some("code=\u{e9}"),
        "ERR Query",
    ),
    (
        "odd characters in a name are refused",
        "GET",
        "Observation",
        Some("co[de]=1"),
        "ERR Query",
    ),
    (
        "empty pairs are skipped",
        "GET",
        "Observation",
        Some("&&code=1&"),
        "SearchType Observation.s",
    ),
    (
        "read with _include still counts the reach",
        "GET",
        "Observation/1",
        Some("_include=Observation:subject:Patient"),
        "Read Observation.r Patient.s",
    ),
];

#[test]
fn every_case_classifies_as_its_rule_says() {
    let mut failures = Vec::new();
    for (rule, m, path, query, want) in CASES {
        let got = render(classify(&method(m), path, *query));
        if got != *want {
            failures.push(format!(
                "{rule}: {m} {path}?{query:?}: got `{got}`, want `{want}`"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_table_is_large_enough() {
    assert!(CASES.len() >= 60, "{}", CASES.len());
}

#[test]
fn instance_fields_are_filled() {
    let r = classify(&Method::GET, "Observation/o1/_history/v2", None).unwrap();
    assert_eq!(r.resource_type, ResourceType::from_name("Observation"));
    assert_eq!(r.id.as_deref(), Some("o1"));
    assert_eq!(r.version.as_deref(), Some("v2"));
    let r = classify(&Method::GET, "Patient/123/Observation", None).unwrap();
    let (c, id) = r.compartment.unwrap();
    assert_eq!((c.name(), &*id), ("Patient", "123"));
    let r = classify(&Method::POST, "Patient/123/$everything", None).unwrap();
    assert_eq!(r.id.as_deref(), Some("123"));
    assert_eq!(
        r.operation,
        Some(Operation {
            name: "everything".into(),
            level: Level::Instance
        })
    );
    let r = classify(&Method::GET, "$export", None).unwrap();
    assert_eq!(r.operation.unwrap().level, Level::System);
    assert_eq!(
        classify(&Method::GET, "Group/g/$export", None)
            .unwrap()
            .resource_type,
        ResourceType::from_name("Group")
    );
}

#[test]
fn if_none_exist_makes_a_conditional_create() {
    let r = classify(&Method::POST, "Observation", None).unwrap();
    let r = r.with_if_none_exist("identifier=x|1").unwrap();
    assert_eq!(render(Ok(r)), "Create cond Observation.cs");
    let r = classify(&Method::POST, "Observation", None).unwrap();
    assert_eq!(
        render(r.with_if_none_exist("subject:Patient.name=x")),
        "Create cond Observation.cs Patient.s"
    );
    let r = classify(&Method::POST, "Observation", None).unwrap();
    assert!(r.with_if_none_exist("").is_err());
    let r = classify(&Method::PUT, "Observation/1", None).unwrap();
    assert!(r.with_if_none_exist("identifier=x").is_err());
    let r = classify(&Method::POST, "Observation", None).unwrap();
    assert!(r.with_if_none_exist("_query=x").is_err());
}

#[test]
fn a_search_form_adds_its_parameters() {
    let mut r = classify(&Method::POST, "Observation/_search", Some("code=1")).unwrap();
    r.add_search_form("_include=Observation:subject:Patient&_has:Provenance:target:agent=x")
        .unwrap();
    assert_eq!(
        render(Ok(r)),
        "SearchType body=SearchForm Observation.s Patient.s Provenance.s"
    );
    let mut r = classify(&Method::POST, "_search", None).unwrap();
    r.add_search_form("_type=Condition").unwrap();
    assert_eq!(render(Ok(r)), "SearchSystem body=SearchForm Condition.s");
    // `_type` in the URL and again in the form: AND or OR is unclear, refused.
    let mut r = classify(&Method::POST, "_search", Some("_type=Observation")).unwrap();
    assert!(r.add_search_form("_type=Condition").is_err());
    let mut r = classify(&Method::GET, "Observation", None).unwrap();
    assert!(r.add_search_form("code=1").is_err());
    let mut r = classify(&Method::POST, "Observation/_search", None).unwrap();
    assert!(r.add_search_form("_query=x").is_err());
}

#[test]
fn search_parameters_are_kept_decoded_in_order() {
    let r = classify(
        &Method::GET,
        "Observation",
        Some("patient=Patient%2F123&category=a%7Cb&code=x+y"),
    )
    .unwrap();
    let got: Vec<(&str, &str)> = r.params.iter().map(|p| (&*p.name, &*p.value)).collect();
    assert_eq!(
        got,
        [
            ("patient", "Patient/123"),
            ("category", "a|b"),
            ("code", "x y")
        ]
    );
    let mut r = classify(&Method::POST, "Observation/_search", Some("patient=1")).unwrap();
    r.add_search_form("code=2").unwrap();
    assert_eq!(r.params.len(), 2);
}

#[test]
fn operations_keep_their_raw_query_for_the_operation_table() {
    let r = classify(&Method::GET, "$export", Some("_type=Patient,Observation")).unwrap();
    assert_eq!(r.raw_query.as_deref(), Some("_type=Patient,Observation"));
    assert!(r.params.is_empty());
    let ps = query_params("_type=Patient%2CObservation&_since=2020").unwrap();
    assert_eq!(&*ps[0].value, "Patient,Observation");
    assert!(query_params("a=%FF").is_err());
}

#[test]
fn chains_follow_the_target_types_link_by_link() {
    // Observation.subject -> {Group, Device, Patient, Location}; then `organization` on
    // those that have it.
    let r = classify(
        &Method::GET,
        "Observation",
        Some("subject:Patient.organization.name=x"),
    )
    .unwrap();
    assert_eq!(
        render(Ok(r)),
        "SearchType Observation.s Patient.s Organization.s"
    );
    // `_has` inner chains are evaluated on the `_has` type.
    let r = classify(
        &Method::GET,
        "Patient",
        Some("_has:Observation:patient:performer.name=x"),
    )
    .unwrap();
    assert!(
        render(Ok(r.clone())).starts_with("SearchType Patient.s Observation.s Practitioner.s"),
        "{}",
        render(Ok(r))
    );
}
