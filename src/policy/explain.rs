//! `fhirwall explain`: one request decided exactly as the gateway decides it (explicit
//! route first, then the FHIR engine under the `fhir:` base, else default deny), printed
//! with its reasons and the checks the proxy would still run.

use std::fmt::Write as _;

use http::Method;

use super::smart::{Assessment, EntryPlan, FhirRequest, Verdict};
use super::{Decision, DenyReason, Policy};
use crate::auth::Principal;

/// The outcome of [`Policy::explain_request`].
#[derive(Debug, Clone)]
pub struct Explanation {
    /// True when the request would be forwarded (subject to the listed checks).
    pub allowed: bool,
    /// The human-readable report.
    pub text: String,
}

impl Policy {
    /// Explains the decision about `method url` (`url` is a path with an optional query, or
    /// an absolute URL whose path is used) with an optional request body, for `principal`
    /// (`None`: no token).
    pub fn explain(
        &self,
        method: &Method,
        url: &str,
        body: Option<&[u8]>,
        principal: Option<&Principal>,
    ) -> String {
        self.explain_request(method, url, body, principal).text
    }

    /// [`Policy::explain`], with whether the request is allowed.
    pub fn explain_request(
        &self,
        method: &Method,
        url: &str,
        body: Option<&[u8]>,
        principal: Option<&Principal>,
    ) -> Explanation {
        let target = match url.find("://") {
            Some(i) => {
                let rest = &url[i + 3..];
                rest.find('/').map_or("/", |j| &rest[j..])
            }
            None => url,
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mut out = String::new();
        let _ = writeln!(out, "request: {} {target}", method.as_str());
        match principal {
            Some(p) => {
                let scopes: Vec<String> = p.scopes.iter().map(|s| s.to_string()).collect();
                let _ = writeln!(out, "token scopes: {}", scopes.join(" "));
                if p.scopes.invalid_count() > 0 {
                    let _ = writeln!(
                        out,
                        "  ({} invalid scope(s) ignored, never widened)",
                        p.scopes.invalid_count()
                    );
                }
                let _ = writeln!(
                    out,
                    "patient context: {}",
                    p.patient.as_deref().unwrap_or("(none)")
                );
            }
            None => {
                let _ = writeln!(out, "token: (none)");
            }
        }
        let routed = self.route(method, path);
        let decision = match routed {
            Ok(m) => {
                let _ = writeln!(out, "decided by: explicit route `{}`", m.route_id());
                self.authorize(&m, path, query, principal)
            }
            Err(d) if d.reason != DenyReason::NoRoute => {
                let _ = writeln!(out, "decided by: path safety (before any route)");
                Decision::Deny(d)
            }
            Err(d) => {
                let fhir = self.fhir().filter(|f| {
                    let b = f.base_path();
                    path.strip_prefix(b)
                        .is_some_and(|r| r.is_empty() || r.starts_with('/'))
                });
                match fhir {
                    None => {
                        let _ = writeln!(out, "decided by: default deny (no route)");
                        Decision::Deny(d)
                    }
                    Some(f) => {
                        let _ = writeln!(out, "decided by: FHIR engine (base {})", f.base_path());
                        let content_type = body.map(|b| guess_content_type(method, b));
                        let mut req = FhirRequest {
                            method,
                            path,
                            query,
                            if_none_exist: None,
                            content_type,
                            body: None,
                        };
                        let mut assessed = f.assess(&req, principal);
                        if let (Assessment::NeedsBody { max }, Some(b)) = (&assessed, body) {
                            if b.len() > *max {
                                let _ = writeln!(
                                    out,
                                    "decision: DENY (413: the body is larger than max_body_bytes {max})"
                                );
                                return Explanation {
                                    allowed: false,
                                    text: out,
                                };
                            }
                            req.body = Some(b);
                            assessed = f.assess(&req, principal);
                        }
                        match assessed {
                            Assessment::NeedsBody { max } => {
                                let _ = writeln!(
                                    out,
                                    "decision: UNDECIDED: the engine needs the request body (at most {max} bytes); pass it with --body FILE"
                                );
                                return Explanation {
                                    allowed: false,
                                    text: out,
                                };
                            }
                            Assessment::Verdict(v) => {
                                let allowed = write_verdict(&mut out, &v);
                                return Explanation { allowed, text: out };
                            }
                        }
                    }
                }
            }
        };
        let allowed = write_decision(&mut out, &decision);
        Explanation { allowed, text: out }
    }
}

fn guess_content_type(method: &Method, body: &[u8]) -> &'static str {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') if method == Method::PATCH => "application/json-patch+json",
        Some(b'{') | Some(b'[') => "application/fhir+json",
        Some(b'<') => "application/fhir+xml",
        _ => "application/x-www-form-urlencoded",
    }
}

fn write_decision(out: &mut String, d: &Decision) -> bool {
    match d {
        Decision::Allow(p) => {
            let _ = writeln!(out, "decision: ALLOW (route {})", p.route_id());
            if p.is_public() {
                let _ = writeln!(out, "  public: no token needed");
            } else {
                let _ = writeln!(out, "  required: {}", p.required());
                let _ = writeln!(out, "  granted by: {}", p.granted_by());
            }
            true
        }
        Decision::Deny(d) => {
            let _ = writeln!(
                out,
                "decision: DENY ({}{})",
                d.reason.code(),
                d.route_id
                    .as_deref()
                    .map(|r| format!(", route {r}"))
                    .unwrap_or_default()
            );
            if let DenyReason::InsufficientScope { needed } = &d.reason {
                let _ = writeln!(out, "  needed: {needed}");
            }
            if let Some(r) = d.required.as_deref().filter(|r| !r.is_empty()) {
                let _ = writeln!(out, "  required: {r}");
            }
            let _ = writeln!(out, "  detail: {}", d.detail);
            false
        }
    }
}

fn write_verdict(out: &mut String, v: &Verdict) -> bool {
    let allowed = write_decision(out, &v.decision);
    if !v.trace.steps.is_empty() {
        let _ = writeln!(out, "reasons:");
        for s in &v.trace.steps {
            let _ = writeln!(out, "  - [{}] {}", s.rule, s.finding);
        }
    }
    if !allowed {
        return false;
    }
    let c = &v.checks;
    let mut lines = Vec::new();
    for s in &c.before {
        lines.push(match s.entry {
            Some(i) => format!(
                "before forwarding entry {i}: GET {} and check the stored version",
                s.path
            ),
            None => format!(
                "before forwarding: GET {} and check the stored version",
                s.path
            ),
        });
    }
    if c.response.is_some() {
        lines.push(
            "the response body is held and checked (patient compartment and/or granular scope); a violation becomes 403".to_owned(),
        );
    }
    if let Some(q) = &c.add_query {
        lines.push(format!("the forwarded query gets `&{q}` appended"));
    }
    if let Some(plan) = &c.batch {
        for (i, e) in plan.entries.iter().enumerate() {
            lines.push(match e {
                EntryPlan::Forward(None) => format!("batch entry {i}: forwarded"),
                EntryPlan::Forward(Some(_)) => {
                    format!("batch entry {i}: forwarded, its response entry checked")
                }
                EntryPlan::Refuse(d) => format!(
                    "batch entry {i}: answered here ({}): {}",
                    d.reason.code(),
                    d.detail
                ),
            });
        }
    }
    if c.remember_pages {
        lines.push("next-page links in the response are remembered for this search".to_owned());
    }
    if !lines.is_empty() {
        let _ = writeln!(out, "checks:");
        for l in lines {
            let _ = writeln!(out, "  - {l}");
        }
    }
    true
}
