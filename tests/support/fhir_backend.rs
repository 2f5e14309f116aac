//! `FhirBackend`: a small FHIR R4 server on loopback for the SMART conformance suite.
//!
//! It holds a few patients (`123`, `456`, `789`) and their clinical data, with ids that do
//! not reveal the patient (`Observation/obs-a` belongs to `Patient/456`), so that checks
//! fhirwall can only make on the response (SMART-SEMANTICS §3.3: "decided on the
//! **response**") are tested against a server that really returns other patients' data.
//! Every resource carries `secret-<id>` in its narrative: a body that reaches a client it
//! should not is easy to spot.
//!
//! It answers the FHIR R4 REST interactions (http.html): read, vread, instance/type/system
//! history, search by GET and `POST _search` (honouring `patient`, `subject` with or without
//! `:Patient`, `_id`, `category`, `_type`, `_count`), compartment search (`Patient/123/Observation`,
//! `Patient/123/*`), create/update/patch/delete (echo), conditional forms, `batch` and
//! `transaction` Bundles (responses in entry order), `$everything`, `$export`, `$lastn` and any
//! other operation (an informational OperationOutcome). Searchsets with `_count` carry a
//! `next` link at the base in HAPI's style (`[base]?_getpages=<token>&_getpagesoffset=N`),
//! built from the `Host` the request came with. Every request is recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use parking_lot::Mutex;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use super::backend::{RecordedRequest, FHIR_JSON};
use super::server::{handler, HttpServer};

/// The FHIR base path the backend serves (same as the gateway's `base_path`).
pub const FHIR_BASE: &str = "/fhir";

/// The observation-category code system (FHIR R4 `observation-category`).
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// The condition-category code system (FHIR R4 `condition-category`).
pub const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";

/// The FHIR R4 backend on `http://127.0.0.1:PORT`, serving under [`FHIR_BASE`].
pub struct FhirBackend {
    server: HttpServer,
    state: Arc<State>,
}

struct State {
    resources: Vec<Value>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// `_getpages` token -> the full result list of the search that produced it.
    pages: Mutex<HashMap<String, Vec<Value>>>,
    counter: AtomicU64,
}

/// One FHIR answer: status, extra headers, optional JSON body.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl FhirBackend {
    /// Starts the backend with the fixed data set ([`FhirBackend::resources`]).
    pub fn start() -> Self {
        let state = Arc::new(State {
            resources: data_set(),
            requests: Mutex::new(Vec::new()),
            pages: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(1),
        });
        let served = state.clone();
        let server = HttpServer::start(handler(move |req| {
            let state = served.clone();
            async move { Ok(state.answer(req)) }
        }));
        Self { server, state }
    }

    /// `http://127.0.0.1:PORT` (no path): the gateway's `upstream.url`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Every stored resource.
    pub fn resources(&self) -> &[Value] {
        &self.state.resources
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().clone()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().len()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state.requests.lock().clear();
    }
}

// === impl State ===

impl State {
    fn answer(&self, req: Request<Bytes>) -> http::Response<http_body_util::Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| parts.uri.to_string());
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1")
            .to_owned();
        let recorded = RecordedRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            target,
            version: parts.version,
            headers: parts.headers.clone(),
            body: body.clone(),
        };
        self.requests.lock().push(recorded);

        let base_url = format!("http://{host}{FHIR_BASE}");
        let path = parts.uri.path();
        let answer = match path.strip_prefix(FHIR_BASE) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let if_none_exist = parts
                    .headers
                    .get("if-none-exist")
                    .and_then(|v| v.to_str().ok());
                let mut query = parts.uri.query().unwrap_or("").to_owned();
                // POST _search: the form body's parameters combine with the URL's (R4 search.html).
                if parts.method == Method::POST
                    && rest.ends_with("/_search")
                    && content_type.starts_with("application/x-www-form-urlencoded")
                {
                    let form = String::from_utf8_lossy(&body);
                    if !form.is_empty() {
                        if !query.is_empty() {
                            query.push('&');
                        }
                        query.push_str(&form);
                    }
                }
                self.dispatch(
                    &parts.method,
                    rest.trim_start_matches('/'),
                    &query,
                    if_none_exist,
                    &body,
                    &base_url,
                )
            }
            _ => not_found("not under the FHIR base"),
        };
        let mut builder = http::Response::builder().status(answer.status);
        for (name, value) in &answer.headers {
            builder = builder.header(*name, value.as_str());
        }
        let bytes = match &answer.body {
            Some(value) => {
                builder = builder.header(http::header::CONTENT_TYPE, FHIR_JSON);
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        builder
            .body(http_body_util::Full::new(bytes))
            .expect("valid response")
    }

    /// One interaction; `rest` is the path below the base without a leading `/`.
    fn dispatch(
        &self,
        method: &Method,
        rest: &str,
        query: &str,
        if_none_exist: Option<&str>,
        body: &[u8],
        base_url: &str,
    ) -> Answer {
        let segments: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let params = parse_query(query);
        match (method.as_str(), segments.as_slice()) {
            // --- base level
            ("GET" | "HEAD", []) if params.iter().any(|(k, _)| k == "_getpages") => {
                self.page(&params, base_url)
            }
            ("GET" | "HEAD", []) => {
                let types = param(&params, "_type")
                    .map(|t| t.split(',').map(str::to_owned).collect::<Vec<_>>());
                let found = self.search(types.as_deref(), &params);
                self.searchset(found, &params, base_url, "")
            }
            ("POST", ["_search"]) => {
                let types = param(&params, "_type")
                    .map(|t| t.split(',').map(str::to_owned).collect::<Vec<_>>());
                let found = self.search(types.as_deref(), &params);
                self.searchset(found, &params, base_url, "")
            }
            ("POST", []) => self.bundle(body, base_url),
            ("GET" | "HEAD", ["metadata"]) => ok(capability_statement()),
            ("GET" | "HEAD", [".well-known", "smart-configuration"]) => ok(json!({
                "authorization_endpoint": "https://idp.example.org/authorize",
                "token_endpoint": "https://idp.example.org/token",
                "capabilities": ["launch-standalone", "permission-v2", "permission-v1"],
            })),
            // A non-FHIR endpoint under the base, for an explicit policy route.
            ("GET", ["legacy", "report"]) => ok(json!({
                "resourceType": "Basic",
                "id": "legacy-report",
                "code": { "text": "legacy report" },
            })),
            ("GET" | "HEAD", ["_history"]) => ok(history(self.resources.clone())),
            (_, [op]) if op.starts_with('$') => self.operation(op, None, None, &params, base_url),
            // --- type level
            ("GET" | "HEAD", [t]) => {
                let found = self.search(Some(&[(*t).to_owned()]), &params);
                let found = self.with_includes(found, &params);
                self.searchset(found, &params, base_url, t)
            }
            ("POST", [t, "_search"]) => {
                let found = self.search(Some(&[(*t).to_owned()]), &params);
                let found = self.with_includes(found, &params);
                self.searchset(found, &params, base_url, t)
            }
            ("GET" | "HEAD", [t, "_history"]) => ok(history(self.of_type(t))),
            ("POST", [t]) => {
                if let Some(criteria) = if_none_exist {
                    let found = self.search(Some(&[(*t).to_owned()]), &parse_query(criteria));
                    if let Some(existing) = found.first() {
                        return ok(existing.clone());
                    }
                }
                let mut resource = parse_body(body);
                let id = format!("new-{}", self.counter.fetch_add(1, Ordering::Relaxed));
                resource["id"] = json!(id);
                resource["meta"] = json!({ "versionId": "1" });
                Answer {
                    status: 201,
                    headers: vec![("location", format!("{base_url}/{t}/{id}/_history/1"))],
                    body: Some(resource),
                }
            }
            ("PUT" | "PATCH", [t]) => {
                // Conditional update/patch: the criteria's single match, or a create.
                let found = self.search(Some(&[(*t).to_owned()]), &params);
                let mut resource = if method == Method::PATCH {
                    found
                        .first()
                        .cloned()
                        .unwrap_or_else(|| json!({ "resourceType": t }))
                } else {
                    parse_body(body)
                };
                if resource.get("id").is_none() {
                    resource["id"] = json!("cond-1");
                }
                ok(resource)
            }
            ("DELETE", [_t]) => ok(outcome("information", "deleted the matching resources")),
            (_, [t, op]) if op.starts_with('$') => {
                self.operation(op, Some(t), None, &params, base_url)
            }
            // --- instance level
            ("GET" | "HEAD", [t, id]) => match self.find(t, id) {
                Some(r) => ok(r.clone()),
                None => not_found(&format!("{t}/{id} is not known")),
            },
            ("PUT", [t, id]) => {
                let mut resource = parse_body(body);
                resource["id"] = json!(id);
                let status = if self.find(t, id).is_some() { 200 } else { 201 };
                Answer {
                    status,
                    headers: Vec::new(),
                    body: Some(resource),
                }
            }
            ("PATCH", [t, id]) => match self.find(t, id) {
                Some(r) => ok(r.clone()),
                None => not_found(&format!("{t}/{id} is not known")),
            },
            ("DELETE", [t, id]) => match self.find(t, id) {
                Some(_) => ok(outcome("information", "deleted")),
                None => not_found(&format!("{t}/{id} is not known")),
            },
            ("GET" | "HEAD", [t, id, "_history"]) => match self.find(t, id) {
                Some(r) => ok(history(vec![r.clone()])),
                None => not_found(&format!("{t}/{id} is not known")),
            },
            ("GET" | "HEAD", [t, id, "_history", _vid]) => match self.find(t, id) {
                Some(r) => ok(r.clone()),
                None => not_found(&format!("{t}/{id} is not known")),
            },
            (_, [t, id, op]) if op.starts_with('$') => {
                self.operation(op, Some(t), Some(id), &params, base_url)
            }
            // --- compartment search (R4 compartmentdefinition.html)
            ("GET" | "HEAD", ["Patient", id, t]) => {
                let types = if *t == "*" {
                    None
                } else {
                    Some(vec![(*t).to_owned()])
                };
                let found: Vec<Value> = self
                    .search(types.as_deref(), &params)
                    .into_iter()
                    .filter(|r| patient_of(r).as_deref() == Some(*id))
                    .collect();
                self.searchset(found, &params, base_url, &format!("Patient/{id}/{t}"))
            }
            _ => Answer {
                status: 400,
                headers: Vec::new(),
                body: Some(outcome("error", "the test backend does not serve this")),
            },
        }
    }

    fn operation(
        &self,
        op: &str,
        t: Option<&str>,
        id: Option<&str>,
        params: &[(String, String)],
        base_url: &str,
    ) -> Answer {
        match (op, t, id) {
            ("$everything", Some("Patient"), Some(id)) => {
                let found: Vec<Value> = self
                    .resources
                    .iter()
                    .filter(|r| {
                        patient_of(r).as_deref() == Some(id)
                            || (r["resourceType"] == "Patient" && r["id"] == id)
                    })
                    .cloned()
                    .collect();
                self.searchset(found, params, base_url, "")
            }
            ("$everything", Some("Patient"), None) => {
                self.searchset(self.resources.clone(), params, base_url, "")
            }
            ("$export", _, _) => Answer {
                status: 202,
                headers: vec![(
                    "content-location",
                    format!("{base_url}/$export-poll-status?job=1"),
                )],
                body: None,
            },
            ("$lastn", Some(t), None) => {
                let found = self.search(Some(&[t.to_owned()]), params);
                self.searchset(found, params, base_url, "")
            }
            _ => ok(outcome("information", "operation completed")),
        }
    }

    /// A `batch` or `transaction` Bundle: every entry run in order (R4 http.html#transaction).
    fn bundle(&self, body: &[u8], base_url: &str) -> Answer {
        let bundle = parse_body(body);
        let kind = match bundle["type"].as_str() {
            Some("batch") => "batch-response",
            Some("transaction") => "transaction-response",
            _ => {
                return Answer {
                    status: 400,
                    headers: Vec::new(),
                    body: Some(outcome("error", "only batch and transaction Bundles")),
                }
            }
        };
        let mut entries = Vec::new();
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            let request = &entry["request"];
            let method = request["method"]
                .as_str()
                .and_then(|m| m.parse::<Method>().ok())
                .unwrap_or(Method::GET);
            let url = request["url"].as_str().unwrap_or("");
            let (path, query) = url.split_once('?').unwrap_or((url, ""));
            let entry_body = entry
                .get("resource")
                .map(|r| r.to_string().into_bytes())
                .unwrap_or_default();
            let answer = self.dispatch(
                &method,
                path.trim_start_matches('/'),
                query,
                request["ifNoneExist"].as_str(),
                &entry_body,
                base_url,
            );
            let mut out = json!({ "response": { "status": status_line(answer.status) } });
            if let Some(resource) = answer.body {
                if answer.status < 300 {
                    out["resource"] = resource;
                } else {
                    out["response"]["outcome"] = resource;
                }
            }
            entries.push(out);
        }
        ok(json!({
            "resourceType": "Bundle",
            "id": format!("resp-{}", self.counter.fetch_add(1, Ordering::Relaxed)),
            "type": kind,
            "entry": entries,
        }))
    }

    /// A `_getpages` continuation (HAPI style).
    fn page(&self, params: &[(String, String)], base_url: &str) -> Answer {
        let token = param(params, "_getpages").unwrap_or_default();
        let Some(all) = self.pages.lock().get(token).cloned() else {
            return Answer {
                status: 410,
                headers: Vec::new(),
                body: Some(outcome("error", "search results expired")),
            };
        };
        let offset: usize = param(params, "_getpagesoffset")
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        let count: usize = param(params, "_count")
            .and_then(|c| c.parse().ok())
            .unwrap_or(all.len().max(1));
        let page: Vec<Value> = all.iter().skip(offset).take(count).cloned().collect();
        let mut links = vec![json!({
            "relation": "self",
            "url": format!("{base_url}?_getpages={token}&_getpagesoffset={offset}&_count={count}"),
        })];
        if offset + count < all.len() {
            links.push(json!({
                "relation": "next",
                "url": format!(
                    "{base_url}?_getpages={token}&_getpagesoffset={}&_count={count}",
                    offset + count
                ),
            }));
        }
        ok(searchset_bundle(page, all.len(), links, base_url))
    }

    /// A searchset of `found`, paged when `_count` is given; `self_path` below the base.
    fn searchset(
        &self,
        found: Vec<Value>,
        params: &[(String, String)],
        base_url: &str,
        self_path: &str,
    ) -> Answer {
        let total = found.len();
        let count: Option<usize> = param(params, "_count").and_then(|c| c.parse().ok());
        let self_query = params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let mut links = vec![json!({
            "relation": "self",
            "url": format!("{base_url}/{self_path}?{self_query}"),
        })];
        let page = match count {
            Some(count) if count < total => {
                let token = format!("pg{}", self.counter.fetch_add(1, Ordering::Relaxed));
                self.pages.lock().insert(token.clone(), found.clone());
                links.push(json!({
                    "relation": "next",
                    "url": format!("{base_url}?_getpages={token}&_getpagesoffset={count}&_count={count}&_bundletype=searchset"),
                }));
                found.into_iter().take(count).collect()
            }
            _ => found,
        };
        ok(searchset_bundle(page, total, links, base_url))
    }

    /// Adds the resources `_include=Src:param[:Target]` reaches (R4 search.html#include), for
    /// the reference elements this data set uses; a reference to another patient's resource
    /// is followed like any other, as a real server does.
    fn with_includes(&self, mut found: Vec<Value>, params: &[(String, String)]) -> Vec<Value> {
        let mut included = Vec::new();
        for (_, value) in params.iter().filter(|(k, _)| k == "_include") {
            let mut parts = value.split(':');
            let (Some(source), Some(param)) = (parts.next(), parts.next()) else {
                continue;
            };
            let target = parts.next();
            let element = match param {
                "subject" | "patient" => "subject",
                "performer" => "performer",
                "has-member" => "hasMember",
                _ => continue,
            };
            for r in found.iter().filter(|r| r["resourceType"] == source) {
                let refs: Vec<&str> = match &r[element] {
                    Value::Array(items) => items
                        .iter()
                        .filter_map(|i| i["reference"].as_str())
                        .collect(),
                    one => one["reference"].as_str().into_iter().collect(),
                };
                for reference in refs {
                    let Some((t, id)) = reference.split_once('/') else {
                        continue;
                    };
                    if target.is_some_and(|target| target != t) {
                        continue;
                    }
                    if let Some(hit) = self.find(t, id) {
                        included.push(hit.clone());
                    }
                }
            }
        }
        for r in included {
            if !found.contains(&r) {
                found.push(r);
            }
        }
        found
    }

    fn of_type(&self, t: &str) -> Vec<Value> {
        self.resources
            .iter()
            .filter(|r| r["resourceType"] == t)
            .cloned()
            .collect()
    }

    fn find(&self, t: &str, id: &str) -> Option<&Value> {
        self.resources
            .iter()
            .find(|r| r["resourceType"] == t && r["id"] == id)
    }

    /// Resources of `types` (all when `None`) matching the supported search parameters.
    fn search(&self, types: Option<&[String]>, params: &[(String, String)]) -> Vec<Value> {
        self.resources
            .iter()
            .filter(|r| {
                let t = r["resourceType"].as_str().unwrap_or("");
                types.is_none_or(|types| types.iter().any(|x| x == t || x == "*"))
            })
            .filter(|r| params.iter().all(|(k, v)| matches(r, k, v)))
            .cloned()
            .collect()
    }
}

/// Whether resource `r` matches one search parameter occurrence. Unknown parameters match
/// everything (a real server would narrow further; this one only needs the ones below).
fn matches(r: &Value, key: &str, value: &str) -> bool {
    let any = |f: &dyn Fn(&str) -> bool| value.split(',').any(f);
    let patient = patient_of(r);
    match key {
        "patient" | "subject:Patient" | "patient:Patient" => any(&|v| {
            let id = v.strip_prefix("Patient/").unwrap_or(v);
            patient.as_deref() == Some(id)
        }),
        "subject" => any(&|v| {
            r["subject"]["reference"] == v
                || r["subject"]["reference"]
                    .as_str()
                    .and_then(|s| s.split_once('/'))
                    .map(|(_, id)| id)
                    == Some(v)
        }),
        "_id" => any(&|v| r["id"] == v),
        "identifier" => any(&|v| {
            r["identifier"].as_array().into_iter().flatten().any(|i| {
                i["value"] == v
                    || format!(
                        "{}|{}",
                        i["system"].as_str().unwrap_or(""),
                        i["value"].as_str().unwrap_or("")
                    ) == v
            })
        }),
        "category" => any(&|v| {
            let (system, code) = match v.split_once('|') {
                Some((s, c)) => (Some(s), c),
                None => (None, v),
            };
            r["category"].as_array().into_iter().flatten().any(|c| {
                c["coding"].as_array().into_iter().flatten().any(|coding| {
                    coding["code"] == code && system.is_none_or(|s| coding["system"] == s)
                })
            })
        }),
        _ => true,
    }
}

/// The id of the patient a resource belongs to (`subject` or `patient` reference).
pub fn patient_of(r: &Value) -> Option<String> {
    ["subject", "patient", "beneficiary"]
        .iter()
        .filter_map(|k| r[*k]["reference"].as_str())
        .find_map(|s| s.strip_prefix("Patient/"))
        .map(str::to_owned)
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let decode = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn parse_body(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| json!({}))
}

fn ok(body: Value) -> Answer {
    Answer {
        status: 200,
        headers: Vec::new(),
        body: Some(body),
    }
}

fn not_found(text: &str) -> Answer {
    Answer {
        status: 404,
        headers: Vec::new(),
        body: Some(outcome("error", text)),
    }
}

fn status_line(status: u16) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{status} {reason}")
}

fn outcome(severity: &str, text: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": "informational", "diagnostics": text }],
    })
}

fn history(resources: Vec<Value>) -> Value {
    let total = resources.len();
    json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": total,
        "entry": resources.into_iter().map(|r| json!({
            "fullUrl": format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")),
            "resource": r,
            "request": { "method": "PUT", "url": "" },
            "response": { "status": "200 OK" },
        })).collect::<Vec<_>>(),
    })
}

fn searchset_bundle(page: Vec<Value>, total: usize, links: Vec<Value>, base_url: &str) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": page.into_iter().map(|r| json!({
            "fullUrl": format!("{base_url}/{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")),
            "resource": r,
            "search": { "mode": "match" },
        })).collect::<Vec<_>>(),
    })
}

fn capability_statement() -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{ "mode": "server" }],
    })
}

/// `resource` with `hasMember` references.
fn with_members(mut resource: Value, members: &[&str]) -> Value {
    resource["hasMember"] = members.iter().map(|m| json!({ "reference": m })).collect();
    resource
}

/// The fixed data set: patients 123, 456 (and 789, linked from 123), their Observations
/// (laboratory and vital-signs), Conditions and an Encounter, a Group whose id is `123`,
/// and resources outside the patient compartment.
fn data_set() -> Vec<Value> {
    let narrative = |id: &str| json!({ "status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">secret-{id}</div>") });
    let obs = |id: &str, subject: &str, category: &str| {
        json!({
            "resourceType": "Observation",
            "id": id,
            "meta": { "versionId": "1" },
            "text": narrative(id),
            "status": "final",
            "category": [{ "coding": [{ "system": OBSERVATION_CATEGORY, "code": category }] }],
            "code": { "coding": [{ "system": "http://loinc.org", "code": "1234-5" }] },
            "subject": { "reference": subject },
        })
    };
    let condition = |id: &str, patient: &str, category: &str| {
        json!({
            "resourceType": "Condition",
            "id": id,
            "meta": { "versionId": "1" },
            "text": narrative(id),
            "category": [{ "coding": [{ "system": CONDITION_CATEGORY, "code": category }] }],
            "subject": { "reference": format!("Patient/{patient}") },
        })
    };
    let patient = |id: &str, name: &str| {
        json!({
            "resourceType": "Patient",
            "id": id,
            "meta": { "versionId": "1" },
            "text": narrative(id),
            "name": [{ "family": name }],
        })
    };
    let mut p123 = patient("123", "Alpha");
    p123["link"] = json!([{ "other": { "reference": "Patient/789" }, "type": "seealso" }]);
    vec![
        p123,
        patient("456", "Bravo"),
        patient("789", "Charlie"),
        // obs-1 groups obs-2 (same patient); obs-2 groups obs-a (Patient/456's): an
        // `_include=Observation:has-member` reaches another patient's data.
        with_members(
            obs("obs-1", "Patient/123", "laboratory"),
            &["Observation/obs-2"],
        ),
        with_members(
            obs("obs-2", "Patient/123", "vital-signs"),
            &["Observation/obs-a"],
        ),
        obs("obs-a", "Patient/456", "laboratory"),
        obs("obs-b", "Patient/456", "vital-signs"),
        obs("obs-g", "Group/123", "laboratory"),
        condition("cond-1", "123", "problem-list-item"),
        condition("cond-x", "456", "problem-list-item"),
        json!({
            "resourceType": "Encounter", "id": "enc-1", "meta": { "versionId": "1" },
            "text": narrative("enc-1"), "status": "finished",
            "class": { "code": "AMB" }, "subject": { "reference": "Patient/123" },
        }),
        json!({
            "resourceType": "Group", "id": "123", "meta": { "versionId": "1" },
            "text": narrative("group-123"), "type": "person", "actual": true,
            "member": [{ "entity": { "reference": "Patient/456" } }],
        }),
        json!({
            "resourceType": "Practitioner", "id": "pr-1", "meta": { "versionId": "1" },
            "text": narrative("pr-1"), "name": [{ "family": "Delta" }],
        }),
        json!({
            "resourceType": "Organization", "id": "org-1", "meta": { "versionId": "1" },
            "text": narrative("org-1"), "name": "Echo Clinic",
        }),
        json!({
            "resourceType": "Medication", "id": "med-1", "meta": { "versionId": "1" },
            "text": narrative("med-1"), "code": { "text": "aspirin" },
        }),
    ]
}
