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
//! Each route is checked on its own (a bad route does not hide the problems of the next),
//! then inserted into the trie, where same-shape/same-method conflicts are found. Lint
//! warnings come last. The format is documented in `docs/reference.md`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::patient::PatientBinding;
use super::route::{Pattern, Segment, Trie, METHODS};
use super::scope::{Context, Scope, ScopeRequirement, ScopeType};
use super::{Policy, Route};
use crate::config::yaml::{self, index, join, Mark, Node, Reader};
use crate::config::Diagnostics;

/// The only policy format version this build reads.
const FORMAT_VERSION: u64 = 1;

const TOP_KEYS: &[&str] = &[
    "version",
    "base_path",
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

    let mut candidates = Vec::new();
    if let Some(routes) = r.required(&top, "", "routes") {
        if let Some(items) = r.seq(routes, "routes") {
            if items.is_empty() {
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
    for c in candidates {
        let idx = routes.len() as u32;
        match trie.insert(&c.pattern, &c.methods, idx) {
            Ok(()) => {
                lint(&mut r, &c);
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
    let version = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(Policy {
        version,
        routes: routes.into_boxed_slice(),
        trie,
        warnings: r.diags,
        base_path: base_text.into(),
        rate_limits,
        fhir: None,
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
