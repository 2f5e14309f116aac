//! Table-driven tests of the SMART engine: granted scopes, patient context, method, URL and
//! body -> the decision (and the checks left to the proxy), each case naming its rule.

use std::path::Path;
use std::sync::Arc;

use http::Method;
use serde_json::json;

use super::*;
use crate::auth::Principal;
use crate::policy::decision::DenyReason;
use crate::policy::scope::GrantedScopes;
use crate::policy::Policy;

const POLICY: &str = "\
version: 1
base_path: /fhir
fhir:
  version: R4
  server_urls: [https://ehr.example.org/fhir]
  operations:
    - name: validate
      level: type
      types: [Observation]
      methods: [POST]
      scopes: { any_of: [user/Observation.r, system/Observation.r] }
    - name: summary
      level: instance
      types: [Patient]
      scopes: { any_of: [patient/Patient.r, user/Patient.r] }
routes: []
";

fn policy_with(extra: &str) -> Policy {
    let src = POLICY.replace("  version: R4\n", &format!("  version: R4\n{extra}"));
    Policy::parse(&src, Path::new("p.yaml")).unwrap_or_else(|d| panic!("{d}"))
}

fn principal(scopes: &str, patient: Option<&str>) -> Principal {
    Principal {
        issuer: Arc::from("https://idp.example.org"),
        subject: Some("user-1".into()),
        client_id: Some("app".into()),
        fhir_user: None,
        patient: patient.map(Arc::from),
        jti: None,
        expires_at: 0,
        scopes: GrantedScopes::parse(scopes.split(' ').filter(|s| !s.is_empty())),
    }
}

fn content_type(body: &str) -> &'static str {
    if body.starts_with('[') {
        "application/json-patch+json"
    } else if body.starts_with('{') {
        "application/fhir+json"
    } else {
        "application/x-www-form-urlencoded"
    }
}

/// Assesses `method target` (with `body` when the engine asks), returning the verdict.
fn verdict(
    p: &Policy,
    scopes: Option<&str>,
    patient: Option<&str>,
    method: &str,
    target: &str,
    body: Option<&str>,
) -> Result<Verdict, usize> {
    let fhir = p.fhir().expect("fhir section");
    let who = scopes.map(|s| principal(s, patient));
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let (path, query) = match target.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (target, None),
    };
    let mut req = FhirRequest {
        method: &method,
        path,
        query,
        if_none_exist: None,
        content_type: body.map(content_type),
        body: None,
    };
    match fhir.assess(&req, who.as_ref()) {
        Assessment::Verdict(v) => Ok(*v),
        Assessment::NeedsBody { max } => {
            let Some(b) = body else { return Err(max) };
            req.body = Some(b.as_bytes());
            match fhir.assess(&req, who.as_ref()) {
                Assessment::Verdict(v) => Ok(*v),
                Assessment::NeedsBody { .. } => panic!("asked for the body twice"),
            }
        }
    }
}

/// `allow [response] [before] [narrow] [batch] [pages]`, `deny <reason code>`, `needs-body`.
fn render(v: Result<Verdict, usize>) -> String {
    let v = match v {
        Ok(v) => v,
        Err(_) => return "needs-body".into(),
    };
    match &v.decision {
        Decision::Allow(_) => {
            let mut s = String::from("allow");
            if v.checks.response.is_some() {
                s.push_str(" response");
            }
            if !v.checks.before.is_empty() {
                s.push_str(" before");
            }
            if v.checks.add_query.is_some() {
                s.push_str(" narrow");
            }
            if v.checks.batch.is_some() {
                s.push_str(" batch");
            }
            s
        }
        Decision::Deny(d) => format!("deny {}", d.reason.code()),
    }
}

const P: Option<&str> = Some("123");
const NOP: Option<&str> = None;

/// (rule, scopes, patient, method, target, body, expected)
type Case = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
);

const OBS_123: &str = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/123"}}"#;
const OBS_456: &str = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/456"}}"#;
const OBS_NONE: &str = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#;
const OBS_ABS_123: &str = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"https://ehr.example.org/fhir/Patient/123"}}"#;
const OBS_OTHER_SERVER: &str = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"https://other.example.org/fhir/Patient/123"}}"#;
const OBS_LAB_123: &str = r#"{"resourceType":"Observation","id":"abc","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"code":{"text":"x"},"subject":{"reference":"Patient/123"}}"#;
const PATIENT_123: &str = r#"{"resourceType":"Patient","id":"123"}"#;
const PATIENT_456: &str = r#"{"resourceType":"Patient","id":"456"}"#;
const LAB: &str = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
const USER_LAB: &str = "user/Observation.crus?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

const CASES: &[Case] = &[
    // --- §9 public discovery ---
    ("metadata is public (A19)", None, NOP, "GET", "/fhir/metadata", None, "allow"),
    ("HEAD metadata is public", None, NOP, "HEAD", "/fhir/metadata", None, "allow"),
    ("POST metadata is not public", None, NOP, "POST", "/fhir/metadata", None, "deny missing_token"),
    ("POST metadata with a token is malformed", Some("user/*.rs"), NOP, "POST", "/fhir/metadata", None, "deny bad_request"),
    ("a page link without a token: 401 first", None, NOP, "GET", "/fhir?_getpages=abc", None, "deny missing_token"),
    ("an unknown type without a token: 401 first (§3.5 order)", None, NOP, "GET", "/fhir/patient/1", None, "deny missing_token"),
    ("smart-configuration is public (SAL2 conformance)", None, NOP, "GET", "/fhir/.well-known/smart-configuration", None, "allow"),
    ("no token on data: 401 (RFC 6750 §3.1)", None, NOP, "GET", "/fhir/Patient/123", None, "deny missing_token"),
    // --- §12 paths and unknown types ---
    ("dot segments are unsafe", Some("user/*.cruds"), NOP, "GET", "/fhir/Patient/../Observation", None, "deny unsafe_path"),
    ("encoded names are unsafe", Some("user/*.cruds"), NOP, "GET", "/fhir/%50atient/1", None, "deny unsafe_path"),
    ("unknown type is refused (400)", Some("user/*.cruds"), NOP, "GET", "/fhir/patient/123", None, "deny bad_request"),
    ("named queries are refused", Some("user/*.cruds"), NOP, "GET", "/fhir/Observation?_query=x", None, "deny bad_request"),
    ("If-None-Exist needs a create: see separate test", Some("user/*.cruds"), NOP, "GET", "/fhir/Observation?code=1", None, "allow"),
    // --- §4 letters, v1/v2 (SAL2) ---
    ("read needs r (v2)", Some("user/Observation.r"), NOP, "GET", "/fhir/Observation/abc", None, "allow"),
    ("read with v1 read", Some("user/Observation.read"), NOP, "GET", "/fhir/Observation/abc", None, "allow"),
    ("s does not imply r", Some("user/Observation.s"), NOP, "GET", "/fhir/Observation/abc", None, "deny insufficient_scope"),
    ("r does not imply s", Some("user/Observation.r"), NOP, "GET", "/fhir/Observation?code=1", None, "deny insufficient_scope"),
    ("v1 write does not read", Some("user/Observation.write"), NOP, "GET", "/fhir/Observation/abc", None, "deny insufficient_scope"),
    ("vread is r", Some("user/Observation.r"), NOP, "GET", "/fhir/Observation/abc/_history/2", None, "allow"),
    ("instance history is r", Some("user/Observation.r"), NOP, "GET", "/fhir/Observation/abc/_history", None, "allow"),
    ("type history is s", Some("user/Observation.s"), NOP, "GET", "/fhir/Observation/_history", None, "allow"),
    ("system history is s on *", Some("user/Observation.s"), NOP, "GET", "/fhir/_history", None, "deny insufficient_scope"),
    ("system history with user/*.s", Some("user/*.s"), NOP, "GET", "/fhir/_history", None, "allow"),
    ("delete is d", Some("user/Observation.d"), NOP, "DELETE", "/fhir/Observation/abc", None, "allow"),
    ("delete without d", Some("user/Observation.cru"), NOP, "DELETE", "/fhir/Observation/abc", None, "deny insufficient_scope"),
    ("wildcard type covers every type", Some("system/*.rs"), NOP, "GET", "/fhir/Condition/1", None, "allow"),
    ("contexts never substitute: patient/ read of Practitioner with other ctx", Some("user/Practitioner.r"), NOP, "GET", "/fhir/Practitioner/1", None, "allow"),
    ("letters union across grants (SAL2 equivalence)", Some("user/Observation.r user/Observation.s"), NOP, "GET", "/fhir/Observation?code=1&_count=5", None, "allow"),
    ("non-resource scopes grant nothing", Some("openid fhirUser launch/patient offline_access"), P, "GET", "/fhir/Patient/123", None, "deny insufficient_scope"),
    ("invalid scopes are ignored, never widened", Some("patient/Observation.sr"), P, "GET", "/fhir/Observation?patient=123", None, "deny insufficient_scope"),
    ("v1 wildcard read on a confined search", Some("patient/*.read"), P, "GET", "/fhir/Condition?patient=123", None, "allow"),
    ("v1 user/*.* deletes anything", Some("user/*.*"), NOP, "DELETE", "/fhir/Condition/1", None, "allow"),
    ("v1 system/*.write creates", Some("system/*.write"), NOP, "POST", "/fhir/Condition", Some(r#"{"resourceType":"Condition","subject":{"reference":"Patient/9"}}"#), "allow"),
    ("v1 system/*.write does not search", Some("system/*.write"), NOP, "GET", "/fhir/Condition?code=1", None, "deny insufficient_scope"),
    ("v2 and v1 mixed: patient/Observation.read + patient/Observation.c", Some("patient/Observation.read patient/Observation.c"), P, "POST", "/fhir/Observation", Some(OBS_123), "allow"),
    ("a patient claim that is not a FHIR id makes patient/ unusable", Some("patient/Patient.r"), Some("12 3"), "GET", "/fhir/Patient/123", None, "deny patient_context"),
    // --- create / update bodies ---
    ("create needs the body", Some("user/Observation.c"), NOP, "POST", "/fhir/Observation", None, "needs-body"),
    ("create without c is refused before the body", Some("user/Observation.r"), NOP, "POST", "/fhir/Observation", None, "deny insufficient_scope"),
    ("create by user/ for any patient", Some("user/Observation.c"), NOP, "POST", "/fhir/Observation", Some(OBS_456), "allow"),
    ("create body type must match the URL", Some("user/*.c"), NOP, "POST", "/fhir/Observation", Some(PATIENT_123), "deny bad_request"),
    ("create body must be JSON", Some("user/*.c"), NOP, "POST", "/fhir/Observation", Some("{not json"), "deny bad_request"),
    ("patient/ create for the context patient", Some("patient/Observation.c"), P, "POST", "/fhir/Observation", Some(OBS_123), "allow"),
    ("patient/ create with an absolute local reference", Some("patient/Observation.c"), P, "POST", "/fhir/Observation", Some(OBS_ABS_123), "allow"),
    ("patient/ create for another patient", Some("patient/Observation.c"), P, "POST", "/fhir/Observation", Some(OBS_456), "deny patient_context"),
    ("patient/ create with no patient reference", Some("patient/Observation.c"), P, "POST", "/fhir/Observation", Some(OBS_NONE), "deny patient_context"),
    ("patient/ create referencing another server", Some("patient/Observation.c"), P, "POST", "/fhir/Observation", Some(OBS_OTHER_SERVER), "deny patient_context"),
    ("patient/ create without a patient claim (A15)", Some("patient/Observation.c"), NOP, "POST", "/fhir/Observation", Some(OBS_123), "deny patient_context"),
    ("c follows its grant: patient/ c + user/ rs cannot create for another (§2)", Some("patient/Observation.c user/Observation.rs"), P, "POST", "/fhir/Observation", Some(OBS_456), "deny patient_context"),
    ("c follows its grant: user/ c + patient/ rs can create for another (§2)", Some("patient/Observation.rs user/Observation.c"), P, "POST", "/fhir/Observation", Some(OBS_456), "allow"),
    ("patient/ cannot create a Patient", Some("patient/Patient.c"), P, "POST", "/fhir/Patient", Some(PATIENT_123), "deny patient_context"),
    ("patient/ update of a compartment resource: stored version checked (A23)", Some("patient/Observation.u"), P, "PUT", "/fhir/Observation/abc", Some(r#"{"resourceType":"Observation","id":"abc","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/123"}}"#), "allow before"),
    ("patient/ update moving the resource to another patient", Some("patient/Observation.u"), P, "PUT", "/fhir/Observation/abc", Some(r#"{"resourceType":"Observation","id":"abc","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/456"}}"#), "deny patient_context"),
    ("update body id must equal the URL id", Some("user/Observation.u"), NOP, "PUT", "/fhir/Observation/abc", Some(r#"{"resourceType":"Observation","id":"zzz"}"#), "deny bad_request"),
    ("patient/ update of the own Patient", Some("patient/Patient.u"), P, "PUT", "/fhir/Patient/123", Some(PATIENT_123), "allow"),
    ("patient/ update of another Patient", Some("patient/Patient.u"), P, "PUT", "/fhir/Patient/456", Some(PATIENT_456), "deny patient_context"),
    ("user/ update needs no stored check", Some("user/Observation.u"), NOP, "PUT", "/fhir/Observation/abc", Some(OBS_456), "allow"),
    ("patient/ delete: stored version checked", Some("patient/Observation.d"), P, "DELETE", "/fhir/Observation/abc", None, "allow before"),
    ("patient/ delete of another Patient", Some("patient/Patient.d"), P, "DELETE", "/fhir/Patient/456", None, "deny patient_context"),
    ("patient/ patch leaving the subject alone", Some("patient/Observation.u"), P, "PATCH", "/fhir/Observation/abc", Some(r#"[{"op":"replace","path":"/status","value":"amended"}]"#), "allow before"),
    ("patient/ patch touching the subject", Some("patient/Observation.u"), P, "PATCH", "/fhir/Observation/abc", Some(r#"[{"op":"replace","path":"/subject","value":{"reference":"Patient/456"}}]"#), "deny patient_context"),
    ("patient/ patch of the whole document", Some("patient/Observation.u"), P, "PATCH", "/fhir/Observation/abc", Some(r#"[{"op":"replace","path":"","value":{}}]"#), "deny patient_context"),
    ("user/ patch in any format", Some("user/Observation.u"), NOP, "PATCH", "/fhir/Observation/abc", Some("<xml/>"), "allow"),
    // --- §3.3 reads under patient/ ---
    ("own Patient read", Some("patient/Patient.r"), P, "GET", "/fhir/Patient/123", None, "allow"),
    ("other Patient read is denied directly", Some("patient/Patient.r"), P, "GET", "/fhir/Patient/456", None, "deny patient_context"),
    ("ids are case-sensitive", Some("patient/Patient.r"), Some("abc"), "GET", "/fhir/Patient/ABC", None, "deny patient_context"),
    ("instance read of a compartment type: response checked", Some("patient/Observation.r"), P, "GET", "/fhir/Observation/abc", None, "allow response"),
    ("vread of a compartment type: response checked", Some("patient/Observation.r"), P, "GET", "/fhir/Observation/abc/_history/1", None, "allow response"),
    ("user/ grant next to patient/ makes the read unconfined", Some("patient/Observation.r user/Observation.r"), P, "GET", "/fhir/Observation/abc", None, "allow"),
    ("patient/ without patient context (A15)", Some("patient/Patient.r"), NOP, "GET", "/fhir/Patient/123", None, "deny patient_context"),
    ("patient/ read outside the compartment is allowed (§3.4)", Some("patient/Practitioner.r"), P, "GET", "/fhir/Practitioner/9", None, "allow"),
    ("patient/*.rs on Medication", Some("patient/*.rs"), P, "GET", "/fhir/Medication/9", None, "allow"),
    // --- §3.3 searches under patient/ ---
    ("search confined by patient=", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?patient=123", None, "allow"),
    ("search confined by patient=Patient/id", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?patient=Patient/123", None, "allow"),
    ("search confined by subject=Patient/id", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?subject=Patient/123", None, "allow"),
    ("search confined by subject:Patient=id", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?subject:Patient=123", None, "allow"),
    ("bare subject=id is not confining (A20)", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?subject=123", None, "deny patient_context"),
    ("comma list is an OR", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?patient=123,456", None, "deny patient_context"),
    ("other patient", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?patient=456", None, "deny patient_context"),
    ("second occurrence naming another patient", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?patient=123&patient=456", None, "deny patient_context"),
    (":missing does not confine", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?patient:missing=false", None, "deny patient_context"),
    ("a chain does not confine", Some("patient/Observation.rs patient/Patient.rs"), P, "GET", "/fhir/Observation?patient.name=x", None, "deny patient_context"),
    ("unconfined search", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?code=1", None, "deny patient_context"),
    ("encoded patient value is decoded", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?patient=Patient%2F123", None, "allow"),
    ("_filter makes a search unconfined", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?patient=123&_filter=code%20eq%201", None, "deny patient_context"),
    ("Patient-only inclusion param confines with a bare id", Some("patient/Condition.rs"), P, "GET", "/fhir/Condition?patient=123", None, "allow"),
    ("compartment search", Some("patient/Observation.rs"), P, "GET", "/fhir/Patient/123/Observation?code=1", None, "allow"),
    ("compartment search of another patient", Some("patient/Observation.rs"), P, "GET", "/fhir/Patient/456/Observation", None, "deny patient_context"),
    ("compartment search of every type needs *", Some("patient/*.rs"), P, "GET", "/fhir/Patient/123/*", None, "allow"),
    ("Patient search by _id", Some("patient/Patient.rs"), P, "GET", "/fhir/Patient?_id=123", None, "allow"),
    ("Patient search by name", Some("patient/Patient.rs"), P, "GET", "/fhir/Patient?name=smith", None, "deny patient_context"),
    ("search outside the compartment (§3.4)", Some("patient/Practitioner.rs"), P, "GET", "/fhir/Practitioner?name=x", None, "allow"),
    ("type history under patient/ is unconfinable (A21)", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation/_history", None, "deny patient_context"),
    ("system search under patient/ is unconfinable", Some("patient/*.rs"), P, "GET", "/fhir?_type=Observation", None, "deny patient_context"),
    ("system search of non-compartment types under patient/", Some("patient/*.rs"), P, "GET", "/fhir?_type=Practitioner,Organization", None, "allow"),
    ("user/ search needs no confinement", Some("user/Observation.rs"), P, "GET", "/fhir/Observation?code=1", None, "allow"),
    ("system search with user/*.s", Some("user/*.s"), NOP, "GET", "/fhir?_type=Observation", None, "allow"),
    // --- §5 includes, chains, _has ---
    ("_include needs s on the target", Some("patient/Observation.rs"), P, "GET", "/fhir/Observation?patient=123&_include=Observation:subject:Patient", None, "deny insufficient_scope"),
    ("_include with the target granted: response checked", Some("patient/Observation.rs patient/Patient.rs"), P, "GET", "/fhir/Observation?patient=123&_include=Observation:subject:Patient", None, "allow response"),
    ("_include of non-compartment targets under patient/*", Some("patient/*.rs"), P, "GET", "/fhir/Observation?patient=123&_include=Observation:performer", None, "allow response"),
    ("_include of an unconfined search under patient/", Some("patient/*.rs"), P, "GET", "/fhir/Observation?code=1&_include=Observation:performer", None, "deny patient_context"),
    ("_include via user/: no check", Some("user/*.rs"), NOP, "GET", "/fhir/Observation?code=1&_include=Observation:performer", None, "allow"),
    ("_revinclude needs s on the source", Some("patient/Patient.rs"), P, "GET", "/fhir/Patient?_id=123&_revinclude=Provenance:target", None, "deny insufficient_scope"),
    ("_revinclude with the source granted", Some("patient/Patient.rs patient/Provenance.rs"), P, "GET", "/fhir/Patient?_id=123&_revinclude=Provenance:target", None, "allow response"),
    ("chain target needs s", Some("user/Observation.rs"), NOP, "GET", "/fhir/Observation?subject:Patient.name=x", None, "deny insufficient_scope"),
    ("chain target granted", Some("user/Observation.rs user/Patient.s"), NOP, "GET", "/fhir/Observation?subject:Patient.name=x", None, "allow"),
    ("chain inherits the confinement", Some("patient/Observation.rs patient/Patient.rs"), P, "GET", "/fhir/Observation?patient=123&subject:Patient.name=x", None, "allow"),
    ("_has needs s on its type (values leak)", Some("patient/Patient.rs"), P, "GET", "/fhir/Patient?_id=123&_has:Observation:patient:code=1", None, "deny insufficient_scope"),
    ("_has with its type granted", Some("patient/Patient.rs patient/Observation.s"), P, "GET", "/fhir/Patient?_id=123&_has:Observation:patient:code=1", None, "allow"),
    // --- §6 granular scopes ---
    ("granular search narrowed to the category", Some(LAB), P, "GET", "/fhir/Observation?patient=123&category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", None, "allow"),
    ("granular search, encoded |", Some(LAB), P, "GET", "/fhir/Observation?patient=123&category=http%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fobservation-category%7Claboratory", None, "allow"),
    ("granular search not narrowed (A5)", Some(LAB), P, "GET", "/fhir/Observation?patient=123", None, "deny insufficient_scope"),
    ("granular search with code only (A6)", Some(LAB), P, "GET", "/fhir/Observation?patient=123&category=laboratory", None, "deny insufficient_scope"),
    ("granular search with another category in a list", Some(LAB), P, "GET", "/fhir/Observation?patient=123&category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory,http://terminology.hl7.org/CodeSystem/observation-category|vital-signs", None, "deny insufficient_scope"),
    ("granular union: a comma list covered by two granular scopes (§6)", Some("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"), P, "GET", "/fhir/Observation?patient=123&category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory,http://terminology.hl7.org/CodeSystem/observation-category|vital-signs", None, "allow"),
    ("granular union does not cover a third value", Some("patient/Observation.rs?category=a|1 patient/Observation.rs?category=a|2"), P, "GET", "/fhir/Observation?patient=123&category=a|1,a|3", None, "deny insufficient_scope"),
    ("granular union still needs confinement", Some("patient/Observation.rs?category=a|1 patient/Observation.rs?category=a|2"), P, "GET", "/fhir/Observation?category=a|1,a|2", None, "deny patient_context"),
    ("granular read is checked on the response", Some(LAB), P, "GET", "/fhir/Observation/abc", None, "allow response"),
    ("granular user/ read is checked on the response", Some(USER_LAB), NOP, "GET", "/fhir/Observation/abc", None, "allow response"),
    ("resource-level grant makes granular irrelevant", Some("user/Observation.rs user/Observation.rs?category=x|y"), NOP, "GET", "/fhir/Observation?code=1", None, "allow"),
    ("granular create: body matches", Some(USER_LAB), NOP, "POST", "/fhir/Observation", Some(OBS_LAB_123), "allow"),
    ("granular create: body does not match (A7)", Some(USER_LAB), NOP, "POST", "/fhir/Observation", Some(OBS_123), "deny insufficient_scope"),
    ("granular update: body matches, stored version checked", Some(USER_LAB), NOP, "PUT", "/fhir/Observation/abc", Some(OBS_LAB_123), "allow before"),
    // --- A8 conditional interactions ---
    ("conditional update needs u and s", Some("user/Observation.u"), NOP, "PUT", "/fhir/Observation?identifier=x", Some(OBS_123), "deny insufficient_scope"),
    ("conditional update with u and s", Some("user/Observation.us"), NOP, "PUT", "/fhir/Observation?identifier=x", Some(OBS_123), "allow"),
    ("patient/ conditional update: criteria confined", Some("patient/Observation.us"), P, "PUT", "/fhir/Observation?patient=123&identifier=x", Some(OBS_123), "allow"),
    ("patient/ conditional update: criteria unconfined", Some("patient/Observation.us"), P, "PUT", "/fhir/Observation?identifier=x", Some(OBS_123), "deny patient_context"),
    ("patient/ conditional delete: criteria confined", Some("patient/Observation.ds"), P, "DELETE", "/fhir/Observation?patient=123&code=1", None, "allow"),
    ("patient/ conditional delete: criteria unconfined", Some("patient/Observation.ds"), P, "DELETE", "/fhir/Observation?code=1", None, "deny patient_context"),
    ("conditional delete needs s", Some("user/Observation.d"), NOP, "DELETE", "/fhir/Observation?code=1", None, "deny insufficient_scope"),
    // --- POST _search (§4) ---
    ("POST system _search narrowed by the form's _type", Some("user/Observation.s"), NOP, "POST", "/fhir/_search", Some("_type=Observation"), "allow"),
    ("POST system _search: the form's _type needs its s", Some("user/Condition.s"), NOP, "POST", "/fhir/_search", Some("_type=Observation"), "deny insufficient_scope"),
    ("POST _search reads the form", Some("patient/Observation.s"), P, "POST", "/fhir/Observation/_search", None, "needs-body"),
    ("POST _search form confines", Some("patient/Observation.s"), P, "POST", "/fhir/Observation/_search", Some("patient=123&code=1"), "allow"),
    ("POST _search form unconfined", Some("patient/Observation.s"), P, "POST", "/fhir/Observation/_search", Some("code=1"), "deny patient_context"),
    ("POST _search combines URL and form", Some("patient/Observation.s"), P, "POST", "/fhir/Observation/_search?patient=123", Some("code=1"), "allow"),
    ("POST _search form reaching another type", Some("patient/Observation.s"), P, "POST", "/fhir/Observation/_search", Some("patient=123&_include=Observation:subject:Patient"), "deny insufficient_scope"),
    // --- §8 operations ---
    ("$everything on the own patient", Some("patient/*.rs"), P, "GET", "/fhir/Patient/123/$everything", None, "allow"),
    ("$everything on another patient", Some("patient/*.rs"), P, "GET", "/fhir/Patient/456/$everything", None, "deny patient_context"),
    ("$everything needs *.rs", Some("patient/Patient.rs patient/Observation.rs"), P, "GET", "/fhir/Patient/123/$everything", None, "deny insufficient_scope"),
    ("type-level $everything under patient/", Some("patient/*.rs"), P, "GET", "/fhir/Patient/$everything", None, "deny patient_context"),
    ("type-level $everything under user/", Some("user/*.rs"), NOP, "GET", "/fhir/Patient/$everything", None, "allow"),
    ("system $export with system/*.read", Some("system/*.read"), NOP, "GET", "/fhir/$export", None, "allow"),
    ("$export narrowed by _type", Some("system/Observation.rs system/Patient.rs"), NOP, "GET", "/fhir/$export?_type=Observation,Patient", None, "allow"),
    ("$export of a type not granted", Some("system/Observation.rs"), NOP, "GET", "/fhir/$export?_type=Observation,Patient", None, "deny insufficient_scope"),
    ("$export is not for patient/ scopes", Some("patient/*.rs"), P, "GET", "/fhir/Patient/$export", None, "deny insufficient_scope"),
    ("Group $export", Some("system/*.rs"), NOP, "GET", "/fhir/Group/g1/$export", None, "allow"),
    ("$lastn is a confined search", Some("patient/Observation.s"), P, "GET", "/fhir/Observation/$lastn?patient=123&max=3", None, "allow"),
    ("$lastn unconfined", Some("patient/Observation.s"), P, "GET", "/fhir/Observation/$lastn?max=3", None, "deny patient_context"),
    ("unconfigured operation is refused", Some("user/*.cruds"), NOP, "POST", "/fhir/Observation/$meta-add", None, "deny no_route"),
    ("configured operation with its scopes", Some("user/Observation.r"), NOP, "POST", "/fhir/Observation/$validate", None, "allow"),
    ("configured operation without its scopes", Some("user/Patient.r"), NOP, "POST", "/fhir/Observation/$validate", None, "deny insufficient_scope"),
    ("configured operation: other method", Some("user/Observation.r"), NOP, "GET", "/fhir/Observation/$validate", None, "deny no_route"),
    ("configured operation: other type", Some("user/*.r"), NOP, "POST", "/fhir/Condition/$validate", None, "deny no_route"),
    ("configured instance operation on the own Patient", Some("patient/Patient.r"), P, "GET", "/fhir/Patient/123/$summary", None, "allow"),
    ("configured instance operation on another Patient", Some("patient/Patient.r"), P, "GET", "/fhir/Patient/456/$summary", None, "deny patient_context"),
    // --- paging (A22) ---
    ("a page link that is not remembered", Some("user/*.rs"), NOP, "GET", "/fhir?_getpages=abc&_getpagesoffset=10", None, "deny no_route"),
    ("_getpages below the base is an ordinary parameter", Some("user/Observation.s"), NOP, "GET", "/fhir/Observation?_getpages=abc", None, "allow"),
    ("an encoded page parameter is still a page link", Some("user/*.rs"), NOP, "GET", "/fhir?%5Fgetpages=abc", None, "deny no_route"),
    ("response checks need JSON", Some("patient/Observation.r"), P, "GET", "/fhir/Observation/abc?_format=xml", None, "deny bad_request"),
    ("response checks with _format=json", Some("patient/Observation.r"), P, "GET", "/fhir/Observation/abc?_format=application/fhir%2Bjson", None, "allow response"),
    ("unchecked reads may ask for XML", Some("user/Observation.r"), NOP, "GET", "/fhir/Observation/abc?_format=xml", None, "allow"),
    ("HEAD of a configured GET operation", Some("patient/Patient.r"), P, "HEAD", "/fhir/Patient/123/$summary", None, "allow"),
    // --- §7 Bundles ---
    ("a Bundle POSTed to the base needs its body", Some("user/*.cruds"), NOP, "POST", "/fhir", None, "needs-body"),
    ("a collection Bundle at the base is refused", Some("user/*.cruds"), NOP, "POST", "/fhir", Some(r#"{"resourceType":"Bundle","type":"collection"}"#), "deny bad_request"),
    ("not a Bundle at the base", Some("user/*.cruds"), NOP, "POST", "/fhir", Some(r#"{"resourceType":"Observation"}"#), "deny bad_request"),
    ("POST Bundle is a create of a Bundle", Some("user/Bundle.c"), NOP, "POST", "/fhir/Bundle", Some(r#"{"resourceType":"Bundle","type":"collection"}"#), "allow"),
];

fn run(p: &Policy, c: &Case) -> String {
    let (_, scopes, patient, m, target, body, _) = *c;
    render(verdict(p, scopes, patient, m, target, body))
}

#[test]
fn every_case_decides_as_its_rule_says() {
    let p = policy_with("");
    let mut failures = Vec::new();
    for c in CASES {
        let got = run(&p, c);
        if got != c.6 {
            failures.push(format!(
                "{}: {} {} [{:?} patient {:?}]: got `{got}`, want `{}`",
                c.0, c.3, c.4, c.1, c.2, c.6
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_table_is_large_enough() {
    assert!(CASES.len() >= 130, "{}", CASES.len());
}

const SWITCH_CASES: &[Case] = &[
    (
        "outside-compartment read refused by the switch (§3.4)",
        Some("patient/Practitioner.r"),
        P,
        "GET",
        "/fhir/Practitioner/9",
        None,
        "deny patient_context",
    ),
    (
        "outside-compartment search refused by the switch",
        Some("patient/*.rs"),
        P,
        "GET",
        "/fhir/Medication?code=1",
        None,
        "deny patient_context",
    ),
    (
        "compartment types are unaffected by the switch",
        Some("patient/Observation.rs"),
        P,
        "GET",
        "/fhir/Observation?patient=123",
        None,
        "allow",
    ),
    (
        "user/ on outside types is unaffected by the switch",
        Some("user/Practitioner.r"),
        P,
        "GET",
        "/fhir/Practitioner/9",
        None,
        "allow",
    ),
    (
        "includes of outside types under the switch",
        Some("patient/*.rs"),
        P,
        "GET",
        "/fhir/Observation?patient=123&_include=Observation:performer",
        None,
        "deny patient_context",
    ),
];

#[test]
fn the_outside_compartment_switch_refuses_patient_scopes_on_other_types() {
    let p = policy_with("  patient_scopes_outside_compartment: deny\n");
    for c in SWITCH_CASES {
        assert_eq!(run(&p, c), c.6, "{}", c.0);
    }
}

#[test]
fn narrow_mode_appends_the_granular_query_to_searches() {
    let p = policy_with("  granular_search: narrow\n");
    let v = verdict(
        &p,
        Some(LAB),
        P,
        "GET",
        "/fhir/Observation?patient=123",
        None,
    )
    .unwrap();
    assert!(matches!(v.decision, Decision::Allow(_)));
    assert_eq!(
        v.checks.add_query.as_deref(),
        Some("category=http://terminology.hl7.org/CodeSystem/observation-category%7Claboratory")
    );
    // Already narrowed: nothing to add.
    let v = verdict(
        &p,
        Some(LAB),
        P,
        "GET",
        "/fhir/Observation?patient=123&category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        None,
    )
    .unwrap();
    assert!(v.checks.add_query.is_none());
    // Still confined first: narrowing never replaces the patient rule.
    let v = verdict(&p, Some(LAB), P, "GET", "/fhir/Observation?code=1", None).unwrap();
    assert!(matches!(v.decision, Decision::Deny(_)));
}

fn bundle(kind: &str, entries: serde_json::Value) -> String {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries}).to_string()
}

#[test]
fn a_transaction_with_one_refused_entry_is_refused_whole_naming_the_entry() {
    let p = policy_with("");
    let body = bundle(
        "transaction",
        json!([
            {"request": {"method": "GET", "url": "Observation?patient=123"}},
            {"request": {"method": "POST", "url": "Observation"},
             "resource": serde_json::from_str::<serde_json::Value>(OBS_456).unwrap()},
        ]),
    );
    let v = verdict(
        &p,
        Some("patient/Observation.crs"),
        P,
        "POST",
        "/fhir",
        Some(&body),
    )
    .unwrap();
    let Decision::Deny(d) = &v.decision else {
        panic!("allowed")
    };
    assert_eq!(d.reason, DenyReason::PatientContext);
    assert!(
        d.detail.starts_with("transaction entry 1 refused"),
        "{}",
        d.detail
    );
    assert!(
        !d.detail.contains("456"),
        "no URL or id in the detail: {}",
        d.detail
    );
    assert_eq!(d.route_id.as_deref(), Some("fhir:transaction"));
}

#[test]
fn a_transaction_of_allowed_entries_carries_their_checks() {
    let p = policy_with("");
    let body = bundle(
        "transaction",
        json!([
            {"request": {"method": "GET", "url": "Observation/abc"}},
            {"request": {"method": "DELETE", "url": "Observation/def"}},
            {"request": {"method": "POST", "url": "Observation"},
             "resource": serde_json::from_str::<serde_json::Value>(OBS_123).unwrap()},
        ]),
    );
    let v = verdict(
        &p,
        Some("patient/Observation.crds"),
        P,
        "POST",
        "/fhir",
        Some(&body),
    )
    .unwrap();
    let Decision::Allow(permit) = &v.decision else {
        panic!("{:?}", v.decision)
    };
    assert_eq!(permit.route_id(), "fhir:transaction");
    assert_eq!(
        v.request.as_ref().map(|c| c.interaction),
        Some("transaction")
    );
    assert_eq!(v.checks.before.len(), 1);
    assert_eq!(&*v.checks.before[0].path, "Observation/def");
    assert_eq!(v.checks.before[0].entry, None);
    let check = v.checks.response.expect("per-entry response check");
    let ok = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"resource": serde_json::from_str::<serde_json::Value>(OBS_123).unwrap()},
        {"response": {"status": "204"}},
        {"response": {"status": "201"}},
    ]});
    assert!(check.check(&ok).is_ok());
    let bad = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"resource": serde_json::from_str::<serde_json::Value>(OBS_456).unwrap()},
        {"response": {"status": "204"}},
        {"response": {"status": "201"}},
    ]});
    assert!(check.check(&bad).is_err());
}

#[test]
fn a_batch_plans_each_entry_in_order() {
    let p = policy_with("");
    let body = bundle(
        "batch",
        json!([
            {"request": {"method": "GET", "url": "Observation?patient=123"}},
            {"request": {"method": "GET", "url": "Observation?patient=456"}},
            {"request": {"method": "GET", "url": "Observation/abc"}},
            {"request": {"method": "GET", "url": "https://other.example.org/fhir/Patient/123"}},
            {"request": {"method": "GET", "url": "https://ehr.example.org/fhir/Patient/123"}},
            {"request": {"method": "GET", "url": "Patient/../Patient/456"}},
            {"request": {"method": "POST", "url": ""}, "resource": {"resourceType": "Bundle", "type": "batch"}},
            {"resource": {"resourceType": "Patient"}},
            {"request": {"method": "DELETE", "url": "Observation/x"}},
        ]),
    );
    let v = verdict(
        &p,
        Some("patient/Observation.rds patient/Patient.r"),
        P,
        "POST",
        "/fhir",
        Some(&body),
    )
    .unwrap();
    let Decision::Allow(permit) = &v.decision else {
        panic!("{:?}", v.decision)
    };
    assert_eq!(permit.route_id(), "fhir:batch");
    let plan = v.checks.batch.expect("batch plan");
    let shape: Vec<String> = plan
        .entries
        .iter()
        .map(|e| match e {
            EntryPlan::Forward(None) => "forward".to_owned(),
            EntryPlan::Forward(Some(_)) => "forward+check".to_owned(),
            EntryPlan::Refuse(d) => format!("refuse {}", d.reason.code()),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "forward",
            "refuse patient_context",
            "forward+check",
            "refuse bad_request",
            "forward",
            "refuse unsafe_path",
            "refuse bad_request",
            "refuse bad_request",
            "forward",
        ]
    );
    // The delete's stored check refuses only its entry.
    assert_eq!(v.checks.before.len(), 1);
    assert_eq!(v.checks.before[0].entry, Some(8));
}

#[test]
fn response_checks_refuse_other_patients_and_pass_outcomes() {
    let p = policy_with("");
    let v = verdict(
        &p,
        Some("patient/Observation.r"),
        P,
        "GET",
        "/fhir/Observation/abc",
        None,
    )
    .unwrap();
    let check = v.checks.response.expect("check");
    let own: serde_json::Value = serde_json::from_str(OBS_123).unwrap();
    let other: serde_json::Value = serde_json::from_str(OBS_456).unwrap();
    assert!(check.check(&own).is_ok());
    assert!(check.check(&other).is_err());
    assert!(check
        .check(&json!({"resourceType": "OperationOutcome", "issue": []}))
        .is_ok());
    assert!(check.check(&json!({"no": "type"})).is_err());
    let history = json!({"resourceType": "Bundle", "type": "history", "entry": [
        {"resource": own}, {"resource": other}
    ]});
    assert!(check.check(&history).is_err());
}

#[test]
fn include_checks_let_outside_types_through_and_hold_compartment_types_to_the_patient() {
    let p = policy_with("");
    let v = verdict(
        &p,
        Some("patient/*.rs"),
        P,
        "GET",
        "/fhir/Observation?patient=123&_include=Observation:performer",
        None,
    )
    .unwrap();
    let check = v.checks.response.expect("check");
    let own: serde_json::Value = serde_json::from_str(OBS_123).unwrap();
    let page = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": own},
        {"resource": {"resourceType": "Practitioner", "id": "p1"}},
        {"resource": {"resourceType": "Patient", "id": "123"}},
    ]});
    assert!(check.check(&page).is_ok());
    let leak = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "Patient", "id": "456"}},
    ]});
    assert!(check.check(&leak).is_err());
}

#[test]
fn granular_read_checks_match_the_category() {
    let p = policy_with("");
    let v = verdict(&p, Some(LAB), P, "GET", "/fhir/Observation/abc", None).unwrap();
    let check = v.checks.response.expect("check");
    let lab: serde_json::Value = serde_json::from_str(OBS_LAB_123).unwrap();
    let plain: serde_json::Value = serde_json::from_str(OBS_123).unwrap();
    assert!(check.check(&lab).is_ok());
    assert!(check.check(&plain).is_err());
}

#[test]
fn stored_checks_name_the_resource_and_hold_it_to_the_patient() {
    let p = policy_with("");
    let v = verdict(
        &p,
        Some("patient/Observation.d"),
        P,
        "DELETE",
        "/fhir/Observation/abc",
        None,
    )
    .unwrap();
    let s = &v.checks.before[0];
    assert_eq!(&*s.path, "Observation/abc");
    assert_eq!(
        v.request.as_ref().and_then(|c| c.resource_id.as_deref()),
        Some("abc")
    );
    assert!(s
        .check
        .check(&serde_json::from_str(OBS_123).unwrap())
        .is_ok());
    assert!(s
        .check
        .check(&serde_json::from_str(OBS_456).unwrap())
        .is_err());
}

#[test]
fn denials_name_the_minimal_scopes_in_the_tokens_context() {
    let p = policy_with("");
    let v = verdict(
        &p,
        Some("patient/Observation.r"),
        P,
        "GET",
        "/fhir/Observation?patient=123",
        None,
    )
    .unwrap();
    let Decision::Deny(d) = &v.decision else {
        panic!()
    };
    assert_eq!(
        d.reason,
        DenyReason::InsufficientScope {
            needed: "patient/Observation.s".into()
        }
    );
    assert_eq!(d.route_id.as_deref(), Some("fhir:search-type"));
    let v = verdict(
        &p,
        Some("user/Patient.r"),
        NOP,
        "GET",
        "/fhir/Observation/1",
        None,
    )
    .unwrap();
    let Decision::Deny(d) = &v.decision else {
        panic!()
    };
    assert_eq!(
        d.reason,
        DenyReason::InsufficientScope {
            needed: "user/Observation.r".into()
        }
    );
    let v = verdict(
        &p,
        Some("system/Patient.rs"),
        NOP,
        "GET",
        "/fhir/$export",
        None,
    )
    .unwrap();
    let Decision::Deny(d) = &v.decision else {
        panic!()
    };
    assert_eq!(
        d.reason,
        DenyReason::InsufficientScope {
            needed: "system/*.rs".into()
        }
    );
}

#[test]
fn permits_say_what_was_required_and_which_grants_gave_it() {
    let p = policy_with("");
    let v = verdict(
        &p,
        Some("openid patient/Observation.rs patient/Patient.rs launch/patient"),
        P,
        "GET",
        "/fhir/Observation?patient=123&_include=Observation:subject:Patient",
        None,
    )
    .unwrap();
    let Decision::Allow(permit) = &v.decision else {
        panic!()
    };
    assert_eq!(permit.route_id(), "fhir:search-type");
    let c = v.request.as_ref().expect("classified");
    assert_eq!(
        (c.interaction, c.resource_type.map(|t| t.name())),
        ("search-type", Some("Observation"))
    );
    assert_eq!(permit.required(), "Observation.s Patient.s");
    assert_eq!(
        permit.granted_by(),
        "patient/Observation.rs patient/Patient.rs"
    );
    assert!(v.checks.remember_pages);
}

#[test]
fn the_trace_cites_the_rules_it_applied() {
    let p = policy_with("");
    let v = verdict(
        &p,
        Some("patient/Observation.rs"),
        P,
        "GET",
        "/fhir/Observation?code=1",
        None,
    )
    .unwrap();
    let text = v.trace.to_string();
    assert!(text.contains("FHIR R4 http.html"), "{text}");
    assert!(text.contains("SMART-SEMANTICS §3.5"), "{text}");
    assert!(
        text.contains("not confined to the context patient"),
        "{text}"
    );
    assert!(
        v.summary().contains("search-type on Observation"),
        "{}",
        v.summary()
    );
}

#[test]
fn conditional_creates_need_search_on_confined_criteria() {
    let p = policy_with("");
    let fhir = p.fhir().unwrap();
    let who = principal("patient/Observation.cs", Some("123"));
    for (criteria, want) in [("patient=123&identifier=x", true), ("identifier=x", false)] {
        let req = FhirRequest {
            method: &Method::POST,
            path: "/fhir/Observation",
            query: None,
            if_none_exist: Some(criteria),
            content_type: Some("application/fhir+json"),
            body: Some(OBS_123.as_bytes()),
        };
        let Assessment::Verdict(v) = fhir.assess(&req, Some(&who)) else {
            panic!("needs body")
        };
        assert_eq!(matches!(v.decision, Decision::Allow(_)), want, "{criteria}");
    }
    let who = principal("patient/Observation.c", Some("123"));
    let req = FhirRequest {
        method: &Method::POST,
        path: "/fhir/Observation",
        query: None,
        if_none_exist: Some("patient=123"),
        content_type: Some("application/fhir+json"),
        body: Some(OBS_123.as_bytes()),
    };
    let Assessment::Verdict(v) = fhir.assess(&req, Some(&who)) else {
        panic!("needs body")
    };
    assert!(matches!(v.decision, Decision::Deny(_)));
}

#[test]
fn the_section_exposes_its_settings() {
    let p = policy_with("");
    let f = p.fhir().unwrap();
    assert_eq!(f.base_path(), "/fhir");
    assert_eq!(&*f.page_parameters()[0], "_getpages");
    assert_eq!(f.max_body_bytes(), 1 << 20);
    assert_eq!(f.max_response_bytes(), 8 << 20);
    assert_eq!(f.paging_ttl(), std::time::Duration::from_secs(1800));
    let s = f.scopes_supported();
    for want in [
        "patient/*.rs",
        "user/*.cruds",
        "system/*.rs",
        "launch/patient",
        "openid",
    ] {
        assert!(s.iter().any(|x| x == want), "{want}");
    }
}

#[test]
fn include_all_checks_compartment_types_and_lets_outside_types_through() {
    let p = policy_with("");
    let v = verdict(
        &p,
        Some("patient/*.rs"),
        P,
        "GET",
        "/fhir/Observation?patient=123&_include=*",
        None,
    )
    .unwrap();
    let check = v.checks.response.expect("check");
    let own: serde_json::Value = serde_json::from_str(OBS_123).unwrap();
    let other: serde_json::Value = serde_json::from_str(OBS_456).unwrap();
    let ok = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": own}, {"resource": {"resourceType": "Organization", "id": "o"}},
    ]});
    assert!(check.check(&ok).is_ok());
    let leak =
        json!({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": other}]});
    assert!(check.check(&leak).is_err());
    // With the switch off, types outside the compartment are not reached at all.
    let p = policy_with("  patient_scopes_outside_compartment: deny\n");
    let v = verdict(
        &p,
        Some("patient/*.rs"),
        P,
        "GET",
        "/fhir/Observation?patient=123&_include=*",
        None,
    )
    .unwrap();
    let check = v.checks.response.expect("check");
    assert!(check.check(&ok).is_err());
}
