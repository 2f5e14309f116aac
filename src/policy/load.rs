//! Compiles a policy file into a [`Policy`], reporting every problem with its position.
//!
//! ```yaml
//! version: 1
//! base_path: /fhir
//! routes:
//!   - id: patient-read
//!     methods: [GET]
//!     path: /Patient/{id}
//!     scopes: { any_of: [patient/Patient.r, user/Patient.r, system/Patient.r] }
//!     patient: { segment: id }
//! ```
//!
//! or, for a FHIR base whose requests the SMART engine decides ([`super::smart`]), a
//! `fhir:` section (`version: R4`, `patient_scopes_outside_compartment`, `granular_search`,
//! `max_body_bytes`, `max_response_bytes`, `server_urls`, `paging`, `operations`).
//!
//! Each route is checked on its own (a bad route does not hide the problems of the next),
//! then inserted into the trie, where same-shape/same-method conflicts are found. Lint
//! warnings come last. The format is documented in `docs/reference.md`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::fhir::Level;
use super::patient::PatientBinding;
use super::r4::ResourceType;
use super::route::{Pattern, Segment, Trie, METHODS};
use super::scope::{Context, GrantedScopes, Letters, Scope, ScopeRequirement, ScopeType};
use super::smart::{FhirSection, FhirSettings, GranularSearch, OperationRule, OutsideCompartment};
use super::{Policy, Route};
use crate::config::yaml::{self, index, join, Mark, Node, Reader};
use crate::config::Diagnostics;

/// The only policy format version this build reads.
const FORMAT_VERSION: u64 = 1;

const TOP_KEYS: &[&str] = &[
    "version",
    "base_path",
    "fhir",
    "routes",
    "quotas",
    "distinct_patients",
];
const ROUTE_KEYS: &[&str] = &[
    "id",
    "description",
    "methods",
    "path",
    "public",
    "scopes",
    "patient",
];
const SCOPES_KEYS: &[&str] = &["any_of", "all_of"];
const FHIR_KEYS: &[&str] = &[
    "version",
    "patient_scopes_outside_compartment",
    "granular_search",
    "max_body_bytes",
    "max_response_bytes",
    "server_urls",
    "paging",
    "operations",
];
const PAGING_KEYS: &[&str] = &["parameters", "ttl", "max_links"];
const OPERATION_KEYS: &[&str] = &["name", "description", "level", "types", "methods", "scopes"];
const PATIENT_KEYS: &[&str] = &["segment", "query"];

/// A route that passed its own checks, before trie insertion.
struct Candidate {
    route: Route,
    pattern: Pattern,
    methods: Vec<usize>,
    mark: Mark,
    path_mark: Mark,
    key: String,
}

pub(super) fn compile(src: &str, file: &Path) -> Result<Policy, Diagnostics> {
    let root = yaml::parse(src, file)?;
    let mut r = Reader::new(file);
    let Some(top) = r.map(&root, "", TOP_KEYS) else {
        return Err(r.diags);
    };

    if let Some(v) = r.required(&top, "", "version") {
        if let Some(n) = r.u64(v, "version") {
            if n != FORMAT_VERSION {
                r.error(
                    v.mark,
                    "version",
                    format!("unsupported policy format version {n}; this fhirwall reads version {FORMAT_VERSION}"),
                );
            }
        }
    }

    let base = match top.get("base_path") {
        None => Some(Pattern::default()),
        Some(node) => base_path(&mut r, node),
    };
    let base_text = top
        .get("base_path")
        .and_then(|n| n.as_scalar())
        .unwrap_or("")
        .to_owned();

    let fhir = top
        .get("fhir")
        .and_then(|n| fhir_section(&mut r, n, &base_text));

    let mut candidates = Vec::new();
    if let Some(routes) = r.required(&top, "", "routes") {
        if let Some(items) = r.seq(routes, "routes") {
            if items.is_empty() && top.get("fhir").is_none() {
                r.warning(
                    routes.mark,
                    "routes",
                    "the policy has no routes: every request is refused",
                );
            }
            let mut ids: HashMap<String, usize> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(c) =
                    compile_route(&mut r, item, &index("routes", i), base.as_ref(), &mut ids)
                {
                    candidates.push(c);
                }
            }
        }
    }

    // Build the trie from the routes that compiled; conflicts name both routes.
    let mut trie = Trie::new();
    let mut routes: Vec<Route> = Vec::with_capacity(candidates.len());
    let mut marks: Vec<Mark> = Vec::with_capacity(candidates.len());
    let mut shapes: Vec<(Pattern, Vec<usize>, String)> = Vec::with_capacity(candidates.len());
    for c in candidates {
        let idx = routes.len() as u32;
        match trie.insert(&c.pattern, &c.methods, idx) {
            Ok(()) => {
                shapes.push((c.pattern.clone(), c.methods.clone(), c.key.clone()));
                lint(&mut r, &c);
                if fhir.is_some() {
                    lint_fhir_route(&mut r, &c, base.as_ref());
                }
                routes.push(c.route);
                marks.push(c.mark);
            }
            Err(conflict) => {
                let other = &routes[conflict.existing as usize];
                let line = marks[conflict.existing as usize].line;
                let msg = format!(
                    "route `{}` conflicts with route `{}` (line {line}): both match `{}` with {}",
                    c.route.id,
                    other.id,
                    c.pattern.shape(),
                    conflict.method
                );
                r.error(c.path_mark, &join(&c.key, "path"), msg);
            }
        }
    }

    lint_shadowed(&mut r, &trie, &routes, &marks, &shapes);

    // Quotas may name routes; every route id is known once the routes are read (a quota
    // naming a route that failed to compile is reported too, which is harmless).
    let route_ids: Vec<Arc<str>> = routes.iter().map(|r| r.id.clone()).collect();
    let rate_limits = crate::ratelimit::spec::read_policy(&mut r, &top, &route_ids);

    // Checks run key by key; report in file order.
    r.diags.0.sort_by_key(|d| (d.line, d.col));
    if r.has_errors() {
        return Err(r.diags);
    }
    let Some(rate_limits) = rate_limits else {
        // Unreachable: `None` always comes with an error.
        return Err(r.diags);
    };
    let digest = Sha256::digest(src.as_bytes());
    let version = digest[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into();
    Ok(Policy {
        version,
        routes: routes.into_boxed_slice(),
        trie,
        warnings: r.diags,
        base_path: base_text.into(),
        rate_limits,
        fhir,
    })
}

fn base_path(r: &mut Reader<'_>, node: &Node) -> Option<Pattern> {
    let s = r.string(node, "base_path")?;
    let p = match Pattern::parse(s) {
        Ok(p) => p,
        Err(e) => {
            r.error(node.mark, "base_path", e.to_string());
            return None;
        }
    };
    if p.segments()
        .iter()
        .any(|s| !matches!(s, Segment::Literal(_)))
    {
        r.error(
            node.mark,
            "base_path",
            "the base path must be literal (no `{parameters}`)",
        );
        return None;
    }
    Some(p)
}

fn compile_route(
    r: &mut Reader<'_>,
    node: &Node,
    key: &str,
    base: Option<&Pattern>,
    ids: &mut HashMap<String, usize>,
) -> Option<Candidate> {
    let errors_before = r.diags.0.len();
    let m = r.map(node, key, ROUTE_KEYS)?;

    let id = r.required(&m, key, "id").and_then(|n| {
        let id = r.string(n, &join(key, "id"))?;
        let valid = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            r.error(
                n.mark,
                &join(key, "id"),
                format!("invalid route id `{id}`: use letters, digits, `_`, `.` and `-`"),
            );
            return None;
        }
        if let Some(first) = ids.get(id) {
            r.error(
                n.mark,
                &join(key, "id"),
                format!("duplicate route id `{id}` (first at line {first})"),
            );
            return None;
        }
        ids.insert(id.to_owned(), n.mark.line);
        Some(id)
    });

    if let Some(n) = m.get("description") {
        r.string(n, &join(key, "description"));
    }

    let methods = r
        .required(&m, key, "methods")
        .and_then(|n| methods(r, n, &join(key, "methods")));

    let path_node = r.required(&m, key, "path");
    let pattern = path_node.and_then(|n| {
        let s = r.string(n, &join(key, "path"))?;
        let p = Pattern::parse(s)
            .and_then(|p| match base {
                Some(b) => p.prefixed(b),
                None => Ok(p),
            })
            .map_err(|e| r.error(n.mark, &join(key, "path"), e.to_string()))
            .ok()?;
        Some(p)
    });

    let public = match m.get("public") {
        Some(n) => r.bool(n, &join(key, "public")),
        None => Some(false),
    };

    let requirement = match (public, m.get("scopes")) {
        (Some(true), Some(s)) => {
            r.error(
                m.key_mark("scopes").unwrap_or(s.mark),
                &join(key, "scopes"),
                "a public route cannot have scopes (remove `scopes` or `public: true`)",
            );
            None
        }
        (Some(false), None) => {
            r.error(
                m.mark,
                &join(key, "scopes"),
                "missing required key `scopes` (required unless `public: true`)",
            );
            None
        }
        (_, Some(s)) => scopes(r, s, &join(key, "scopes")),
        (_, None) => None,
    };

    let binding = m.get("patient").and_then(|n| {
        let bkey = join(key, "patient");
        if public == Some(true) {
            r.error(
                m.key_mark("patient").unwrap_or(n.mark),
                &bkey,
                "a public route cannot have a `patient` binding",
            );
            return None;
        }
        patient_binding(r, n, &bkey, pattern.as_ref())
    });

    if r.diags.0[errors_before..]
        .iter()
        .any(|d| d.severity == crate::config::Severity::Error)
    {
        return None;
    }
    let (id, methods, pattern, public) = (id?, methods?, pattern?, public?);
    let (required, requirement) = if public {
        (Arc::from(""), ScopeRequirement::new(Vec::new(), Vec::new()))
    } else {
        let req = requirement?;
        (Arc::from(req.to_string()), req)
    };
    let params = pattern.param_names().map(Box::from).collect();
    Some(Candidate {
        route: Route {
            id: Arc::from(id),
            public,
            required,
            requirement,
            patient: binding,
            params,
        },
        methods,
        mark: m.mark,
        path_mark: path_node.map_or(m.mark, |n| n.mark),
        key: key.to_owned(),
        pattern,
    })
}

fn methods(r: &mut Reader<'_>, node: &Node, key: &str) -> Option<Vec<usize>> {
    let items = r.strings(node, key)?;
    if items.is_empty() {
        r.error(node.mark, key, "list at least one method");
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, (name, n)) in items.iter().enumerate() {
        match METHODS.iter().position(|m| m == name) {
            Some(m) if out.contains(&m) => {
                r.error(
                    n.mark,
                    &index(key, i),
                    format!("method `{name}` is listed twice"),
                );
                ok = false;
            }
            Some(m) => out.push(m),
            None => {
                r.error(
                    n.mark,
                    &index(key, i),
                    format!(
                        "unknown method `{name}`; expected one of: {}",
                        METHODS.join(", ")
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn scopes(r: &mut Reader<'_>, node: &Node, key: &str) -> Option<ScopeRequirement> {
    let m = r.map(node, key, SCOPES_KEYS)?;
    let mut ok = true;
    let mut lists: [Vec<Scope>; 2] = [Vec::new(), Vec::new()];
    for (slot, name) in lists.iter_mut().zip(["any_of", "all_of"]) {
        let Some(n) = m.get(name) else { continue };
        let lkey = join(key, name);
        let Some(items) = r.strings(n, &lkey) else {
            ok = false;
            continue;
        };
        for (i, (s, item)) in items.into_iter().enumerate() {
            match s.parse::<Scope>() {
                Ok(scope) => slot.push(scope),
                Err(e) => {
                    r.error(item.mark, &index(&lkey, i), e.to_string());
                    ok = false;
                }
            }
        }
    }
    let [any_of, all_of] = lists;
    if ok && any_of.is_empty() && all_of.is_empty() {
        r.error(
            m.mark,
            key,
            "list at least one scope in `any_of` or `all_of`",
        );
        return None;
    }
    ok.then(|| ScopeRequirement::new(any_of, all_of))
}

fn patient_binding(
    r: &mut Reader<'_>,
    node: &Node,
    key: &str,
    pattern: Option<&Pattern>,
) -> Option<PatientBinding> {
    let m = r.map(node, key, PATIENT_KEYS)?;
    match (m.get("segment"), m.get("query")) {
        (Some(_), Some(_)) | (None, None) => {
            r.error(m.mark, key, "give exactly one of `segment` or `query`");
            None
        }
        (Some(n), None) => {
            let skey = join(key, "segment");
            let name = r.string(n, &skey)?;
            // Without a valid pattern there is nothing to check the name against; the
            // pattern's own error is already reported.
            let pattern = pattern?;
            let capture = pattern.param_names().position(|p| p == name);
            let is_param = pattern
                .segments()
                .iter()
                .any(|s| matches!(s, Segment::Param(p) if &**p == name));
            match capture {
                Some(capture) if is_param => Some(PatientBinding::Segment {
                    capture,
                    name: name.into(),
                }),
                Some(_) => {
                    r.error(
                        n.mark,
                        &skey,
                        format!("`{{*{name}}}` spans several segments; bind a single `{{param}}`"),
                    );
                    None
                }
                None => {
                    r.error(
                        n.mark,
                        &skey,
                        format!("the path has no `{{{name}}}` parameter"),
                    );
                    None
                }
            }
        }
        (None, Some(n)) => {
            let qkey = join(key, "query");
            let name = r.string(n, &qkey)?;
            let valid = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
            if !valid {
                r.error(
                    n.mark,
                    &qkey,
                    format!("invalid query parameter name `{name}` (a plain search parameter name, no modifier or chain)"),
                );
                return None;
            }
            Some(PatientBinding::Query(name.into()))
        }
    }
}

/// Warnings about routes that load but probably do not do what their author meant.
fn lint(r: &mut Reader<'_>, c: &Candidate) {
    let route = &c.route;
    if !route.public {
        lint_broad(r, &route.requirement, c.mark, &join(&c.key, "scopes"));
    }
    let req = &route.requirement;
    let patient_scopes: Vec<&Scope> = req
        .any_of()
        .iter()
        .chain(req.all_of())
        .filter(|s| {
            s.as_resource()
                .is_some_and(|s| s.context() == Context::Patient)
        })
        .collect();
    if route.patient.is_none() {
        let compartment = patient_scopes.iter().find(|s| {
            s.as_resource().is_some_and(|s| match s.resource() {
                ScopeType::Any => true,
                ScopeType::Type(t) => t.in_patient_compartment(),
            })
        });
        if let Some(s) = compartment {
            r.warning(
                c.mark,
                &c.key,
                format!(
                    "route `{}` can be used with `{s}` but has no `patient:` binding, so a patient/ token is not confined to its patient on this route",
                    route.id
                ),
            );
        }
    } else if patient_scopes.is_empty() {
        r.warning(
            c.mark,
            &c.key,
            format!("route `{}` has a `patient:` binding but no patient/ scope, so the binding never applies", route.id),
        );
    }
    if route.public {
        for &m in &c.methods {
            if !matches!(METHODS[m], "GET" | "HEAD" | "OPTIONS") {
                r.warning(
                    c.mark,
                    &c.key,
                    format!(
                        "public route `{}` allows {} without a token",
                        route.id, METHODS[m]
                    ),
                );
            }
        }
    }
}

/// Compiles the `fhir:` section (SMART enforcement under the FHIR base, SMART-SEMANTICS).
fn fhir_section(r: &mut Reader<'_>, node: &Node, base: &str) -> Option<FhirSection> {
    let key = "fhir";
    let errors_before = r.diags.0.len();
    let m = r.map(node, key, FHIR_KEYS)?;
    if let Some(v) = r.required(&m, key, "version") {
        if let Some(s) = r.string(v, "fhir.version") {
            if s != "R4" {
                r.error(
                    v.mark,
                    "fhir.version",
                    format!("unsupported FHIR version `{s}`; this fhirwall enforces R4"),
                );
            }
        }
    }
    let outside = match m.get("patient_scopes_outside_compartment") {
        None => Some(OutsideCompartment::Allow),
        Some(n) => choice(
            r,
            n,
            "fhir.patient_scopes_outside_compartment",
            &[
                ("allow", OutsideCompartment::Allow),
                ("deny", OutsideCompartment::Deny),
            ],
        ),
    };
    let granular = match m.get("granular_search") {
        None => Some(GranularSearch::Deny),
        Some(n) => choice(
            r,
            n,
            "fhir.granular_search",
            &[
                ("deny", GranularSearch::Deny),
                ("narrow", GranularSearch::Narrow),
            ],
        ),
    };
    let max_body = size(r, m.get("max_body_bytes"), "fhir.max_body_bytes", 1 << 20);
    let max_response = size(
        r,
        m.get("max_response_bytes"),
        "fhir.max_response_bytes",
        8 << 20,
    );
    let mut server_urls = Vec::new();
    if let Some(n) = m.get("server_urls") {
        for (i, (u, item)) in r
            .strings(n, "fhir.server_urls")
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let k = index("fhir.server_urls", i);
            let trimmed = u.trim_end_matches('/');
            let valid = (trimmed.starts_with("https://") || trimmed.starts_with("http://"))
                && trimmed.len() > "https://".len()
                && !trimmed.contains(['?', '#', ' '])
                && trimmed.is_ascii();
            if valid {
                server_urls.push(Box::from(trimmed));
            } else {
                r.error(
                    item.mark,
                    &k,
                    format!("`{u}` is not an absolute http(s) base URL without query or fragment"),
                );
            }
        }
    }
    let mut page_parameters: Vec<Box<str>> = vec!["_getpages".into()];
    let mut paging_ttl = std::time::Duration::from_secs(30 * 60);
    let mut paging_max_links = 100_000;
    if let Some(n) = m.get("paging") {
        if let Some(pm) = r.map(n, "fhir.paging", PAGING_KEYS) {
            if let Some(pn) = pm.get("parameters") {
                if let Some(items) = r.strings(pn, "fhir.paging.parameters") {
                    page_parameters.clear();
                    let listed = items.len();
                    for (i, (name, item)) in items.into_iter().enumerate() {
                        let valid = !name.is_empty()
                            && name
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
                        if valid {
                            page_parameters.push(name.into());
                        } else {
                            r.error(
                                item.mark,
                                &index("fhir.paging.parameters", i),
                                format!("invalid query parameter name `{name}`"),
                            );
                        }
                    }
                    if listed == 0 {
                        r.error(
                            pn.mark,
                            "fhir.paging.parameters",
                            "list at least one page parameter",
                        );
                    }
                }
            }
            if let Some(tn) = pm.get("ttl") {
                if let Some(d) = r.duration(tn, "fhir.paging.ttl") {
                    if d.is_zero() {
                        r.error(tn.mark, "fhir.paging.ttl", "the ttl must be above zero");
                    }
                    paging_ttl = d;
                }
            }
            if let Some(ln) = pm.get("max_links") {
                if let Some(n) = r.u64(ln, "fhir.paging.max_links") {
                    if n == 0 {
                        r.error(ln.mark, "fhir.paging.max_links", "must be at least 1");
                    }
                    paging_max_links = n;
                }
            }
        }
    }
    let mut operations = Vec::new();
    if let Some(n) = m.get("operations") {
        if let Some(items) = r.seq(n, "fhir.operations") {
            for (i, item) in items.iter().enumerate() {
                if let Some(op) = operation_rule(r, item, &index("fhir.operations", i)) {
                    let clash = operations.iter().any(|o: &OperationRule| {
                        o.name == op.name
                            && o.level == op.level
                            && o.methods.iter().any(|m| op.methods.contains(m))
                            && match (&o.types, &op.types) {
                                (Some(a), Some(b)) => a.iter().any(|t| b.contains(t)),
                                _ => true,
                            }
                    });
                    if clash {
                        r.error(
                            item.mark,
                            &index("fhir.operations", i),
                            format!(
                                "operation `${}` is configured twice for the same level, type and method",
                                op.name
                            ),
                        );
                    } else {
                        lint_broad(r, &op.scopes, item.mark, &index("fhir.operations", i));
                        operations.push(op);
                    }
                }
            }
        }
    }
    let failed = r.diags.0[errors_before..]
        .iter()
        .any(|d| d.severity == crate::config::Severity::Error);
    if failed {
        return None;
    }
    Some(FhirSection::new(FhirSettings {
        base_path: base.trim_end_matches('/').into(),
        outside_compartment: outside?,
        granular_search: granular?,
        max_body_bytes: max_body?,
        max_response_bytes: max_response?,
        server_urls,
        page_parameters,
        paging_ttl,
        paging_max_links,
        operations,
    }))
}

/// One of a fixed set of words.
fn choice<T: Copy>(r: &mut Reader<'_>, n: &Node, key: &str, options: &[(&str, T)]) -> Option<T> {
    let s = r.string(n, key)?;
    match options.iter().find(|(w, _)| *w == s) {
        Some((_, v)) => Some(*v),
        None => {
            let words: Vec<&str> = options.iter().map(|(w, _)| *w).collect();
            r.error(
                n.mark,
                key,
                format!("unknown value `{s}`; expected one of: {}", words.join(", ")),
            );
            None
        }
    }
}

/// A byte size above zero, `default` when absent.
fn size(r: &mut Reader<'_>, n: Option<&Node>, key: &str, default: usize) -> Option<usize> {
    let Some(n) = n else {
        return Some(default);
    };
    let v = r.u64(n, key)?;
    match usize::try_from(v) {
        Ok(v) if v > 0 => Some(v),
        _ => {
            r.error(n.mark, key, "must be a byte count above zero");
            None
        }
    }
}

fn operation_rule(r: &mut Reader<'_>, node: &Node, key: &str) -> Option<OperationRule> {
    let errors_before = r.diags.0.len();
    let m = r.map(node, key, OPERATION_KEYS)?;
    let name = r.required(&m, key, "name").and_then(|n| {
        let k = join(key, "name");
        let s = r.string(n, &k)?;
        let mut b = s.bytes();
        let valid = b.next().is_some_and(|c| c.is_ascii_alphabetic())
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            && s.len() <= 64;
        if !valid {
            r.error(
                n.mark,
                &k,
                format!("invalid operation name `{s}` (write it without `$`, e.g. `validate`)"),
            );
            return None;
        }
        Some(s)
    });
    if let Some(n) = m.get("description") {
        r.string(n, &join(key, "description"));
    }
    let level = r.required(&m, key, "level").and_then(|n| {
        choice(
            r,
            n,
            &join(key, "level"),
            &[
                ("system", Level::System),
                ("type", Level::Type),
                ("instance", Level::Instance),
            ],
        )
    });
    let types = match m.get("types") {
        None => Some(None),
        Some(n) => {
            let k = join(key, "types");
            let items = r.strings(n, &k);
            let mut out = Vec::new();
            let mut ok = items.is_some();
            for (i, (t, item)) in items.unwrap_or_default().into_iter().enumerate() {
                match ResourceType::from_name(t) {
                    Some(t) => out.push(t),
                    None => {
                        r.error(
                            item.mark,
                            &index(&k, i),
                            format!(
                                "`{t}` is not a FHIR R4 resource type (names are case-sensitive)"
                            ),
                        );
                        ok = false;
                    }
                }
            }
            if level == Some(Level::System) {
                r.error(
                    m.key_mark("types").unwrap_or(n.mark),
                    &k,
                    "a system-level operation has no types",
                );
                ok = false;
            }
            ok.then_some(Some(out.into_boxed_slice()))
        }
    };
    let methods = match m.get("methods") {
        None => Some(vec![http::Method::GET, http::Method::POST]),
        Some(n) => {
            let k = join(key, "methods");
            let items = r.strings(n, &k);
            let mut out = Vec::new();
            let mut ok = items.is_some();
            for (i, (s, item)) in items.unwrap_or_default().into_iter().enumerate() {
                match s {
                    "GET" | "POST" if !out.iter().any(|m: &http::Method| m == s) => {
                        out.push(if s == "GET" {
                            http::Method::GET
                        } else {
                            http::Method::POST
                        })
                    }
                    _ => {
                        r.error(
                            item.mark,
                            &index(&k, i),
                            format!(
                                "`{s}`: operations are invoked with GET or POST, each listed once"
                            ),
                        );
                        ok = false;
                    }
                }
            }
            if ok && out.is_empty() {
                r.error(n.mark, &k, "list at least one method");
                ok = false;
            }
            ok.then_some(out)
        }
    };
    let requirement = r
        .required(&m, key, "scopes")
        .and_then(|n| scopes(r, n, &join(key, "scopes")));
    if r.diags.0[errors_before..]
        .iter()
        .any(|d| d.severity == crate::config::Severity::Error)
    {
        return None;
    }
    let requirement = requirement?;
    Some(OperationRule {
        name: name?.into(),
        level: level?,
        types: types?,
        methods: methods?.into(),
        required: Arc::from(requirement.to_string()),
        scopes: requirement,
    })
}

/// Warns about grants that give everything (`patient/*.*`, `user/*.cruds`, `system/*.*`):
/// a client holding one is not limited by SMART at all.
fn lint_broad(r: &mut Reader<'_>, req: &ScopeRequirement, mark: Mark, key: &str) {
    for s in req.any_of().iter().chain(req.all_of()) {
        let Some(rs) = s.as_resource() else { continue };
        if rs.resource() == ScopeType::Any && rs.letters() == Letters::ALL && rs.query().is_none() {
            r.warning(
                mark,
                key,
                format!(
                    "`{s}` is a broad grant: it allows every interaction on every resource type"
                ),
            );
        }
    }
    // An alternative that implies another one is never the one a token needs.
    let alts = req.any_of();
    for (i, a) in alts.iter().enumerate() {
        let text = a.to_string();
        let holding_a = GrantedScopes::parse([text.as_str()]);
        if alts
            .iter()
            .enumerate()
            .any(|(j, b)| j != i && b != a && holding_a.satisfies(b))
        {
            r.warning(
                mark,
                &index(&join(key, "any_of"), i),
                format!("`{a}` is never needed: a token holding it already satisfies a weaker alternative in the same list"),
            );
        }
    }
}

/// Warnings about an explicit route when the policy has a `fhir:` section.
fn lint_fhir_route(r: &mut Reader<'_>, c: &Candidate, base: Option<&Pattern>) {
    let Some(base) = base else { return };
    let b = base.segments();
    let s = c.pattern.segments();
    let under = s.len() >= b.len()
        && s[..b.len()]
            .iter()
            .zip(b)
            .all(|(x, y)| matches!((x, y), (Segment::Literal(x), Segment::Literal(y)) if x == y));
    if under {
        r.warning(
            c.mark,
            &c.key,
            format!(
                "route `{}` is under the FHIR base: it is matched before the SMART engine and decided by its own scopes, bypassing the engine's rules (compartment, body and response checks) for `{}`",
                c.route.id,
                c.pattern.shape()
            ),
        );
    }
}

/// Most routes for which shadowing is checked (the check is quadratic).
const SHADOW_LINT_MAX_ROUTES: usize = 500;

/// Warns about a route that allows a method on paths where a more specific route wins the
/// match but does not allow that method: those requests are refused (the most specific
/// pattern decides, [`Policy::route`]), so the first route is never reached for them.
fn lint_shadowed(
    r: &mut Reader<'_>,
    trie: &Trie,
    routes: &[Route],
    marks: &[Mark],
    shapes: &[(Pattern, Vec<usize>, String)],
) {
    if shapes.len() > SHADOW_LINT_MAX_ROUTES {
        return;
    }
    for (i, (pattern, methods, key)) in shapes.iter().enumerate() {
        for (j, (other, other_methods, _)) in shapes.iter().enumerate() {
            if i == j || literal_carve_out(pattern, methods, other, other_methods) {
                continue;
            }
            let sample = sample_path(other);
            if !pattern_matches(pattern, &sample) {
                continue;
            }
            let Some(found) = trie.find(&sample) else {
                continue;
            };
            let lost: Vec<&str> = methods
                .iter()
                .filter(|&&m| found.route_for(m).is_none())
                .map(|&m| METHODS[m])
                .collect();
            if lost.is_empty() || found.route_for(methods[0]) == Some(i as u32) {
                continue;
            }
            r.warning(
                marks[i],
                key,
                format!(
                    "route `{}` is shadowed on `{}` paths: route `{}` matches them more specifically but does not allow {}, so those requests are refused",
                    routes[i].id,
                    other.shape(),
                    routes[j].id,
                    lost.join(", ")
                ),
            );
        }
    }
}

/// True when `other` only puts literals where `pattern` has parameters and allows none of
/// its methods: a deliberate carve-out (`/reports/export` is not the report `export`), not
/// a forgotten method.
fn literal_carve_out(
    pattern: &Pattern,
    methods: &[usize],
    other: &Pattern,
    other_methods: &[usize],
) -> bool {
    let (a, b) = (pattern.segments(), other.segments());
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || matches!((x, y), (Segment::Param(_), Segment::Literal(_))))
        && !methods.iter().any(|m| other_methods.contains(m))
}

/// A path the pattern matches: each parameter and tail replaced by one segment.
fn sample_path(p: &Pattern) -> String {
    let mut out = String::new();
    for seg in p.segments() {
        out.push('/');
        match seg {
            Segment::Literal(l) => out.push_str(l),
            Segment::Param(_) | Segment::Tail(_) => out.push_str("fhirwall-lint-sample"),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// True when `p` matches `path` on its own (literal, one-segment parameter, tail).
fn pattern_matches(p: &Pattern, path: &str) -> bool {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pat = p.segments();
    let mut i = 0;
    for (k, seg) in pat.iter().enumerate() {
        match seg {
            Segment::Tail(_) => return k == pat.len() - 1 && i < segs.len(),
            Segment::Literal(l) => {
                if segs.get(i) != Some(&&**l) {
                    return false;
                }
            }
            Segment::Param(_) => {
                if i >= segs.len() {
                    return false;
                }
            }
        }
        i += 1;
    }
    i == segs.len()
}
