//! Policy tests: loading (with exact diagnostics), routing and authorization end to end.

use std::path::Path;

use http::Method;

use super::scope::GrantedScopes;
use super::*;
use crate::config::Severity;

const POLICY: &str = "\
version: 1
base_path: /fhir
routes:
  - id: metadata
    methods: [GET]
    path: /metadata
    public: true
  - id: patient-read
    methods: [GET]
    path: /Patient/{id}
    scopes:
      any_of: [patient/Patient.r, user/Patient.r, system/Patient.r]
    patient: { segment: id }
  - id: observation-search
    methods: [GET]
    path: /Observation
    scopes: { any_of: [patient/Observation.s, user/Observation.s, system/Observation.s] }
    patient: { query: patient }
  - id: observation-create
    methods: [POST]
    path: /Observation
    scopes: { any_of: [patient/Observation.c, user/Observation.c] }
  - id: everything
    methods: [GET]
    path: /Patient/{id}/$everything
    scopes: { any_of: [patient/*.rs, user/*.rs, system/*.rs] }
    patient: { segment: id }
  - id: report-files
    methods: [GET]
    path: /reports/{kind}/{*file}
    scopes: { all_of: [reports.read, openid] }
";

fn policy() -> Policy {
    Policy::parse(POLICY, Path::new("policy.yaml")).unwrap_or_else(|d| panic!("{d}"))
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
        scopes: GrantedScopes::parse(scopes.split(' ')),
    }
}

/// Routes and authorizes `method target` (target = path?query).
fn decide(p: &Policy, method: Method, target: &str, who: Option<&Principal>) -> Decision {
    let (path, query) = match target.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (target, None),
    };
    match p.route(&method, path) {
        Ok(m) => p.authorize(&m, path, query, who),
        Err(d) => Decision::Deny(d),
    }
}

fn denial(d: Decision) -> Denial {
    match d {
        Decision::Deny(d) => d,
        Decision::Allow(p) => panic!("expected a denial, got {p:?}"),
    }
}

fn permit(d: Decision) -> Permit {
    match d {
        Decision::Allow(p) => p,
        Decision::Deny(d) => panic!("expected a permit, got {d:?}"),
    }
}

fn errors(src: &str) -> Vec<String> {
    let d = Policy::parse(src, Path::new("p.yaml")).expect_err("should not load");
    d.0.iter()
        .map(|d| format!("{}:{} {} | {}", d.line, d.col, d.key, d.message))
        .collect()
}

// --- routing and authorization ---

#[test]
fn a_patient_token_reads_its_own_patient() {
    let p = policy();
    let who = principal("launch/patient patient/Patient.r", Some("123"));
    let ok = permit(decide(&p, Method::GET, "/fhir/Patient/123", Some(&who)));
    assert_eq!(ok.route_id(), "patient-read");
    assert!(!ok.is_public());
    assert_eq!(
        ok.required(),
        "any_of: patient/Patient.r user/Patient.r system/Patient.r"
    );
    assert_eq!(ok.granted_by(), "patient/Patient.r");
}

#[test]
fn a_patient_token_cannot_read_another_patient() {
    let p = policy();
    let who = principal("patient/Patient.r", Some("123"));
    let d = denial(decide(&p, Method::GET, "/fhir/Patient/456", Some(&who)));
    assert_eq!(d.reason, DenyReason::PatientContext);
    assert_eq!(d.route_id.as_deref(), Some("patient-read"));
    assert_eq!(
        d.detail,
        "this token's patient/ scopes are limited to its patient context; the `id` in the path is another patient"
    );
    assert_eq!(
        d.required.as_deref(),
        Some("any_of: patient/Patient.r user/Patient.r system/Patient.r")
    );
}

#[test]
fn a_patient_scope_without_a_patient_claim_is_refused() {
    let p = policy();
    let who = principal("patient/Patient.r", None);
    let d = denial(decide(&p, Method::GET, "/fhir/Patient/123", Some(&who)));
    assert_eq!(d.reason, DenyReason::PatientContext);
}

#[test]
fn user_and_system_scopes_are_not_confined() {
    let p = policy();
    for (scopes, used) in [
        ("user/Patient.r", "user/Patient.r"),
        ("system/Patient.read", "system/Patient.read"),
        ("patient/Patient.r user/Patient.r", "user/Patient.r"),
    ] {
        let who = principal(scopes, Some("123"));
        let ok = permit(decide(&p, Method::GET, "/fhir/Patient/456", Some(&who)));
        assert_eq!(ok.granted_by(), used);
    }
}

#[test]
fn a_search_is_confined_by_its_patient_parameter() {
    let p = policy();
    let who = principal("patient/Observation.rs", Some("123"));
    for ok in [
        "/fhir/Observation?patient=123",
        "/fhir/Observation?patient=Patient/123&_count=10",
        "/fhir/Observation?code=x&patient=%31%32%33",
    ] {
        permit(decide(&p, Method::GET, ok, Some(&who)));
    }
    for bad in [
        "/fhir/Observation",
        "/fhir/Observation?patient=456",
        "/fhir/Observation?patient=123,456",
        "/fhir/Observation?patient=123&patient=456",
        "/fhir/Observation?subject=Patient/123",
    ] {
        let d = denial(decide(&p, Method::GET, bad, Some(&who)));
        assert_eq!(d.reason, DenyReason::PatientContext, "{bad}");
        assert_eq!(d.route_id.as_deref(), Some("observation-search"));
    }
}

#[test]
fn missing_scopes_are_named_in_the_tokens_context() {
    let p = policy();
    let who = principal("patient/Observation.r", Some("123"));
    let d = denial(decide(
        &p,
        Method::GET,
        "/fhir/Observation?patient=123",
        Some(&who),
    ));
    assert_eq!(
        d.reason,
        DenyReason::InsufficientScope {
            needed: "patient/Observation.s".into()
        }
    );
    assert_eq!(
        d.detail,
        "the token's scopes do not allow this request; it needs patient/Observation.s"
    );
    let who = principal("user/Patient.r", None);
    let d = denial(decide(
        &p,
        Method::GET,
        "/fhir/Observation?patient=123",
        Some(&who),
    ));
    assert_eq!(
        d.reason,
        DenyReason::InsufficientScope {
            needed: "user/Observation.s".into()
        }
    );
}

#[test]
fn granular_grants_do_not_open_unconstrained_routes() {
    let p = policy();
    let who = principal("patient/Observation.rs?category=laboratory", Some("123"));
    let d = denial(decide(
        &p,
        Method::GET,
        "/fhir/Observation?patient=123",
        Some(&who),
    ));
    assert!(matches!(d.reason, DenyReason::InsufficientScope { .. }));
}

#[test]
fn a_request_without_a_token_is_refused_unless_the_route_is_public() {
    let p = policy();
    let d = denial(decide(&p, Method::GET, "/fhir/Patient/123", None));
    assert_eq!(d.reason, DenyReason::MissingToken);
    assert_eq!(d.route_id.as_deref(), Some("patient-read"));
    let ok = permit(decide(&p, Method::GET, "/fhir/metadata", None));
    assert!(ok.is_public());
    assert_eq!(ok.required(), "");
    assert_eq!(ok.granted_by(), "");
    assert_eq!(Decision::Allow(ok).reason_code(), "public");
}

#[test]
fn head_follows_get_routes() {
    let p = policy();
    permit(decide(&p, Method::HEAD, "/fhir/metadata", None));
}

#[test]
fn unrouted_paths_and_methods_are_refused() {
    let p = policy();
    for (m, path) in [
        (Method::GET, "/fhir/Practitioner/1"),
        (Method::GET, "/fhir"),
        (Method::GET, "/metadata"),
        (Method::POST, "/fhir/metadata"),
        (Method::DELETE, "/fhir/Patient/123"),
        (Method::TRACE, "/fhir/metadata"),
        (Method::GET, "/fhir/Metadata"),
    ] {
        let d = p.route(&m, path).expect_err(path);
        assert_eq!(d.reason, DenyReason::NoRoute, "{m} {path}");
        assert_eq!(d.route_id, None);
    }
    let d = p.route(&Method::DELETE, "/fhir/Patient/1").unwrap_err();
    assert_eq!(d.detail, "no policy route allows DELETE on this path");
}

#[test]
fn unsafe_paths_are_refused_before_routing() {
    let p = policy();
    for path in [
        "/fhir/Patient/123/../456",
        "/fhir/%50atient/123",
        "/fhir//Patient/123",
        "/fhir/Patient/123;x",
        "/fhir/Patient/123/",
    ] {
        let d = p.route(&Method::GET, path).expect_err(path);
        assert_eq!(d.reason, DenyReason::UnsafePath, "{path}");
    }
    let d = p.route(&Method::GET, "/fhir/Patient/%2e%2e").unwrap_err();
    assert_eq!(d.detail, "the request path contains an encoded `.` (%2E)");
}

#[test]
fn literal_segments_win_over_parameters() {
    let p = policy();
    let m = p
        .route(&Method::GET, "/fhir/Patient/123/$everything")
        .unwrap();
    assert_eq!(&**m.route_id(), "everything");
    assert_eq!(
        m.capture("/fhir/Patient/123/$everything", "id"),
        Some("123")
    );
    let who = principal("patient/*.rs", Some("123"));
    permit(p.authorize(&m, "/fhir/Patient/123/$everything", None, Some(&who)));
    let who = principal("patient/Patient.rs patient/Observation.rs", Some("123"));
    let d = denial(p.authorize(&m, "/fhir/Patient/123/$everything", None, Some(&who)));
    assert_eq!(
        d.reason,
        DenyReason::InsufficientScope {
            needed: "patient/*.rs".into()
        }
    );
}

#[test]
fn tail_routes_capture_the_rest_and_custom_scopes_match_exactly() {
    let p = policy();
    let path = "/fhir/reports/monthly/2024/01.pdf";
    let m = p.route(&Method::GET, path).unwrap();
    assert_eq!(m.capture(path, "kind"), Some("monthly"));
    assert_eq!(m.capture(path, "file"), Some("2024/01.pdf"));
    assert_eq!(m.capture(path, "nope"), None);
    let who = principal("openid reports.read", None);
    let ok = permit(p.authorize(&m, path, None, Some(&who)));
    assert_eq!(ok.granted_by(), "openid reports.read");
    let who = principal("reports.read", None);
    let d = denial(p.authorize(&m, path, None, Some(&who)));
    assert_eq!(
        d.reason,
        DenyReason::InsufficientScope {
            needed: "openid".into()
        }
    );
}

#[test]
fn route_ids_version_and_warnings_are_exposed() {
    let p = policy();
    let ids: Vec<String> = p.route_ids().iter().map(|s| s.to_string()).collect();
    assert_eq!(
        ids,
        [
            "metadata",
            "patient-read",
            "observation-search",
            "observation-create",
            "everything",
            "report-files"
        ]
    );
    assert_eq!(p.version().len(), 16);
    assert!(p.version().bytes().all(|b| b.is_ascii_hexdigit()));
    let other = Policy::parse(&POLICY.replace("/metadata", "/meta"), Path::new("p.yaml")).unwrap();
    assert_ne!(p.version(), other.version());
    // observation-create can be used with patient/Observation.c and has no binding.
    let w: Vec<String> = p
        .warnings()
        .0
        .iter()
        .map(|d| format!("{}:{} {} | {}", d.line, d.col, d.key, d.message))
        .collect();
    assert_eq!(
        w,
        ["19:5 routes[3] | route `observation-create` can be used with `patient/Observation.c` but has no `patient:` binding, so a patient/ token is not confined to its patient on this route"]
    );
    assert!(p
        .warnings()
        .0
        .iter()
        .all(|d| d.severity == Severity::Warning));
}

#[test]
fn the_version_is_the_first_16_hex_digits_of_the_sha256() {
    use sha2::{Digest, Sha256};
    let p = policy();
    let hex: String = Sha256::digest(POLICY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(p.version(), &hex[..16]);
}

#[test]
fn a_route_match_does_not_borrow_the_path() {
    let p = policy();
    let m = {
        let owned = String::from("/fhir/Patient/123");
        p.route(&Method::GET, &owned).unwrap()
    };
    let who = principal("patient/Patient.r", Some("123"));
    permit(p.authorize(&m, "/fhir/Patient/123", None, Some(&who)));
}

// --- load errors ---

#[test]
fn every_bad_route_is_reported_with_its_position_and_key() {
    let src = "\
version: 1
routes:
  - id: a
    methods: [GET]
    path: /A/{id}
    scopes: { any_of: [patient/Patient.r, patient/Observation.sr] }
  - id: b
    methods: [FETCH]
    path: /B
    scopes: { any_of: [user/B.r] }
  - id: c
    methods: [GET]
    path: /C//x
    public: true
";
    assert_eq!(
        errors(src),
        [
            "6:43 routes[0].scopes.any_of[1] | invalid scope `patient/Observation.sr`: permissions must be a non-empty subset of `cruds` in that order, or `read`, `write`, `*`",
            "8:15 routes[1].methods[0] | unknown method `FETCH`; expected one of: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
            "10:24 routes[1].scopes.any_of[0] | invalid scope `user/B.r`: the resource type is not a FHIR R4 resource type or `*` (names are case-sensitive)",
            "13:11 routes[2].path | a path pattern cannot contain empty segments (`//` or a trailing `/`)",
        ]
    );
}

#[test]
fn conflicting_routes_name_both_ids_and_lines() {
    let src = "\
version: 1
routes:
  - id: first
    methods: [GET, POST]
    path: /Patient/{id}
    scopes: { any_of: [user/Patient.r] }
  - id: second
    methods: [HEAD]
    path: /Patient/{pid}
    scopes: { any_of: [user/Patient.r] }
  - id: third
    methods: [DELETE]
    path: /Patient/{x}
    scopes: { any_of: [user/Patient.d] }
";
    assert_eq!(
        errors(src),
        ["9:11 routes[1].path | route `second` conflicts with route `first` (line 3): both match `/Patient/{}` with HEAD"]
    );
}

#[test]
fn duplicate_ids_and_bad_ids_are_errors() {
    let src = "\
version: 1
routes:
  - id: same
    methods: [GET]
    path: /a
    public: true
  - id: same
    methods: [GET]
    path: /b
    public: true
  - id: 'has space'
    methods: [GET]
    path: /c
    public: true
";
    assert_eq!(
        errors(src),
        [
            "7:9 routes[1].id | duplicate route id `same` (first at line 3)",
            "11:9 routes[2].id | invalid route id `has space`: use letters, digits, `_`, `.` and `-`",
        ]
    );
}

#[test]
fn public_and_scopes_are_mutually_exclusive_and_one_is_required() {
    let src = "\
version: 1
routes:
  - id: both
    methods: [GET]
    path: /a
    public: true
    scopes: { any_of: [openid] }
  - id: neither
    methods: [GET]
    path: /b
  - id: empty
    methods: [GET]
    path: /c
    scopes: { any_of: [], all_of: [] }
";
    assert_eq!(
        errors(src),
        [
            "7:5 routes[0].scopes | a public route cannot have scopes (remove `scopes` or `public: true`)",
            "8:5 routes[1].scopes | missing required key `scopes` (required unless `public: true`)",
            "14:15 routes[2].scopes | list at least one scope in `any_of` or `all_of`",
        ]
    );
}

#[test]
fn patient_bindings_are_checked_against_the_path() {
    let src = "\
version: 1
routes:
  - id: a
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [patient/Patient.r] }
    patient: { segment: pid }
  - id: b
    methods: [GET]
    path: /files/{*rest}
    scopes: { any_of: [patient/Patient.r] }
    patient: { segment: rest }
  - id: c
    methods: [GET]
    path: /Observation
    scopes: { any_of: [patient/Observation.s] }
    patient: { query: 'patient:Patient' }
  - id: d
    methods: [GET]
    path: /Condition
    scopes: { any_of: [patient/Condition.s] }
    patient: { query: patient, segment: id }
";
    assert_eq!(
        errors(src),
        [
            "7:25 routes[0].patient.segment | the path has no `{pid}` parameter",
            "12:25 routes[1].patient.segment | `{*rest}` spans several segments; bind a single `{param}`",
            "17:23 routes[2].patient.query | invalid query parameter name `patient:Patient` (a plain search parameter name, no modifier or chain)",
            "22:16 routes[3].patient | give exactly one of `segment` or `query`",
        ]
    );
}

#[test]
fn top_level_problems_are_all_reported() {
    let src = "\
version: 2
base_path: /fhir/{tenant}
routez: []
";
    assert_eq!(
        errors(src),
        [
            "1:1 routes | missing required key `routes`",
            "1:10 version | unsupported policy format version 2; this fhirwall reads version 1",
            "2:12 base_path | the base path must be literal (no `{parameters}`)",
            "3:1 routez | unknown key `routez`; did you mean `routes`?",
        ]
    );
}

#[test]
fn unknown_keys_and_wrong_types_inside_routes_are_reported() {
    let src = "\
version: 1
routes:
  - id: a
    method: [GET]
    path: /a
    public: yes
  - id: b
    methods: GET
    path: 17
    scopes: { any_of: [openid], none_of: [x] }
  - just a string
";
    assert_eq!(
        errors(src),
        [
            "3:5 routes[0].methods | missing required key `methods`",
            "4:5 routes[0].method | unknown key `method`; did you mean `methods`?",
            "6:13 routes[0].public | expected `true` or `false`, found `yes`",
            "8:14 routes[1].methods | expected a list, found `GET`",
            "9:11 routes[1].path | a path pattern must start with `/`",
            "10:33 routes[1].scopes.none_of | unknown key `none_of`; expected one of: any_of, all_of",
            "11:5 routes[2] | expected a mapping, found `just a string`",
        ]
    );
}

#[test]
fn syntax_errors_and_empty_files_are_reported() {
    let e = errors("version: 1\nroutes: [\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("YAML syntax error"), "{e:?}");
    assert_eq!(
        errors(""),
        ["1:1  | expected a mapping, found nothing (null)"]
    );
}

#[test]
fn a_policy_with_only_warnings_loads() {
    let src = "\
version: 1
routes:
  - id: open-write
    methods: [POST]
    path: /inbox
    public: true
  - id: bound-but-user
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [user/Patient.r] }
    patient: { segment: id }
";
    let p = Policy::parse(src, Path::new("p.yaml")).unwrap();
    let w: Vec<&str> = p.warnings().0.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        w,
        [
            "public route `open-write` allows POST without a token",
            "route `bound-but-user` has a `patient:` binding but no patient/ scope, so the binding never applies",
        ]
    );
}

#[test]
fn an_unreadable_policy_file_is_one_diagnostic() {
    let d = Policy::load(Path::new("/nonexistent/policy.yaml")).unwrap_err();
    assert_eq!(d.0.len(), 1);
    assert_eq!(d.0[0].line, 0);
    assert!(d.0[0].message.starts_with("cannot read the policy file: "));
}

// --- the shipped example policy: everything under /fhir goes to the SMART engine ---

fn shipped() -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/fhir-r4.yaml");
    Policy::load(&path).unwrap_or_else(|d| panic!("{d}"))
}

/// Routes, then (on no route) the FHIR engine, as the proxy does; bodies are not read.
fn engine(p: &Policy, method: Method, target: &str, who: Option<&Principal>) -> Decision {
    use super::smart::{Assessment, FhirRequest};
    let (path, query) = match target.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (target, None),
    };
    match p.route(&method, path) {
        Ok(m) => p.authorize(&m, path, query, who),
        Err(d) if d.reason != DenyReason::NoRoute => Decision::Deny(d),
        Err(d) => {
            let Some(f) = p.fhir().filter(|f| path.starts_with(f.base_path())) else {
                return Decision::Deny(d);
            };
            let req = FhirRequest {
                method: &method,
                path,
                query,
                if_none_exist: None,
                content_type: None,
                body: None,
            };
            match f.assess(&req, who) {
                Assessment::Verdict(v) => v.decision,
                Assessment::NeedsBody { .. } => panic!("needs a body"),
            }
        }
    }
}

#[test]
fn the_shipped_policy_confines_patient_reads_to_the_context_patient() {
    let p = shipped();
    let who = principal(
        "openid fhirUser launch/patient patient/Patient.r",
        Some("123"),
    );
    let ok = permit(engine(&p, Method::GET, "/fhir/Patient/123", Some(&who)));
    assert_eq!(ok.route_id(), "fhir:read");
    let d = denial(engine(&p, Method::GET, "/fhir/Patient/456", Some(&who)));
    assert_eq!(d.reason, DenyReason::PatientContext);
    for scopes in [
        "user/Patient.r",
        "system/Patient.r",
        "patient/Patient.read user/Patient.read",
    ] {
        let who = principal(scopes, None);
        permit(engine(&p, Method::GET, "/fhir/Patient/456", Some(&who)));
    }
}

#[test]
fn the_shipped_policy_confines_observation_searches_by_the_patient_parameter() {
    let p = shipped();
    let who = principal("patient/Observation.s", Some("123"));
    let ok = permit(engine(
        &p,
        Method::GET,
        "/fhir/Observation?patient=123",
        Some(&who),
    ));
    assert_eq!(ok.route_id(), "fhir:search-type");
    let d = denial(engine(
        &p,
        Method::GET,
        "/fhir/Observation?patient=456",
        Some(&who),
    ));
    assert_eq!(d.reason, DenyReason::PatientContext);
    let who = principal("patient/Observation.r", Some("123"));
    let d = denial(engine(
        &p,
        Method::GET,
        "/fhir/Observation?patient=123",
        Some(&who),
    ));
    assert_eq!(
        d.reason,
        DenyReason::InsufficientScope {
            needed: "patient/Observation.s".into()
        }
    );
}

#[test]
fn the_shipped_policy_has_public_discovery_and_enforces_smart_everywhere_else() {
    let p = shipped();
    assert!(p.route_ids().is_empty());
    permit(engine(&p, Method::GET, "/fhir/metadata", None));
    permit(engine(
        &p,
        Method::GET,
        "/fhir/.well-known/smart-configuration",
        None,
    ));
    assert_eq!(
        denial(engine(&p, Method::POST, "/fhir/metadata", None)).reason,
        DenyReason::MissingToken
    );
    assert_eq!(
        denial(engine(&p, Method::GET, "/fhir/Observation/1", None)).reason,
        DenyReason::MissingToken
    );
    assert_eq!(
        denial(engine(&p, Method::GET, "/other", None)).reason,
        DenyReason::NoRoute
    );
    let who = principal("patient/*.rs", Some("123"));
    let ok = permit(engine(
        &p,
        Method::GET,
        "/fhir/Patient/123/$everything",
        Some(&who),
    ));
    assert_eq!(ok.route_id(), "fhir:operation");
    let who = principal("patient/Patient.s", Some("123"));
    permit(engine(&p, Method::GET, "/fhir/Patient?_id=123", Some(&who)));
    denial(engine(
        &p,
        Method::GET,
        "/fhir/Patient?name=smith",
        Some(&who),
    ));
}

#[test]
fn policies_and_matches_can_cross_threads_and_awaits() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Policy>();
    send_sync::<RouteMatch<'static>>();
    send_sync::<Decision>();
}

// --- the `fhir:` section and its lint ---

fn warnings(src: &str) -> Vec<String> {
    let p = Policy::parse(src, Path::new("p.yaml")).unwrap_or_else(|d| panic!("{d}"));
    p.warnings()
        .0
        .iter()
        .map(|d| format!("{}:{} {} | {}", d.line, d.col, d.key, d.message))
        .collect()
}

#[test]
fn every_bad_fhir_key_is_reported_with_its_position_and_key() {
    let src = "\
version: 1
base_path: /fhir
fhir:
  version: R5
  patient_scopes_outside_compartmnt: deny
  granular_search: filter
  max_body_bytes: 0
  server_urls: [ftp://x]
  paging:
    ttl: 0s
    max_links: 0
    parameters: ['a b']
  operations:
    - name: $validate
      level: system
      types: [Observation]
      methods: [PUT]
      scopes: { any_of: [user/Observation.r] }
    - name: graphql
      level: galaxy
      scopes: {}
routes: []
";
    assert_eq!(
        errors(src),
        [
            "4:12 fhir.version | unsupported FHIR version `R5`; this fhirwall enforces R4",
            "5:3 fhir.patient_scopes_outside_compartmnt | unknown key `patient_scopes_outside_compartmnt`; did you mean `patient_scopes_outside_compartment`?",
            "6:20 fhir.granular_search | unknown value `filter`; expected one of: deny, narrow",
            "7:19 fhir.max_body_bytes | must be a byte count above zero",
            "8:17 fhir.server_urls[0] | `ftp://x` is not an absolute http(s) base URL without query or fragment",
            "10:10 fhir.paging.ttl | the ttl must be above zero",
            "11:16 fhir.paging.max_links | must be at least 1",
            "12:18 fhir.paging.parameters[0] | invalid query parameter name `a b`",
            "14:13 fhir.operations[0].name | invalid operation name `$validate` (write it without `$`, e.g. `validate`)",
            "16:7 fhir.operations[0].types | a system-level operation has no types",
            "17:17 fhir.operations[0].methods[0] | `PUT`: operations are invoked with GET or POST, each listed once",
            "20:14 fhir.operations[1].level | unknown value `galaxy`; expected one of: system, type, instance",
            "21:15 fhir.operations[1].scopes | list at least one scope in `any_of` or `all_of`",
        ]
    );
}

#[test]
fn a_fhir_section_needs_its_version() {
    let e = errors("version: 1\nbase_path: /fhir\nfhir: {}\nroutes: []\n");
    assert_eq!(e, ["3:7 fhir.version | missing required key `version`"]);
}

#[test]
fn a_fhir_section_compiles_its_settings_and_defaults() {
    let p = Policy::parse(
        "version: 1\nbase_path: /fhir\nfhir:\n  version: R4\n  granular_search: narrow\n  server_urls: [https://ehr.example.org/fhir/]\n  paging: { parameters: [_getpages, page], ttl: 5m, max_links: 10 }\nroutes: []\n",
        Path::new("p.yaml"),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let f = p.fhir().unwrap();
    assert_eq!(f.base_path(), "/fhir");
    assert_eq!(f.granular_search(), smart::GranularSearch::Narrow);
    assert_eq!(f.outside_compartment(), smart::OutsideCompartment::Allow);
    assert_eq!(&*f.server_urls()[0], "https://ehr.example.org/fhir");
    assert_eq!(f.page_parameters().len(), 2);
    assert_eq!(f.paging_ttl(), std::time::Duration::from_secs(300));
    assert_eq!(f.paging_max_links(), 10);
    assert!(p.warnings().0.is_empty(), "{}", p.warnings());
}

#[test]
fn lint_warns_about_broad_grants_routes_that_bypass_the_engine_and_scopes_never_needed() {
    let src = "\
version: 1
base_path: /fhir
fhir:
  version: R4
  operations:
    - name: purge
      level: instance
      scopes: { any_of: [system/*.*] }
routes:
  - id: everything
    methods: [GET]
    path: /Patient/{id}/$everything
    scopes: { any_of: [user/*.cruds] }
  - id: legacy
    methods: [GET]
    path: /legacy
    scopes: { any_of: [user/Patient.r, user/Patient.rs] }
";
    let src = src.replace("path: /legacy", "path: /x");
    let w = warnings(&src);
    assert!(
        w.iter()
            .any(|w| w.contains("`system/*.*` is a broad grant")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|w| w.contains("`user/*.cruds` is a broad grant")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|w| w.contains("route `everything` is under the FHIR base")),
        "{w:?}"
    );
    assert!(
        w.iter().any(|w| w.contains("routes[1].scopes.any_of[1]")
            && w.contains("`user/Patient.rs` is never needed")),
        "{w:?}"
    );
    // Explicit routes under the base are matched first (the route's own rules).
    let p = Policy::parse(&src, Path::new("p.yaml")).unwrap();
    let who = principal("user/*.cruds", None);
    let ok = permit(decide(
        &p,
        Method::GET,
        "/fhir/Patient/1/$everything",
        Some(&who),
    ));
    assert_eq!(ok.route_id(), "everything");
}

#[test]
fn explain_reports_the_route_or_engine_decision() {
    let p = shipped();
    let who = principal("patient/Observation.rs", Some("123"));
    let e = p.explain_request(
        &Method::GET,
        "https://gw.example.org/fhir/Observation/abc",
        None,
        Some(&who),
    );
    assert!(e.allowed, "{}", e.text);
    assert!(e.text.contains("decided by: FHIR engine"), "{}", e.text);
    assert!(
        e.text.contains("response body is held and checked"),
        "{}",
        e.text
    );
    let text = p.explain(&Method::GET, "/elsewhere", None, Some(&who));
    assert!(text.contains("default deny"), "{text}");
    let text = p.explain(&Method::GET, "/fhir/../x", None, Some(&who));
    assert!(text.contains("path safety"), "{text}");
}

#[test]
fn lint_warns_about_routes_a_more_specific_route_shadows_for_some_methods() {
    let src = "\
version: 1
routes:
  - id: anything
    methods: [GET, DELETE]
    path: /api/{*rest}
    scopes: { any_of: [api.read] }
  - id: item-update
    methods: [PUT]
    path: /api/items/{id}
    scopes: { any_of: [api.write] }
  - id: item-read
    methods: [GET, PUT]
    path: /api/other/{id}
    scopes: { any_of: [api.read] }
";
    let w = warnings(src);
    assert!(
        w.iter().any(|w| w.contains(
            "route `anything` is shadowed on `/api/items/{}` paths: route `item-update` matches them more specifically but does not allow GET, DELETE"
        )),
        "{w:?}"
    );
    assert!(
        w.iter().any(|w| w.contains("route `anything` is shadowed on `/api/other/{}` paths: route `item-read` matches them more specifically but does not allow DELETE")),
        "{w:?}"
    );
    assert_eq!(w.len(), 2, "{w:?}");
    // The warning is true: GET /api/items/1 has no route.
    let p = Policy::parse(src, Path::new("p.yaml")).unwrap();
    let who = principal("api.read", None);
    assert_eq!(
        denial(decide(&p, Method::GET, "/api/items/1", Some(&who))).reason,
        DenyReason::NoRoute
    );
    permit(decide(&p, Method::GET, "/api/items/1/x", Some(&who)));
}

#[test]
fn a_literal_carve_out_with_other_methods_is_not_reported_as_shadowing() {
    let src = "\
version: 1
routes:
  - id: report-read
    methods: [GET]
    path: /reports/{id}
    scopes: { any_of: [reports.read] }
  - id: report-export
    methods: [POST]
    path: /reports/export
    scopes: { any_of: [reports.export] }
";
    assert!(warnings(src).is_empty(), "{:?}", warnings(src));
}
