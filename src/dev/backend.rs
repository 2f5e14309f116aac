//! The sample FHIR R4 server of `fhirwall dev`: synthetic records in memory, served as
//! `application/fhir+json` under `/fhir`.
//!
//! Interactions (FHIR R4 http.html): `GET metadata` (CapabilityStatement with the SMART
//! security extension), `GET .well-known/smart-configuration` (SMART App Launch 2.x
//! discovery pointing at the dev issuer), `read`, `search-type` and `create` on Patient,
//! Observation, Condition, MedicationRequest, AllergyIntolerance and Encounter. Search
//! understands `_id`, `patient` (bare id or `Patient/<id>`), `subject` (and
//! `subject:Patient`), and the token parameters `category`, `code` and `type` where R4
//! defines them; comma-separated values are alternatives; other parameters are ignored (or
//! refused with `Prefer: handling=strict`). Failures answer with an OperationOutcome.
//!
//! Paging (R4 search.html#count, http.html#paging): a search with `_count=N` answers the
//! first N matches with a `next` link in HAPI's form, `[base]?_getpages=<id>&_getpagesoffset=
//! <n>&_count=<N>`, over a snapshot of the result kept for [`PAGE_SETS`] searches. Batches
//! and transactions (R4 http.html#transaction): `POST [base]` with a `batch` or
//! `transaction` Bundle of read, search and create entries, answered in entry order; a
//! transaction with a failing entry fails whole and its creates are undone.
//!
//! DEV ONLY: every response carries headers that echo what reached the backend, so demos and
//! tests can see what the gateway forwarded:
//! `x-backend-saw-authorization: present|absent`, and, when the request carried them,
//! `x-backend-request-id` (its `X-Request-Id`), `x-backend-forwarded-for` and
//! `x-backend-forwarded-proto`. A real FHIR server must never reflect such headers.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, ETAG, LOCATION};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use parking_lot::RwLock;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use super::httputil::{self, Body};
use super::{data, now_instant, random_uuid};

/// Media type of every FHIR response (FHIR R4 http.html#mime-type).
pub const FHIR_JSON: &str = "application/fhir+json";

/// Largest request body `create` accepts.
const MAX_BODY: usize = 1024 * 1024;

/// Most resources `create` will hold, so a runaway client cannot exhaust memory.
const MAX_CREATED: usize = 10_000;

/// Search results kept for paging (oldest dropped first).
pub const PAGE_SETS: usize = 1000;

/// Largest `_count` honoured.
const MAX_COUNT: usize = 1000;

/// Debug header: whether an `Authorization` header reached the backend (dev only).
pub const SAW_AUTHORIZATION: HeaderName = HeaderName::from_static("x-backend-saw-authorization");
/// Debug header: the `X-Request-Id` the backend received (dev only).
pub const SAW_REQUEST_ID: HeaderName = HeaderName::from_static("x-backend-request-id");
/// Debug header: the `X-Forwarded-For` the backend received (dev only).
pub const SAW_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-backend-forwarded-for");
/// Debug header: the `X-Forwarded-Proto` the backend received (dev only).
pub const SAW_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-backend-forwarded-proto");

/// Where the backend is reached and who issues its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// The FHIR base URL clients use (in `fhirwall dev`, the gateway's, e.g.
    /// `http://127.0.0.1:8080/fhir`); used in `fullUrl`, `Location` and bundle links. No
    /// trailing slash.
    pub base_url: String,
    /// The token issuer advertised in `metadata` and `smart-configuration`
    /// (e.g. `http://127.0.0.1:8082`). No trailing slash.
    pub issuer_url: String,
}

/// The resource types the backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ResourceType {
    Patient,
    Observation,
    Condition,
    MedicationRequest,
    AllergyIntolerance,
    Encounter,
}

/// One supported search parameter: `(resource type, name, FHIR type, element, definition)`.
/// `element` is the JSON element the parameter reads (`""` for `_id`).
type SearchParamDef = (
    ResourceType,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// The search parameters `search-type` understands, with their R4 definitions.
const SEARCH_PARAMS: &[SearchParamDef] = {
    use ResourceType::*;
    &[
        (
            Patient,
            "_id",
            "token",
            "",
            "http://hl7.org/fhir/SearchParameter/Resource-id",
        ),
        (
            Observation,
            "_id",
            "token",
            "",
            "http://hl7.org/fhir/SearchParameter/Resource-id",
        ),
        (
            Observation,
            "patient",
            "reference",
            "subject",
            "http://hl7.org/fhir/SearchParameter/clinical-patient",
        ),
        (
            Observation,
            "subject",
            "reference",
            "subject",
            "http://hl7.org/fhir/SearchParameter/Observation-subject",
        ),
        (
            Observation,
            "category",
            "token",
            "category",
            "http://hl7.org/fhir/SearchParameter/Observation-category",
        ),
        (
            Observation,
            "code",
            "token",
            "code",
            "http://hl7.org/fhir/SearchParameter/clinical-code",
        ),
        (
            Condition,
            "_id",
            "token",
            "",
            "http://hl7.org/fhir/SearchParameter/Resource-id",
        ),
        (
            Condition,
            "patient",
            "reference",
            "subject",
            "http://hl7.org/fhir/SearchParameter/clinical-patient",
        ),
        (
            Condition,
            "subject",
            "reference",
            "subject",
            "http://hl7.org/fhir/SearchParameter/Condition-subject",
        ),
        (
            Condition,
            "category",
            "token",
            "category",
            "http://hl7.org/fhir/SearchParameter/Condition-category",
        ),
        (
            Condition,
            "code",
            "token",
            "code",
            "http://hl7.org/fhir/SearchParameter/clinical-code",
        ),
        (
            MedicationRequest,
            "_id",
            "token",
            "",
            "http://hl7.org/fhir/SearchParameter/Resource-id",
        ),
        (
            MedicationRequest,
            "patient",
            "reference",
            "subject",
            "http://hl7.org/fhir/SearchParameter/medications-patient",
        ),
        (
            MedicationRequest,
            "subject",
            "reference",
            "subject",
            "http://hl7.org/fhir/SearchParameter/MedicationRequest-subject",
        ),
        (
            MedicationRequest,
            "code",
            "token",
            "medicationCodeableConcept",
            "http://hl7.org/fhir/SearchParameter/medications-code",
        ),
        (
            AllergyIntolerance,
            "_id",
            "token",
            "",
            "http://hl7.org/fhir/SearchParameter/Resource-id",
        ),
        (
            AllergyIntolerance,
            "patient",
            "reference",
            "patient",
            "http://hl7.org/fhir/SearchParameter/clinical-patient",
        ),
        (
            AllergyIntolerance,
            "code",
            "token",
            "code",
            "http://hl7.org/fhir/SearchParameter/clinical-code",
        ),
        (
            Encounter,
            "_id",
            "token",
            "",
            "http://hl7.org/fhir/SearchParameter/Resource-id",
        ),
        (
            Encounter,
            "patient",
            "reference",
            "subject",
            "http://hl7.org/fhir/SearchParameter/clinical-patient",
        ),
        (
            Encounter,
            "subject",
            "reference",
            "subject",
            "http://hl7.org/fhir/SearchParameter/Encounter-subject",
        ),
        (
            Encounter,
            "type",
            "token",
            "type",
            "http://hl7.org/fhir/SearchParameter/clinical-type",
        ),
    ]
};

/// Characters percent-encoded when a search parameter value is written back into the
/// `self` link: everything but unreserved characters and the FHIR separators `|`, `/`,
/// `:` and `,`, which keep their meaning unencoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'|')
    .remove(b'/')
    .remove(b':')
    .remove(b',');

/// The in-memory server state.
struct Backend {
    info: BackendInfo,
    capability: Bytes,
    smart_configuration: Bytes,
    store: RwLock<Store>,
    pages: parking_lot::Mutex<Pages>,
}

/// Result snapshots of paged searches, by page-set id.
#[derive(Default)]
struct Pages {
    sets: HashMap<String, Arc<Vec<Arc<Value>>>>,
    order: std::collections::VecDeque<String>,
}

/// Resources by type, then by id (ordered, so searches answer in a stable order).
#[derive(Default)]
struct Store {
    by_type: HashMap<ResourceType, BTreeMap<String, Arc<Value>>>,
    created: usize,
}

/// A failed interaction, answered with an OperationOutcome.
#[derive(Debug, thiserror::Error)]
#[error("{diagnostics}")]
struct Failure {
    status: StatusCode,
    /// OperationOutcome.issue.code (FHIR R4 `issue-type` value set).
    code: &'static str,
    diagnostics: String,
    allow: Option<&'static str>,
}

/// One search criterion; a resource matches when it matches any of the alternatives
/// (comma-separated values, FHIR R4 search.html#combining).
enum Criterion {
    Id(Vec<String>),
    Reference {
        element: &'static str,
        alts: Vec<RefValue>,
    },
    Token {
        element: &'static str,
        alts: Vec<TokenValue>,
    },
}

/// A reference search value.
enum RefValue {
    /// `Type/id`: matches that reference exactly.
    Typed(String),
    /// A bare id: matches a reference to that id of any type (R4 search.html#reference).
    AnyType(String),
}

/// A token search value: `code`, `system|code` or `|code` (R4 search.html#token).
struct TokenValue {
    /// `None`: any system; `Some(None)`: the coding must have no system.
    system: Option<Option<String>>,
    code: String,
}

/// Response headers echoing what reached the backend (dev only).
struct Echo {
    saw_authorization: bool,
    request_id: Option<HeaderValue>,
    forwarded_for: Option<HeaderValue>,
    forwarded_proto: Option<HeaderValue>,
}

/// Serves the sample FHIR backend on `listener` until the task is dropped.
///
/// Never returns `Ok`; accept errors are retried (see `dev::httputil::serve`), so
/// the `Result` only keeps the signature uniform with other servers.
pub async fn serve(listener: TcpListener, info: BackendInfo) -> io::Result<()> {
    let backend = Arc::new(Backend::new(info));
    httputil::serve(listener, "dev-backend", move |req| {
        let backend = Arc::clone(&backend);
        async move { backend.handle(req).await }
    })
    .await
}

// === impl ResourceType ===

impl ResourceType {
    const ALL: [ResourceType; 6] = [
        ResourceType::Patient,
        ResourceType::Observation,
        ResourceType::Condition,
        ResourceType::MedicationRequest,
        ResourceType::AllergyIntolerance,
        ResourceType::Encounter,
    ];

    fn name(self) -> &'static str {
        match self {
            ResourceType::Patient => "Patient",
            ResourceType::Observation => "Observation",
            ResourceType::Condition => "Condition",
            ResourceType::MedicationRequest => "MedicationRequest",
            ResourceType::AllergyIntolerance => "AllergyIntolerance",
            ResourceType::Encounter => "Encounter",
        }
    }

    /// Exact, case-sensitive match: FHIR type names are case-sensitive.
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// The element referring to the patient the resource is about.
    fn patient_element(self) -> Option<&'static str> {
        match self {
            ResourceType::Patient => None,
            ResourceType::AllergyIntolerance => Some("patient"),
            _ => Some("subject"),
        }
    }

    /// Elements with minimum cardinality 1 in R4 (each entry lists the alternatives of a
    /// choice element), checked on `create`.
    fn required(self) -> &'static [&'static [&'static str]] {
        match self {
            ResourceType::Patient => &[],
            ResourceType::Observation => &[&["status"], &["code"]],
            ResourceType::Condition => &[&["subject"]],
            ResourceType::MedicationRequest => &[
                &["status"],
                &["intent"],
                &["medicationCodeableConcept", "medicationReference"],
                &["subject"],
            ],
            ResourceType::AllergyIntolerance => &[&["patient"]],
            ResourceType::Encounter => &[&["status"], &["class"]],
        }
    }

    fn search_params(self) -> impl Iterator<Item = &'static SearchParamDef> {
        SEARCH_PARAMS.iter().filter(move |p| p.0 == self)
    }
}

// === impl Backend ===

impl Backend {
    fn new(info: BackendInfo) -> Self {
        let mut store = Store::default();
        for mut resource in data::resources() {
            resource["meta"]["versionId"] = json!("1");
            resource["meta"]["lastUpdated"] = json!(data::SEED_LAST_UPDATED);
            store.insert(resource);
        }
        let capability = serde_json::to_vec(&capability_statement(&info)).unwrap_or_default();
        let smart_configuration =
            serde_json::to_vec(&smart_configuration(&info)).unwrap_or_default();
        Backend {
            info,
            capability: capability.into(),
            smart_configuration: smart_configuration.into(),
            store: RwLock::new(store),
            pages: parking_lot::Mutex::new(Pages::default()),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let echo = Echo::from_headers(req.headers());
        let mut resp = match self.dispatch(req).await {
            Ok(resp) => resp,
            Err(failure) => failure.into_response(),
        };
        echo.apply(resp.headers_mut());
        resp
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
        let path = req.uri().path();
        if path == "/fhir" || path == "/fhir/" {
            return match req.method().clone() {
                Method::GET => self.page(req.uri().query().unwrap_or("")),
                Method::POST => self.bundle(req).await,
                m => Err(Failure::method_not_allowed(&m, "GET, POST")),
            };
        }
        let Some(rest) = path.strip_prefix("/fhir/") else {
            return Err(Failure::not_found(format!(
                "no FHIR endpoint at `{path}`; the base is /fhir"
            )));
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let method = req.method().clone();
        match segments.as_slice() {
            ["metadata"] => {
                only(&method, &Method::GET, "GET")?;
                Ok(fhir_bytes(StatusCode::OK, self.capability.clone()))
            }
            [".well-known", "smart-configuration"] => {
                only(&method, &Method::GET, "GET")?;
                let mut resp = fhir_bytes(StatusCode::OK, self.smart_configuration.clone());
                // SMART App Launch 2.x conformance: served as application/json.
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok(resp)
            }
            [ty] => {
                let ty = resource_type(ty)?;
                match method {
                    Method::GET => {
                        let strict = prefers(req.headers(), "handling=strict");
                        self.search(ty, req.uri().query().unwrap_or(""), strict)
                    }
                    Method::POST => self.create(ty, req).await,
                    _ => Err(Failure::method_not_allowed(&method, "GET, POST")),
                }
            }
            [ty, id] => {
                let ty = resource_type(ty)?;
                only(&method, &Method::GET, "GET")?;
                self.read(ty, id)
            }
            _ => Err(Failure::not_found(format!(
                "`{path}` is not an interaction this sample server supports \
                 (metadata, read, search-type, create)"
            ))),
        }
    }

    /// FHIR R4 `read`: `GET [base]/[type]/[id]`.
    fn read(&self, ty: ResourceType, id: &str) -> Result<Response<Body>, Failure> {
        check_id(id)?;
        let found = self.store.read().get(ty, id);
        match found {
            Some(resource) => Ok(resource_response(StatusCode::OK, &resource)),
            None => Err(Failure::not_found(format!(
                "{}/{id} is not known",
                ty.name()
            ))),
        }
    }

    /// FHIR R4 `search-type`: `GET [base]/[type]?params`, answered with a searchset Bundle.
    fn search(
        &self,
        ty: ResourceType,
        query: &str,
        strict: bool,
    ) -> Result<Response<Body>, Failure> {
        Ok(fhir_json(
            StatusCode::OK,
            &self.search_bundle(ty, query, strict)?,
        ))
    }

    /// The searchset Bundle of a search; with `_count`, its first page and a `next` link.
    fn search_bundle(&self, ty: ResourceType, query: &str, strict: bool) -> Result<Value, Failure> {
        let params = httputil::parse_form(query).map_err(|e| Failure::invalid(e.to_string()))?;
        let mut criteria = Vec::new();
        let mut applied = Vec::new();
        let mut count = None;
        for (name, value) in params {
            if name == "_count" {
                // R4 search.html#count: the page size.
                let n: usize = value
                    .parse()
                    .map_err(|_| Failure::invalid(format!("`_count={value}` is not a number")))?;
                count = Some(n.min(MAX_COUNT));
                applied.push((name, value));
                continue;
            }
            match criterion(ty, &name, &value)? {
                Some(c) => {
                    criteria.push(c);
                    applied.push((name, value));
                }
                None if strict => {
                    // R4 search.html#errors: with `handling=strict`, unknown parameters fail.
                    return Err(Failure::invalid(format!(
                        "search parameter `{name}` is not supported for {}",
                        ty.name()
                    )));
                }
                // R4 search.html#errors: by default unknown parameters are ignored and left
                // out of the self link, which tells the client what was applied.
                None => {}
            }
        }
        let matches: Vec<Arc<Value>> = {
            let store = self.store.read();
            store
                .all(ty)
                .filter(|r| criteria.iter().all(|c| c.matches(r)))
                .cloned()
                .collect()
        };

        let mut self_link = format!("{}/{}", self.info.base_url, ty.name());
        for (i, (name, value)) in applied.iter().enumerate() {
            self_link.push(if i == 0 { '?' } else { '&' });
            self_link.push_str(name);
            self_link.push('=');
            self_link.extend(utf8_percent_encode(value, QUERY_VALUE));
        }
        let matches = Arc::new(matches);
        let (shown, next) = match count {
            Some(n) if n < matches.len() => {
                let id = self.keep_page_set(matches.clone());
                (n, Some(self.page_url(&id, n, n)))
            }
            Some(n) => (n.min(matches.len()), None),
            None => (matches.len(), None),
        };
        Ok(self.searchset(&matches[..shown], matches.len(), self_link, next, None))
    }

    /// A searchset Bundle with `entries` of a result of `total` matches.
    fn searchset(
        &self,
        entries: &[Arc<Value>],
        total: usize,
        self_link: String,
        next: Option<String>,
        previous: Option<String>,
    ) -> Value {
        // R4 bundle.html: `link` before `entry`, as FHIR JSON is written.
        let mut links = vec![json!({ "relation": "self", "url": self_link })];
        if let Some(next) = next {
            links.push(json!({ "relation": "next", "url": next }));
        }
        if let Some(previous) = previous {
            links.push(json!({ "relation": "previous", "url": previous }));
        }
        let mut bundle = json!({
            "resourceType": "Bundle",
            "id": random_uuid(),
            "meta": { "lastUpdated": now_instant() },
            "type": "searchset",
            "total": total,
            "link": links,
        });
        // FHIR JSON forbids empty arrays: no `entry` when nothing matched.
        if !entries.is_empty() {
            let entries: Vec<Value> = entries
                .iter()
                .map(|r| {
                    let ty = r["resourceType"].as_str().unwrap_or_default();
                    let id = r["id"].as_str().unwrap_or_default();
                    json!({
                        "fullUrl": format!("{}/{ty}/{id}", self.info.base_url),
                        "resource": r.as_ref(),
                        "search": { "mode": "match" },
                    })
                })
                .collect();
            bundle["entry"] = Value::Array(entries);
        }
        bundle
    }

    /// Keeps a result for paging; returns its page-set id.
    fn keep_page_set(&self, matches: Arc<Vec<Arc<Value>>>) -> String {
        let id = random_uuid();
        let mut pages = self.pages.lock();
        if pages.order.len() >= PAGE_SETS {
            if let Some(old) = pages.order.pop_front() {
                pages.sets.remove(&old);
            }
        }
        pages.order.push_back(id.clone());
        pages.sets.insert(id.clone(), matches);
        id
    }

    /// HAPI's page link form.
    fn page_url(&self, id: &str, offset: usize, count: usize) -> String {
        format!(
            "{}?_getpages={id}&_getpagesoffset={offset}&_count={count}&_bundletype=searchset",
            self.info.base_url
        )
    }

    /// `GET [base]?_getpages=<id>&_getpagesoffset=<n>&_count=<N>`: one page of a kept result.
    fn page(&self, query: &str) -> Result<Response<Body>, Failure> {
        let params = httputil::parse_form(query).map_err(|e| Failure::invalid(e.to_string()))?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let Some(id) = get("_getpages") else {
            return Err(Failure::invalid(
                "a request at the base needs `_getpages` (or POST a batch or transaction)".into(),
            ));
        };
        let number = |name: &str, default: usize| -> Result<usize, Failure> {
            get(name).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| Failure::invalid(format!("`{name}={v}` is not a number")))
            })
        };
        let offset = number("_getpagesoffset", 0)?;
        let count = number("_count", 10)?.clamp(1, MAX_COUNT);
        let Some(set) = self.pages.lock().sets.get(id).cloned() else {
            return Err(Failure {
                status: StatusCode::GONE,
                code: "not-found",
                diagnostics: format!("page set `{id}` is unknown or expired; search again"),
                allow: None,
            });
        };
        let start = offset.min(set.len());
        let end = (start + count).min(set.len());
        let next = (end < set.len()).then(|| self.page_url(id, end, count));
        let previous = (start > 0).then(|| self.page_url(id, start.saturating_sub(count), count));
        let bundle = self.searchset(
            &set[start..end],
            set.len(),
            self.page_url(id, start, count),
            next,
            previous,
        );
        Ok(fhir_json(StatusCode::OK, &bundle))
    }

    /// FHIR R4 `create`: `POST [base]/[type]`; the server assigns the id (any id in the body
    /// is ignored, R4 http.html#create) and answers 201 with `Location` and the resource.
    async fn create(
        &self,
        ty: ResourceType,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Failure> {
        let media_ok = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|m| m == FHIR_JSON || m == "application/json");
        if !media_ok {
            return Err(Failure {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "not-supported",
                diagnostics: format!("send the resource as {FHIR_JSON}"),
                allow: None,
            });
        }
        let prefer_minimal = prefers(req.headers(), "return=minimal");
        let body = read_json_body(req).await?;
        let stored = self.create_value(ty, body)?;
        let location = self.location(&stored);
        let mut resp = if prefer_minimal {
            let mut r = Response::new(Body::default());
            *r.status_mut() = StatusCode::CREATED;
            r
        } else {
            resource_response(StatusCode::CREATED, &stored)
        };
        let headers = resp.headers_mut();
        headers.insert(ETAG, HeaderValue::from_static("W/\"1\""));
        if let Ok(v) = HeaderValue::from_str(&location) {
            headers.insert(LOCATION, v);
        }
        Ok(resp)
    }

    /// `Location` of a created resource's first version.
    fn location(&self, stored: &Value) -> String {
        format!(
            "{}/{}/{}/_history/1",
            self.info.base_url,
            stored["resourceType"].as_str().unwrap_or_default(),
            stored["id"].as_str().unwrap_or_default()
        )
    }

    /// Validates and stores a new resource of type `ty`, assigning id and meta.
    fn create_value(&self, ty: ResourceType, mut resource: Value) -> Result<Arc<Value>, Failure> {
        let Some(object) = resource.as_object_mut() else {
            return Err(Failure::structure(
                "the body must be a JSON object (a FHIR resource)".into(),
            ));
        };
        validate_new(ty, object)?;

        let id = random_uuid();
        let last_updated = now_instant();
        object.insert("id".into(), json!(id));
        let meta = object
            .entry("meta")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| Failure::structure("`meta` must be an object".into()))?;
        meta.insert("versionId".into(), json!("1"));
        meta.insert("lastUpdated".into(), json!(last_updated));

        let mut store = self.store.write();
        if let Some(element) = ty.patient_element() {
            // Referential integrity, as real servers enforce it: the patient must exist.
            let reference = object[element]["reference"].as_str().unwrap_or_default();
            let known = reference
                .strip_prefix("Patient/")
                .is_some_and(|pid| store.get(ResourceType::Patient, pid).is_some());
            if !known {
                return Err(Failure::invalid(format!(
                    "`{element}.reference` must name a known Patient (Patient/<id>), got `{reference}`"
                )));
            }
        }
        if store.created >= MAX_CREATED {
            return Err(Failure {
                status: StatusCode::INSUFFICIENT_STORAGE,
                code: "too-costly",
                diagnostics: format!(
                    "the dev backend holds at most {MAX_CREATED} created resources; restart it"
                ),
                allow: None,
            });
        }
        store.created += 1;
        Ok(store.insert(resource))
    }

    /// FHIR R4 batch and transaction: `POST [base]` with a Bundle (http.html#transaction).
    /// Entries are read, search or create; the response has one entry per request entry,
    /// in order. A transaction with a failing entry fails whole (its creates are undone).
    async fn bundle(&self, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
        let bundle = read_json_body(req).await?;
        if bundle["resourceType"] != "Bundle" {
            return Err(Failure::invalid(
                "POST at the base takes a batch or transaction Bundle".into(),
            ));
        }
        let transaction = match bundle["type"].as_str() {
            Some("batch") => false,
            Some("transaction") => true,
            other => {
                return Err(Failure::invalid(format!(
                    "Bundle.type must be batch or transaction, got {other:?}"
                )))
            }
        };
        let entries = bundle["entry"].as_array().map_or(&[][..], Vec::as_slice);
        let mut answered = Vec::with_capacity(entries.len());
        let mut created: Vec<(ResourceType, String)> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match self.entry(entry) {
                Ok((status, resource, location)) => {
                    if status == StatusCode::CREATED {
                        if let (Some(ty), Some(id)) = (
                            resource["resourceType"]
                                .as_str()
                                .and_then(ResourceType::parse),
                            resource["id"].as_str(),
                        ) {
                            created.push((ty, id.to_owned()));
                        }
                    }
                    let mut response = json!({ "status": status_text(status) });
                    if let Some(location) = location {
                        response["location"] = json!(location);
                    }
                    answered.push(json!({ "response": response, "resource": resource }));
                }
                Err(failure) if transaction => {
                    // R4 http.html#transaction: all or nothing.
                    let mut store = self.store.write();
                    for (ty, id) in &created {
                        store.remove(*ty, id);
                    }
                    return Err(Failure {
                        diagnostics: format!(
                            "transaction entry {i} failed: {}",
                            failure.diagnostics
                        ),
                        ..failure
                    });
                }
                Err(failure) => answered.push(json!({
                    "response": {
                        "status": status_text(failure.status),
                        "outcome": operation_outcome(failure.code, &failure.diagnostics),
                    }
                })),
            }
        }
        let mut response = json!({
            "resourceType": "Bundle",
            "id": random_uuid(),
            "type": if transaction { "transaction-response" } else { "batch-response" },
        });
        if !answered.is_empty() {
            response["entry"] = Value::Array(answered);
        }
        Ok(fhir_json(StatusCode::OK, &response))
    }

    /// One Bundle entry: its status, resource and `Location` (creates).
    fn entry(&self, entry: &Value) -> Result<(StatusCode, Value, Option<String>), Failure> {
        let method = entry["request"]["method"].as_str().unwrap_or_default();
        let url = entry["request"]["url"].as_str().unwrap_or_default();
        let base = format!("{}/", self.info.base_url);
        let url = url.strip_prefix(&base).unwrap_or(url);
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let segments: Vec<&str> = path.split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", [ty]) => {
                let ty = resource_type(ty)?;
                Ok((StatusCode::OK, self.search_bundle(ty, query, false)?, None))
            }
            ("GET", [ty, id]) => {
                let ty = resource_type(ty)?;
                check_id(id)?;
                let found = self.store.read().get(ty, id);
                match found {
                    Some(r) => Ok((StatusCode::OK, r.as_ref().clone(), None)),
                    None => Err(Failure::not_found(format!("{}/{id} is not known", ty.name()))),
                }
            }
            ("POST", [ty]) => {
                let ty = resource_type(ty)?;
                let stored = self.create_value(ty, entry["resource"].clone())?;
                let location = self.location(&stored);
                Ok((StatusCode::CREATED, stored.as_ref().clone(), Some(location)))
            }
            _ => Err(Failure::invalid(format!(
                "`{method} {path}` is not an entry this sample server supports (read, search, create)"
            ))),
        }
    }
}

/// `200 OK`, as Bundle.entry.response.status writes it.
fn status_text(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned()
}

/// Reads a JSON request body (at most [`MAX_BODY`] bytes).
async fn read_json_body(req: Request<Incoming>) -> Result<Value, Failure> {
    let body = httputil::read_body(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| match e {
            httputil::BodyError::TooLarge { .. } => Failure {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "too-costly",
                diagnostics: e.to_string(),
                allow: None,
            },
            httputil::BodyError::Read(_) => Failure::invalid(e.to_string()),
        })?;
    serde_json::from_slice(&body)
        .map_err(|e| Failure::structure(format!("the body is not valid JSON: {e}")))
}

// === impl Store ===

impl Store {
    /// Stores a resource with a valid `resourceType` and `id`, replacing any with that id.
    fn insert(&mut self, resource: Value) -> Arc<Value> {
        let resource = Arc::new(resource);
        let ty = resource["resourceType"]
            .as_str()
            .and_then(ResourceType::parse);
        let id = resource["id"].as_str();
        if let (Some(ty), Some(id)) = (ty, id) {
            self.by_type
                .entry(ty)
                .or_default()
                .insert(id.to_owned(), Arc::clone(&resource));
        }
        resource
    }

    fn get(&self, ty: ResourceType, id: &str) -> Option<Arc<Value>> {
        self.by_type.get(&ty)?.get(id).cloned()
    }

    /// Undoes a create (a failed transaction).
    fn remove(&mut self, ty: ResourceType, id: &str) {
        if self
            .by_type
            .get_mut(&ty)
            .and_then(|m| m.remove(id))
            .is_some()
        {
            self.created = self.created.saturating_sub(1);
        }
    }

    fn all(&self, ty: ResourceType) -> impl Iterator<Item = &Arc<Value>> {
        self.by_type.get(&ty).into_iter().flat_map(|m| m.values())
    }
}

// === impl Criterion ===

impl Criterion {
    fn matches(&self, resource: &Value) -> bool {
        match self {
            Criterion::Id(ids) => {
                let id = resource["id"].as_str().unwrap_or_default();
                ids.iter().any(|want| want == id)
            }
            Criterion::Reference { element, alts } => {
                let Some(reference) = resource[*element]["reference"].as_str() else {
                    return false;
                };
                alts.iter().any(|alt| match alt {
                    RefValue::Typed(want) => reference == want,
                    RefValue::AnyType(id) => {
                        reference.rsplit_once('/').is_some_and(|(_, rid)| rid == id)
                    }
                })
            }
            Criterion::Token { element, alts } => {
                // The element is a CodeableConcept or a list of them.
                let concepts: Vec<&Value> = match &resource[*element] {
                    Value::Array(list) => list.iter().collect(),
                    other => vec![other],
                };
                concepts
                    .iter()
                    .filter_map(|c| c["coding"].as_array())
                    .flatten()
                    .any(|coding| alts.iter().any(|t| t.matches(coding)))
            }
        }
    }
}

/// Turns one query parameter into a criterion; `Ok(None)` when the parameter is not one
/// the backend knows for `ty` (ignored or refused by the caller).
fn criterion(ty: ResourceType, name: &str, value: &str) -> Result<Option<Criterion>, Failure> {
    if matches!(name, "_format" | "_pretty") {
        // Result parameters that do not change which resources match.
        return Ok(None);
    }
    let (base, modifier) = match name.split_once(':') {
        Some((b, m)) => (b, Some(m)),
        None => (name, None),
    };
    let Some(&(_, _, kind, element, _)) = ty.search_params().find(|p| p.1 == base) else {
        return Ok(None);
    };
    // Only `subject:Patient` is understood; any other modifier would change the meaning.
    if modifier.is_some() && !(base == "subject" && modifier == Some("Patient")) {
        return Ok(None);
    }
    if value.is_empty() {
        return Err(Failure::invalid(format!(
            "search parameter `{name}` has no value"
        )));
    }
    let alts = value.split(',');
    let criterion = match (base, kind) {
        ("_id", _) => Criterion::Id(
            alts.map(|id| check_id(id).map(|()| id.to_owned()))
                .collect::<Result<_, _>>()?,
        ),
        ("patient", _) => Criterion::Reference {
            element,
            alts: alts
                .map(|v| {
                    // `patient` targets Patient only: a bare id or `Patient/<id>`.
                    let id = v.strip_prefix("Patient/").unwrap_or(v);
                    check_id(id).map(|()| RefValue::Typed(format!("Patient/{id}")))
                })
                .collect::<Result<_, _>>()?,
        },
        (_, "reference") => Criterion::Reference {
            element,
            alts: alts
                .map(|v| {
                    if modifier == Some("Patient") {
                        return check_id(v).map(|()| RefValue::Typed(format!("Patient/{v}")));
                    }
                    match v.split_once('/') {
                        Some((t, id)) if !t.is_empty() => {
                            check_id(id).map(|()| RefValue::Typed(v.to_owned()))
                        }
                        Some(_) => Err(Failure::invalid(format!("`{v}` is not a reference"))),
                        None => check_id(v).map(|()| RefValue::AnyType(v.to_owned())),
                    }
                })
                .collect::<Result<_, _>>()?,
        },
        _ => Criterion::Token {
            element,
            alts: alts.map(TokenValue::parse).collect::<Result<_, _>>()?,
        },
    };
    Ok(Some(criterion))
}

// === impl TokenValue ===

impl TokenValue {
    fn parse(v: &str) -> Result<Self, Failure> {
        let (system, code) = match v.split_once('|') {
            Some(("", code)) => (Some(None), code),
            Some((system, code)) => (Some(Some(system.to_owned())), code),
            None => (None, v),
        };
        if code.is_empty() {
            return Err(Failure::invalid(format!("token `{v}` has no code")));
        }
        Ok(TokenValue {
            system,
            code: code.to_owned(),
        })
    }

    fn matches(&self, coding: &Value) -> bool {
        if coding["code"].as_str() != Some(self.code.as_str()) {
            return false;
        }
        match &self.system {
            None => true,
            Some(None) => coding.get("system").is_none(),
            Some(Some(system)) => coding["system"].as_str() == Some(system.as_str()),
        }
    }
}

// === impl Failure ===

impl Failure {
    fn invalid(diagnostics: String) -> Self {
        Failure {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            diagnostics,
            allow: None,
        }
    }

    fn structure(diagnostics: String) -> Self {
        Failure {
            status: StatusCode::BAD_REQUEST,
            code: "structure",
            diagnostics,
            allow: None,
        }
    }

    fn not_found(diagnostics: String) -> Self {
        Failure {
            status: StatusCode::NOT_FOUND,
            code: "not-found",
            diagnostics,
            allow: None,
        }
    }

    fn method_not_allowed(method: &Method, allow: &'static str) -> Self {
        Failure {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "not-supported",
            diagnostics: format!("{method} is not supported here; allowed: {allow}"),
            allow: Some(allow),
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut resp = fhir_json(
            self.status,
            &operation_outcome(self.code, &self.diagnostics),
        );
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

// === impl Echo ===

impl Echo {
    fn from_headers(headers: &HeaderMap) -> Self {
        Echo {
            saw_authorization: headers.contains_key(http::header::AUTHORIZATION),
            request_id: joined(headers, "x-request-id"),
            forwarded_for: joined(headers, "x-forwarded-for"),
            forwarded_proto: joined(headers, "x-forwarded-proto"),
        }
    }

    fn apply(self, headers: &mut HeaderMap) {
        let saw = if self.saw_authorization {
            "present"
        } else {
            "absent"
        };
        headers.insert(SAW_AUTHORIZATION, HeaderValue::from_static(saw));
        for (name, value) in [
            (SAW_REQUEST_ID, self.request_id),
            (SAW_FORWARDED_FOR, self.forwarded_for),
            (SAW_FORWARDED_PROTO, self.forwarded_proto),
        ] {
            if let Some(value) = value {
                headers.insert(name, value);
            }
        }
    }
}

/// All values of a header joined with `, ` (RFC 9110 §5.3), so a duplicated header is
/// visible in the echo rather than silently reduced to one value.
fn joined(headers: &HeaderMap, name: &str) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?.clone();
    let mut out = first.as_bytes().to_vec();
    for v in values {
        out.extend_from_slice(b", ");
        out.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&out).ok().or(Some(first))
}

/// Refuses a method other than `allowed` on a path.
fn only(method: &Method, allowed: &Method, allow: &'static str) -> Result<(), Failure> {
    if method == allowed {
        Ok(())
    } else {
        Err(Failure::method_not_allowed(method, allow))
    }
}

fn resource_type(s: &str) -> Result<ResourceType, Failure> {
    ResourceType::parse(s).ok_or_else(|| Failure {
        status: StatusCode::NOT_FOUND,
        code: "not-supported",
        diagnostics: format!(
            "resource type `{s}` is not served here (supported: Patient, Observation, Condition, \
             MedicationRequest, AllergyIntolerance, Encounter)"
        ),
        allow: None,
    })
}

/// FHIR R4 id syntax (datatypes.html#id): `[A-Za-z0-9\-\.]{1,64}`.
fn check_id(id: &str) -> Result<(), Failure> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Failure::invalid(format!("`{id}` is not a valid FHIR id")))
    }
}

/// True when a `Prefer` header (RFC 7240) carries `token` (e.g. `return=minimal`).
fn prefers(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks a resource sent to `create`.
fn validate_new(ty: ResourceType, object: &Map<String, Value>) -> Result<(), Failure> {
    match object.get("resourceType").and_then(Value::as_str) {
        Some(rt) if rt == ty.name() => {}
        Some(rt) => {
            return Err(Failure::invalid(format!(
                "resourceType `{rt}` does not match the endpoint ({})",
                ty.name()
            )))
        }
        None => return Err(Failure::structure("`resourceType` is missing".into())),
    }
    for alternatives in ty.required() {
        if !alternatives
            .iter()
            .any(|e| object.get(*e).is_some_and(|v| !v.is_null()))
        {
            return Err(Failure::structure(format!(
                "{} requires `{}` (R4 minimum cardinality 1)",
                ty.name(),
                alternatives.join("` or `")
            )));
        }
    }
    Ok(())
}

fn operation_outcome(code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "error", "code": code, "diagnostics": diagnostics }]
    })
}

fn fhir_json(status: StatusCode, value: &Value) -> Response<Body> {
    fhir_bytes(status, serde_json::to_vec(value).unwrap_or_default().into())
}

fn fhir_bytes(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    resp
}

/// A single resource with its version as a weak ETag (R4 http.html#versioning).
fn resource_response(status: StatusCode, resource: &Value) -> Response<Body> {
    let mut resp = fhir_json(status, resource);
    let version = resource["meta"]["versionId"].as_str().unwrap_or("1");
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        resp.headers_mut().insert(ETAG, etag);
    }
    resp
}

/// The CapabilityStatement served at `metadata` (R4 capabilitystatement.html), with the
/// SMART `oauth-uris` extension (SMART App Launch 1.0 conformance, still read by clients).
fn capability_statement(info: &BackendInfo) -> Value {
    let resources: Vec<Value> = ResourceType::ALL
        .iter()
        .map(|ty| {
            let params: Vec<Value> = ty
                .search_params()
                .map(|&(_, name, kind, _, definition)| {
                    json!({ "name": name, "definition": definition, "type": kind })
                })
                .collect();
            json!({
                "type": ty.name(),
                "interaction": [{ "code": "read" }, { "code": "search-type" }, { "code": "create" }],
                "versioning": "versioned",
                "searchParam": params,
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "id": "fhirwall-dev-backend",
        "status": "active",
        "date": &data::SEED_LAST_UPDATED[..10],
        "publisher": "fhirwall (development sample; synthetic data only)",
        "kind": "instance",
        "software": { "name": "fhirwall dev backend", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "In-memory sample FHIR R4 server started by `fhirwall dev` (not for production)",
            "url": info.base_url,
        },
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{ "url": "token", "valueUri": format!("{}/token", info.issuer_url) }]
                }],
                "service": [{
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                        "display": "SMART-on-FHIR"
                    }],
                    "text": "OAuth2 bearer tokens using the SMART App Launch profile"
                }],
                "description": "Tokens come from the fhirwall development issuer \
                                (client_credentials, no client authentication)."
            },
            "resource": resources,
        }]
    })
}

/// The SMART App Launch 2.x discovery document (conformance.html#metadata). The dev issuer
/// only does `client_credentials`, so the authorization-code fields
/// (`authorization_endpoint`, `code_challenge_methods_supported`) do not apply.
fn smart_configuration(info: &BackendInfo) -> Value {
    json!({
        "issuer": info.issuer_url,
        "jwks_uri": format!("{}/jwks", info.issuer_url),
        "token_endpoint": format!("{}/token", info.issuer_url),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": super::scopes_supported(),
        "capabilities": ["permission-v2", "permission-v1", "permission-patient", "permission-user"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Server {
        base: String,
        client: reqwest::Client,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/fhir", listener.local_addr().unwrap());
        let info = BackendInfo {
            base_url: base.clone(),
            issuer_url: "http://127.0.0.1:1".into(),
        };
        let task = tokio::spawn(serve(listener, info));
        Server {
            base,
            client: reqwest::Client::new(),
            task,
        }
    }

    impl Server {
        async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
            let resp = self
                .client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap();
            split(resp).await
        }
    }

    async fn split(resp: reqwest::Response) -> (StatusCode, HeaderMap, Value) {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, headers, body)
    }

    fn ids(bundle: &Value) -> Vec<&str> {
        bundle["entry"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|e| e["resource"]["id"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn reads_a_seeded_patient_as_fhir_json() {
        let s = start().await;
        let (status, headers, body) = s.get("/Patient/pat-1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], FHIR_JSON);
        assert_eq!(headers[ETAG], "W/\"1\"");
        assert_eq!(body["resourceType"], "Patient");
        assert_eq!(body["id"], "pat-1");
        assert_eq!(body["meta"]["versionId"], "1");
    }

    #[tokio::test]
    async fn unknown_id_and_unknown_type_are_404_operation_outcomes() {
        let s = start().await;
        let (status, _, body) = s.get("/Patient/pat-999").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert_eq!(body["issue"][0]["code"], "not-found");

        let (status, _, body) = s.get("/Practitioner/pr-1").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["issue"][0]["code"], "not-supported");

        // Type names are case-sensitive.
        let (status, _, _) = s.get("/patient/pat-1").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn malformed_id_is_a_400() {
        let s = start().await;
        let (status, _, body) = s.get("/Patient/pat%2D1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert_eq!(body["issue"][0]["code"], "invalid");
    }

    #[tokio::test]
    async fn a_search_with_count_pages_through_hapi_style_links() {
        let s = start().await;
        let (status, _, first) = s.get("/Observation?patient=pat-2&_count=2").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first["total"], 5);
        assert_eq!(ids(&first).len(), 2);
        let next = first["link"][1]["url"].as_str().unwrap();
        assert_eq!(first["link"][1]["relation"], "next");
        assert!(
            next.starts_with(&format!("{}?_getpages=", s.base)),
            "{next}"
        );
        let mut seen: Vec<String> = ids(&first).iter().map(|i| i.to_string()).collect();
        let mut url = next.to_owned();
        loop {
            let (status, _, page) = s.get(url.strip_prefix(&s.base).unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(page["total"], 5);
            seen.extend(ids(&page).iter().map(|i| i.to_string()));
            match page["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
            {
                Some(l) => url = l["url"].as_str().unwrap().to_owned(),
                None => break,
            }
        }
        let (_, _, all) = s.get("/Observation?patient=pat-2").await;
        let all: Vec<String> = ids(&all).iter().map(|i| i.to_string()).collect();
        assert_eq!(seen, all, "the pages cover the result once, in order");
        let (status, _, _) = s.get("?_getpages=unknown&_getpagesoffset=2").await;
        assert_eq!(status, StatusCode::GONE);
    }

    #[tokio::test]
    async fn a_batch_is_answered_entry_by_entry_in_order() {
        let s = start().await;
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Patient/pat-1"}},
            {"request": {"method": "GET", "url": "Patient/nobody"}},
            {"request": {"method": "GET", "url": "Observation?patient=pat-2"}},
        ]});
        let resp = s.client.post(&s.base).json(&bundle).send().await.unwrap();
        let (status, _, answer) = split(resp).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["type"], "batch-response");
        let e = answer["entry"].as_array().unwrap();
        assert_eq!(e[0]["response"]["status"], "200 OK");
        assert_eq!(e[0]["resource"]["id"], "pat-1");
        assert_eq!(e[1]["response"]["status"], "404 Not Found");
        assert_eq!(
            e[1]["response"]["outcome"]["resourceType"],
            "OperationOutcome"
        );
        assert_eq!(e[2]["resource"]["total"], 5);
    }

    #[tokio::test]
    async fn a_failing_transaction_undoes_its_creates() {
        let s = start().await;
        let obs = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "subject": {"reference": "Patient/pat-3"}});
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "Observation"}, "resource": obs},
            {"request": {"method": "GET", "url": "Patient/nobody"}},
        ]});
        let (_, _, before) = s.get("/Observation?patient=pat-3").await;
        let resp = s.client.post(&s.base).json(&bundle).send().await.unwrap();
        let (status, _, outcome) = split(resp).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        let (_, _, after) = s.get("/Observation?patient=pat-3").await;
        assert_eq!(before["total"], after["total"]);
    }

    #[tokio::test]
    async fn search_by_patient_returns_only_that_patients_observations() {
        let s = start().await;
        let (status, _, bundle) = s.get("/Observation?patient=pat-2").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "searchset");
        let entries = bundle["entry"].as_array().unwrap();
        assert_eq!(bundle["total"], entries.len());
        assert_eq!(entries.len(), 5);
        for e in entries {
            assert_eq!(e["resource"]["subject"]["reference"], "Patient/pat-2");
            let id = e["resource"]["id"].as_str().unwrap();
            assert_eq!(e["fullUrl"], format!("{}/Observation/{id}", s.base));
            assert_eq!(e["search"]["mode"], "match");
        }
        assert_eq!(bundle["link"][0]["relation"], "self");
        assert_eq!(
            bundle["link"][0]["url"],
            format!("{}/Observation?patient=pat-2", s.base)
        );
    }

    #[tokio::test]
    async fn search_forms_for_the_patient_agree() {
        let s = start().await;
        let (_, _, by_patient) = s.get("/Condition?patient=Patient/pat-1").await;
        let (_, _, by_subject) = s.get("/Condition?subject=Patient%2Fpat-1").await;
        let (_, _, by_modifier) = s.get("/Condition?subject:Patient=pat-1").await;
        assert_eq!(ids(&by_patient), vec!["cond-1-1", "cond-1-2"]);
        assert_eq!(ids(&by_subject), ids(&by_patient));
        assert_eq!(ids(&by_modifier), ids(&by_patient));
        let (_, _, allergies) = s.get("/AllergyIntolerance?patient=pat-3").await;
        assert_eq!(ids(&allergies), vec!["allergy-3"]);
    }

    #[tokio::test]
    async fn search_by_id_category_and_code() {
        let s = start().await;
        let (_, _, b) = s.get("/Patient?_id=pat-1,pat-3").await;
        assert_eq!(ids(&b), vec!["pat-1", "pat-3"]);

        let (_, _, b) = s
            .get("/Observation?patient=pat-1&category=http://terminology.hl7.org/CodeSystem/observation-category%7Claboratory")
            .await;
        assert_eq!(ids(&b), vec!["obs-1-glucose", "obs-1-hba1c"]);

        let (_, _, b) = s.get("/Observation?code=http://loinc.org|8867-4").await;
        assert_eq!(ids(&b), vec!["obs-1-hr", "obs-2-hr", "obs-3-hr"]);
        // `|code` means "no system": every seeded coding has one.
        let (_, _, b) = s.get("/Observation?code=%7C8867-4").await;
        assert_eq!(b["total"], 0);
        assert!(b.get("entry").is_none(), "no empty arrays in FHIR JSON");
    }

    #[tokio::test]
    async fn unknown_search_parameters_are_ignored_unless_strict() {
        let s = start().await;
        let (status, _, b) = s.get("/Encounter?patient=pat-1&_sort=date").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids(&b), vec!["enc-1"]);
        assert_eq!(
            b["link"][0]["url"],
            format!("{}/Encounter?patient=pat-1", s.base)
        );

        let resp = s
            .client
            .get(format!("{}/Encounter?patient=pat-1&_sort=date", s.base))
            .header("prefer", "handling=strict")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn empty_or_malformed_search_values_are_400() {
        let s = start().await;
        for q in [
            "/Observation?patient=",
            "/Observation?patient=Group/1",
            "/Observation?patient=a%20b",
            "/Observation?patient=%FF",
        ] {
            let (status, _, body) = s.get(q).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
            assert_eq!(body["resourceType"], "OperationOutcome");
        }
    }

    #[tokio::test]
    async fn create_assigns_an_id_and_the_resource_can_be_read_back() {
        let s = start().await;
        let obs = json!({
            "resourceType": "Observation",
            "id": "client-chosen",
            "status": "final",
            "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }],
            "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
            "subject": { "reference": "Patient/pat-3" },
            "valueQuantity": { "value": 88, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min" }
        });
        let resp = s
            .client
            .post(format!("{}/Observation", s.base))
            .header(CONTENT_TYPE, "application/fhir+json; fhirVersion=4.0")
            .body(obs.to_string())
            .send()
            .await
            .unwrap();
        let (status, headers, body) = split(resp).await;
        assert_eq!(status, StatusCode::CREATED);
        let id = body["id"].as_str().unwrap();
        assert_ne!(id, "client-chosen");
        assert_eq!(
            headers[LOCATION].to_str().unwrap(),
            format!("{}/Observation/{id}/_history/1", s.base)
        );
        assert_eq!(body["meta"]["versionId"], "1");

        let (status, _, read) = s.get(&format!("/Observation/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(read, body);
        let (_, _, b) = s.get("/Observation?patient=pat-3&code=8867-4").await;
        assert_eq!(b["total"], 2);
    }

    #[tokio::test]
    async fn create_refuses_bad_input_with_400() {
        let s = start().await;
        let post = |body: String, ct: &'static str| {
            s.client
                .post(format!("{}/Observation", s.base))
                .header(CONTENT_TYPE, ct)
                .body(body)
                .send()
        };
        let cases = [
            ("{not json".to_owned(), FHIR_JSON, StatusCode::BAD_REQUEST),
            ("[]".to_owned(), FHIR_JSON, StatusCode::BAD_REQUEST),
            (json!({"resourceType": "Condition", "subject": {"reference": "Patient/pat-1"}}).to_string(), FHIR_JSON, StatusCode::BAD_REQUEST),
            (json!({"resourceType": "Observation", "code": {"text": "x"}, "subject": {"reference": "Patient/pat-1"}}).to_string(), FHIR_JSON, StatusCode::BAD_REQUEST),
            (json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/nobody"}}).to_string(), FHIR_JSON, StatusCode::BAD_REQUEST),
            (json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/pat-1"}}).to_string(), "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ];
        for (body, ct, want) in cases {
            let (status, _, outcome) = split(post(body.clone(), ct).await.unwrap()).await;
            assert_eq!(status, want, "{body}");
            assert_eq!(outcome["resourceType"], "OperationOutcome", "{body}");
        }
    }

    #[tokio::test]
    async fn unsupported_methods_are_405_with_allow() {
        let s = start().await;
        let resp = s
            .client
            .delete(format!("{}/Patient/pat-1", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[http::header::ALLOW], "GET");
    }

    #[tokio::test]
    async fn metadata_is_an_r4_capability_statement_pointing_at_the_issuer() {
        let s = start().await;
        let (status, _, cs) = s.get("/metadata").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(cs["resourceType"], "CapabilityStatement");
        assert_eq!(cs["fhirVersion"], "4.0.1");
        assert_eq!(cs["kind"], "instance");
        let rest = &cs["rest"][0];
        assert_eq!(
            rest["security"]["extension"][0]["extension"][0]["valueUri"],
            "http://127.0.0.1:1/token"
        );
        let types: Vec<&str> = rest["resource"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert_eq!(types.len(), 6);
        assert!(types.contains(&"AllergyIntolerance"));
    }

    #[tokio::test]
    async fn smart_configuration_is_built_from_the_issuer_url() {
        let s = start().await;
        let (status, headers, doc) = s.get("/.well-known/smart-configuration").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(doc["issuer"], "http://127.0.0.1:1");
        assert_eq!(doc["jwks_uri"], "http://127.0.0.1:1/jwks");
        assert_eq!(doc["token_endpoint"], "http://127.0.0.1:1/token");
        assert_eq!(doc["grant_types_supported"], json!(["client_credentials"]));
        assert!(doc["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("permission-v2")));
        assert!(doc["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("patient/Observation.rs")));
    }

    #[tokio::test]
    async fn echo_headers_report_what_reached_the_backend() {
        let s = start().await;
        let (_, headers, _) = s.get("/metadata").await;
        assert_eq!(headers[SAW_AUTHORIZATION], "absent");
        assert!(!headers.contains_key(SAW_REQUEST_ID));
        assert!(!headers.contains_key(SAW_FORWARDED_FOR));

        let resp = s
            .client
            .get(format!("{}/Patient/nope", s.base))
            .header("authorization", "Bearer abc")
            .header("x-request-id", "req-42")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        // Echoed on errors too.
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[SAW_AUTHORIZATION], "present");
        assert_eq!(resp.headers()[SAW_REQUEST_ID], "req-42");
        assert_eq!(resp.headers()[SAW_FORWARDED_FOR], "203.0.113.9");
        assert_eq!(resp.headers()[SAW_FORWARDED_PROTO], "https");
    }

    #[test]
    fn served_types_are_the_advertised_types() {
        let names: Vec<&str> = ResourceType::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, data::RESOURCE_TYPES);
        for ty in ResourceType::ALL {
            assert_eq!(ResourceType::parse(ty.name()), Some(ty));
        }
    }

    #[test]
    fn repeated_headers_are_echoed_joined() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        assert_eq!(
            joined(&h, "x-forwarded-for").unwrap(),
            "198.51.100.1, 203.0.113.9"
        );
    }
}
