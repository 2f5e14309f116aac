//! FHIR R4 request classification: which RESTful interaction a request is, on which resource
//! type and id, and which SMART v2 permission letters (`c r u d s`) on which types it needs.
//!
//! This module owns only the *shape* of a request (method, path below the FHIR base, query).
//! It does not look at tokens, bodies or patient context; it says when a body must be read
//! (POST `_search` form, batch/transaction Bundle) and leaves operations to the operation
//! table (SMART-SEMANTICS §8). Anything it cannot classify with certainty is refused with
//! [`Unclassifiable`], never guessed (fail closed).
//!
//! Sources: FHIR R4 `http.html` (RESTful API), `search.html`, `compartmentdefinition.html`;
//! SMART App Launch 2.2 "Scopes and Launch Context" (SAL2); SMART-SEMANTICS §4, §5, §7, §8, §12.

use std::borrow::Cow;
use std::fmt;

use http::Method;
use percent_encoding::percent_decode_str;
use thiserror::Error;

use super::patient::is_fhir_id;
use super::r4::ResourceType;
use super::scope::{Letters, ScopeType};
use super::smart::compartment;

/// The FHIR RESTful interaction a request performs (R4 http.html §2.21.0 summary table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `GET [type]/[id]` (R4 http.html#read); HEAD is treated as GET (SMART-SEMANTICS A24).
    Read,
    /// `GET [type]/[id]/_history/[vid]` (http.html#vread).
    Vread,
    /// `PUT [type]/[id]`, or conditional `PUT [type]?q` (http.html#update, #cond-update).
    Update,
    /// `PATCH [type]/[id]`, or conditional `PATCH [type]?q` (http.html#patch).
    Patch,
    /// `DELETE [type]/[id]`, or conditional `DELETE [type]?q` (http.html#delete, #3.1.0.7.1).
    Delete,
    /// `GET [type]/[id]/_history` (http.html#history).
    HistoryInstance,
    /// `GET [type]/_history`.
    HistoryType,
    /// `GET _history`.
    HistorySystem,
    /// `POST [type]` (http.html#create); conditional with `If-None-Exist`.
    Create,
    /// `GET [type]?q` or `POST [type]/_search` (http.html#search).
    SearchType,
    /// `GET [base]?q` or `POST [base]/_search` (R4 system search, `_type` optional).
    SearchSystem,
    /// `GET [compartment]/[id]/[type]?q` or `.../*` (http.html#search, compartmentdefinition.html).
    SearchCompartment,
    /// `GET metadata` (http.html#capabilities).
    Capabilities,
    /// `[base]/$op`, `[type]/$op`, `[type]/[id]/$op` (http.html#operations, operations.html).
    Operation,
    /// `POST [base]` with a `batch` or `transaction` Bundle (http.html#transaction).
    BatchOrTransaction,
}

impl Interaction {
    /// The interaction's code: the R4 `type-restful-interaction` / `system-restful-interaction`
    /// code where one fits exactly, else a fhirwall label (`search-compartment`,
    /// `batch-or-transaction`, which is only known after the Bundle is read).
    pub fn code(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
            Interaction::SearchSystem => "search-system",
            Interaction::SearchCompartment => "search-compartment",
            Interaction::Capabilities => "capabilities",
            Interaction::Operation => "operation",
            Interaction::BatchOrTransaction => "batch-or-transaction",
        }
    }
}

/// The level an operation is invoked at (R4 operations.html "Executing an Operation").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// `[base]/$op`.
    System,
    /// `[base]/[type]/$op`.
    Type,
    /// `[base]/[type]/[id]/$op`.
    Instance,
}

/// An operation invocation: its name without the `$` and where it was invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The name without `$`, e.g. `everything`. Case-sensitive, as R4 operation codes are.
    pub name: Box<str>,
    /// System, type or instance level.
    pub level: Level,
}

/// What, beyond method, path and query, the caller must read before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyNeed {
    /// Nothing: the requirements are complete as classified (apart from response checks).
    None,
    /// `POST .../_search`: the `application/x-www-form-urlencoded` body carries search
    /// parameters that combine with the URL's (R4 http.html#search "POST ... _search"); they
    /// must be classified too (see [`Request::add_search_form`]).
    SearchForm,
    /// `POST [base]`: the Bundle's `type` must be `batch` or `transaction` and every entry is
    /// classified on its own (SAL2 "batch or transaction ... validated based on the actual
    /// requests within them"; SMART-SEMANTICS §7).
    Bundle,
}

/// A requirement: these letters on this type (or on `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// The type the letters are needed on; `*` when the request may reach any type.
    pub target: ScopeType,
    /// The SMART v2 letters needed.
    pub letters: Letters,
}

/// A classified FHIR request.
///
/// `requirements` is complete for every interaction except [`Interaction::Operation`] (the
/// caller maps the operation, SMART-SEMANTICS §8, and refuses unmapped ones) and
/// [`Interaction::BatchOrTransaction`] (per entry). An empty list on those two means
/// "not decided here", never "nothing needed"; only [`Interaction::Capabilities`] needs
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The interaction.
    pub interaction: Interaction,
    /// The resource type the interaction is on (`None` for system-level interactions and
    /// for `Patient/[id]/*`).
    pub resource_type: Option<ResourceType>,
    /// The logical id in the path (instance interactions).
    pub id: Option<Box<str>>,
    /// The version id of a vread.
    pub version: Option<Box<str>>,
    /// For a compartment search, the compartment (`Patient`, ...) and its id.
    pub compartment: Option<(ResourceType, Box<str>)>,
    /// For an operation, its name and level.
    pub operation: Option<Operation>,
    /// For an operation, the raw query string (its parameters are the operation's).
    pub raw_query: Option<Box<str>>,
    /// A conditional create/update/patch/delete (the server searches with the criteria).
    pub conditional: bool,
    /// What the caller must read before deciding.
    pub body: BodyNeed,
    /// `_filter` was used: its expression can name any parameter, so the search cannot be
    /// shown confined to a patient (SMART-SEMANTICS §4, "treats `_filter` as unconfined").
    pub filter: bool,
    /// Letters per type, merged by type, in order of first appearance; the interaction's own
    /// requirement comes first.
    pub requirements: Vec<Requirement>,
    /// Every query parameter (URL, `If-None-Exist`, `_search` form), percent-decoded, in
    /// order: the facts patient confinement and granular narrowing are judged on.
    pub params: Vec<SearchParam>,
    /// Some include/chain reached `*`, so a `_type` narrowing must keep the `*` requirement.
    any_reached: bool,
    /// `_type` was already applied (a second occurrence is refused: AND or OR is unclear).
    type_narrowed: bool,
}

/// One percent-decoded query parameter of a classified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParam {
    /// The name with any modifier or chain (`subject:Patient`, `patient.name`).
    pub name: Box<str>,
    /// The value (a comma is an OR of values, R4 search.html#combining).
    pub value: Box<str>,
}

/// Why a request could not be classified. Every variant means "refuse": fhirwall does not
/// forward what it cannot authorize.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Unclassifiable {
    /// A path or `_type`/`_include`/modifier names no R4 resource type (names are
    /// case-sensitive: `patient` is not `Patient`).
    #[error("unknown resource type `{0}`")]
    UnknownType(String),
    /// An id or version id that is not a FHIR id (`[A-Za-z0-9\-\.]{1,64}`), or is `.`/`..`.
    #[error("malformed id `{0}`")]
    MalformedId(String),
    /// An operation name that is not `$` followed by a code.
    #[error("malformed operation name `{0}`")]
    MalformedOperation(String),
    /// A path shape R4 does not define (or that fhirwall refuses, e.g. a trailing slash).
    #[error("unrecognised path shape: {0}")]
    PathShape(&'static str),
    /// The method is not defined for this path (e.g. `POST [type]/[id]`).
    #[error("method {method} is not defined for {shape}")]
    Method {
        /// The request method.
        method: String,
        /// The path shape it was used on.
        shape: &'static str,
    },
    /// A `_history` path fhirwall does not recognise.
    #[error("unrecognised _history shape")]
    History,
    /// A type is not a compartment R4 defines (`Patient`, `Encounter`, `RelatedPerson`,
    /// `Practitioner`, `Device`).
    #[error("`{0}` is not an R4 compartment")]
    NotACompartment(String),
    /// The query string could not be read unambiguously.
    #[error("unreadable query: {0}")]
    Query(&'static str),
    /// A search parameter whose reach cannot be determined.
    #[error("unclassifiable search parameter `{name}`: {why}")]
    Parameter {
        /// The (decoded) parameter name.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// The compartments R4 defines (compartmentdefinition.html): `[C]/[id]/[type]` is only a
/// compartment search for these.
const COMPARTMENTS: [&str; 5] = [
    "Device",
    "Encounter",
    "Patient",
    "Practitioner",
    "RelatedPerson",
];

/// Classifies a FHIR R4 request.
///
/// `path_below_base` is the path after the FHIR base, with or without a leading `/`
/// (`Patient/123`, `/Patient/123/_history/2`, `""` for the base itself). It must already have
/// passed [`super::path::check`]; a `%` left in it is refused here too. `query` is the raw query
/// string without `?`.
pub fn classify(
    method: &Method,
    path_below_base: &str,
    query: Option<&str>,
) -> Result<Request, Unclassifiable> {
    let query = query.filter(|q| !q.is_empty());
    let mut req = classify_path(method, path_below_base, query.is_some())?;
    if let Some(q) = query {
        match req.interaction {
            // Operation parameters are the operation's business (SMART-SEMANTICS §8).
            Interaction::Operation => req.raw_query = Some(q.into()),
            // R4 capabilities takes `mode` and `_format` only; anything else is not the
            // public capabilities request.
            Interaction::Capabilities => {
                for p in parse_query(q)? {
                    if !matches!(&*p.name, "mode" | "_format") {
                        return Err(Unclassifiable::Parameter {
                            name: p.name.into_owned(),
                            why: "not a capabilities parameter",
                        });
                    }
                }
            }
            // A Bundle POSTed to the base takes no search parameters.
            Interaction::BatchOrTransaction => {
                return Err(Unclassifiable::Query("a query on a batch/transaction"));
            }
            _ => req.add_query(q)?,
        }
    }
    Ok(req)
}

/// What the request line says before its query is read: interaction, type, id and the
/// requirements of the path alone; `has_query` is whether a non-empty query follows (a
/// type-level PUT/PATCH/DELETE needs one). [`classify`] adds the query; the audit record,
/// which only names the interaction, stops here (the query is parsed once, by the engine).
pub fn classify_path(
    method: &Method,
    path_below_base: &str,
    has_query: bool,
) -> Result<Request, Unclassifiable> {
    let path = path_below_base.strip_prefix('/').unwrap_or(path_below_base);
    if path.contains('%') {
        // path::check refuses encodings; a `%` here means the check was skipped.
        return Err(Unclassifiable::PathShape("percent-encoding in the path"));
    }
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    if segments.iter().any(|s| s.is_empty()) {
        return Err(Unclassifiable::PathShape("empty path segment"));
    }
    // HEAD is GET without a body (SMART-SEMANTICS A24).
    let get = method == Method::GET || method == Method::HEAD;
    let m = Verb::of(method, get);

    let req = match segments.as_slice() {
        // R4 http.html#transaction: "POST [base]"; #search: "GET [base]?" (system search).
        [] => match m {
            Verb::Get => {
                Request::new(Interaction::SearchSystem, None).needs(ScopeType::Any, Letters::S)
            }
            Verb::Post => {
                let mut r = Request::new(Interaction::BatchOrTransaction, None);
                r.body = BodyNeed::Bundle;
                r
            }
            _ => return Err(method_err(method, "[base]")),
        },
        // R4 http.html#capabilities: "GET [base]/metadata{?mode=...}".
        ["metadata"] => match m {
            Verb::Get => Request::new(Interaction::Capabilities, None),
            _ => return Err(method_err(method, "[base]/metadata")),
        },
        // R4 http.html#history: "GET [base]/_history{?...}"; SAL2: system history is `s`.
        ["_history"] => match m {
            Verb::Get => {
                Request::new(Interaction::HistorySystem, None).needs(ScopeType::Any, Letters::S)
            }
            _ => return Err(method_err(method, "[base]/_history")),
        },
        // R4 http.html#search: "POST [base]/_search".
        ["_search"] => match m {
            Verb::Post => {
                let mut r =
                    Request::new(Interaction::SearchSystem, None).needs(ScopeType::Any, Letters::S);
                r.body = BodyNeed::SearchForm;
                r
            }
            _ => return Err(method_err(method, "[base]/_search")),
        },
        [op] if op.starts_with('$') => operation(m, method, op, None, None, Level::System)?,
        [t] => {
            let t = resource_type(t)?;
            match m {
                // SAL2: `s` = type-level search.
                Verb::Get => Request::new(Interaction::SearchType, Some(t)).needs_on(t, Letters::S),
                // SAL2: `c` = type-level create.
                Verb::Post => Request::new(Interaction::Create, Some(t)).needs_on(t, Letters::C),
                // R4 http.html#cond-update, #patch, #3.1.0.7.1 (conditional delete): the
                // criteria are the query; without one the request means nothing.
                Verb::Put | Verb::Patch | Verb::Delete => {
                    if !has_query {
                        return Err(Unclassifiable::PathShape(
                            "PUT/PATCH/DELETE on a type needs search criteria",
                        ));
                    }
                    let (interaction, letter) = match m {
                        Verb::Put => (Interaction::Update, Letters::U),
                        Verb::Patch => (Interaction::Patch, Letters::U),
                        _ => (Interaction::Delete, Letters::D),
                    };
                    // SMART-SEMANTICS A8: the write letter plus `s` (the server searches).
                    let mut r =
                        Request::new(interaction, Some(t)).needs_on(t, letter.union(Letters::S));
                    r.conditional = true;
                    r
                }
                Verb::Other => return Err(method_err(method, "[base]/[type]")),
            }
        }
        [t, "_history"] => {
            let t = resource_type(t)?;
            match m {
                // SAL2: `s` = type-level history.
                Verb::Get => {
                    Request::new(Interaction::HistoryType, Some(t)).needs_on(t, Letters::S)
                }
                _ => return Err(method_err(method, "[base]/[type]/_history")),
            }
        }
        [t, "_search"] => {
            let t = resource_type(t)?;
            match m {
                // R4 http.html#search: "POST [base]/[type]/_search"; a search, not a create.
                Verb::Post => {
                    let mut r =
                        Request::new(Interaction::SearchType, Some(t)).needs_on(t, Letters::S);
                    r.body = BodyNeed::SearchForm;
                    r
                }
                _ => return Err(method_err(method, "[base]/[type]/_search")),
            }
        }
        [t, op] if op.starts_with('$') => {
            let t = resource_type(t)?;
            operation(m, method, op, Some(t), None, Level::Type)?
        }
        [t, id] => {
            let t = resource_type(t)?;
            let id = fhir_id(id)?;
            let (interaction, letter) = match m {
                // SAL2: `r` = read; `u` = update (also update-as-create) and patch; `d` = delete.
                Verb::Get => (Interaction::Read, Letters::R),
                Verb::Put => (Interaction::Update, Letters::U),
                Verb::Patch => (Interaction::Patch, Letters::U),
                Verb::Delete => (Interaction::Delete, Letters::D),
                _ => return Err(method_err(method, "[base]/[type]/[id]")),
            };
            Request::new(interaction, Some(t))
                .with_id(id)
                .needs_on(t, letter)
        }
        [t, id, "_history"] => {
            let t = resource_type(t)?;
            let id = fhir_id(id)?;
            match m {
                // SAL2: `r` = instance read, vread and instance history.
                Verb::Get => Request::new(Interaction::HistoryInstance, Some(t))
                    .with_id(id)
                    .needs_on(t, Letters::R),
                _ => return Err(method_err(method, "[base]/[type]/[id]/_history")),
            }
        }
        [t, id, "_history", vid] => {
            let t = resource_type(t)?;
            let id = fhir_id(id)?;
            let vid = fhir_id(vid)?;
            match m {
                Verb::Get => {
                    let mut r = Request::new(Interaction::Vread, Some(t))
                        .with_id(id)
                        .needs_on(t, Letters::R);
                    r.version = Some(vid.into());
                    r
                }
                _ => return Err(method_err(method, "[base]/[type]/[id]/_history/[vid]")),
            }
        }
        [t, id, op] if op.starts_with('$') => {
            let t = resource_type(t)?;
            let id = fhir_id(id)?;
            operation(m, method, op, Some(t), Some(id), Level::Instance)?
        }
        [_, _, "_history", ..] | [_, "_history", ..] => return Err(Unclassifiable::History),
        [c, id, target] if !target.starts_with('_') => {
            let c = resource_type(c)?;
            if COMPARTMENTS.binary_search(&c.name()).is_err() {
                return Err(Unclassifiable::NotACompartment(c.name().to_owned()));
            }
            let id = fhir_id(id)?;
            if !matches!(m, Verb::Get) {
                // R4 defines compartment search as GET; POST variants are not assumed.
                return Err(method_err(method, "[base]/[compartment]/[id]/[type]"));
            }
            // `Patient/[id]/*`: every type in the compartment; required as `*`, which is at
            // least as strict as "each compartment type" (SMART-SEMANTICS §4).
            let (rt, target) = if *target == "*" {
                (None, ScopeType::Any)
            } else {
                let t = resource_type(target)?;
                (Some(t), ScopeType::Type(t))
            };
            let mut r = Request::new(Interaction::SearchCompartment, rt).needs(target, Letters::S);
            r.compartment = Some((c, id.into()));
            r
        }
        _ => return Err(Unclassifiable::PathShape("not an R4 RESTful URL")),
    };
    Ok(req)
}

/// The method family of a request.
#[derive(Clone, Copy)]
enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Other,
}

impl Verb {
    fn of(method: &Method, get: bool) -> Verb {
        if get {
            Verb::Get
        } else if method == Method::POST {
            Verb::Post
        } else if method == Method::PUT {
            Verb::Put
        } else if method == Method::PATCH {
            Verb::Patch
        } else if method == Method::DELETE {
            Verb::Delete
        } else {
            Verb::Other
        }
    }
}

fn method_err(method: &Method, shape: &'static str) -> Unclassifiable {
    Unclassifiable::Method {
        method: method.as_str().to_owned(),
        shape,
    }
}

fn resource_type(name: &str) -> Result<ResourceType, Unclassifiable> {
    ResourceType::from_name(name).ok_or_else(|| Unclassifiable::UnknownType(name.to_owned()))
}

/// A FHIR id (R4 datatypes.html#id). `.` and `..` match the pattern but are dot segments
/// (SMART-SEMANTICS §12): refused here as well as by path::check.
fn fhir_id(s: &str) -> Result<&str, Unclassifiable> {
    if is_fhir_id(s) && s != "." && s != ".." {
        Ok(s)
    } else {
        Err(Unclassifiable::MalformedId(s.to_owned()))
    }
}

/// `$name` at a level. GET is allowed for operations that change nothing and POST always
/// (R4 operations.html); PUT/PATCH/DELETE are not defined for operations.
fn operation(
    m: Verb,
    method: &Method,
    op: &str,
    t: Option<ResourceType>,
    id: Option<&str>,
    level: Level,
) -> Result<Request, Unclassifiable> {
    if !matches!(m, Verb::Get | Verb::Post) {
        return Err(method_err(method, "an operation"));
    }
    let name = &op[1..];
    let mut bytes = name.bytes();
    let well_formed = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed || name.len() > 64 {
        return Err(Unclassifiable::MalformedOperation(op.to_owned()));
    }
    let mut r = Request::new(Interaction::Operation, t);
    r.id = id.map(Into::into);
    r.operation = Some(Operation {
        name: name.into(),
        level,
    });
    Ok(r)
}

// === impl Request ===

impl Request {
    fn new(interaction: Interaction, resource_type: Option<ResourceType>) -> Request {
        Request {
            interaction,
            resource_type,
            id: None,
            version: None,
            compartment: None,
            operation: None,
            raw_query: None,
            conditional: false,
            body: BodyNeed::None,
            filter: false,
            requirements: Vec::new(),
            params: Vec::new(),
            any_reached: false,
            type_narrowed: false,
        }
    }

    fn with_id(mut self, id: &str) -> Request {
        self.id = Some(id.into());
        self
    }

    fn needs(mut self, target: ScopeType, letters: Letters) -> Request {
        self.require(target, letters);
        self
    }

    fn needs_on(self, t: ResourceType, letters: Letters) -> Request {
        self.needs(ScopeType::Type(t), letters)
    }

    fn require(&mut self, target: ScopeType, letters: Letters) {
        match self.requirements.iter_mut().find(|r| r.target == target) {
            Some(r) => r.letters = r.letters.union(letters),
            None => self.requirements.push(Requirement { target, letters }),
        }
    }

    /// Makes a create conditional from its `If-None-Exist` header value (a query string
    /// without `?`; R4 http.html#ccreate). Adds `s` on the type (SMART-SEMANTICS A8: the
    /// server searches with the criteria and reveals whether they match) and the types the
    /// criteria reach (§5). Refused on anything but a plain create.
    pub fn with_if_none_exist(mut self, criteria: &str) -> Result<Request, Unclassifiable> {
        let t = match (self.interaction, self.resource_type, self.conditional) {
            (Interaction::Create, Some(t), false) => t,
            _ => return Err(Unclassifiable::Query("If-None-Exist on a non-create")),
        };
        if criteria.is_empty() {
            return Err(Unclassifiable::Query("empty If-None-Exist"));
        }
        self.conditional = true;
        self.require(ScopeType::Type(t), Letters::S);
        self.add_query(criteria)?;
        Ok(self)
    }

    /// Adds the parameters of a `POST .../_search` form body (`application/x-www-form-urlencoded`),
    /// which combine with the URL's (R4 http.html#search). Refused unless the request is one.
    pub fn add_search_form(&mut self, form: &str) -> Result<(), Unclassifiable> {
        if self.body != BodyNeed::SearchForm {
            return Err(Unclassifiable::Query(
                "a search form on a non-_search request",
            ));
        }
        self.add_query(form)
    }

    /// Adds what a query reaches: `_type` (system search), `_include`/`_revinclude`, chains,
    /// `_has` (SMART-SEMANTICS §5), and refuses what cannot be classified (`_query`).
    fn add_query(&mut self, q: &str) -> Result<(), Unclassifiable> {
        let mut types: Vec<ResourceType> = Vec::new();
        for p in parse_query(q)? {
            self.add_param(&p, self.resource_type, &mut types)?;
            self.params.push(SearchParam {
                name: p.name.into(),
                value: p.value.into(),
            });
        }
        if !types.is_empty() {
            if self.type_narrowed {
                return Err(Unclassifiable::Query("`_type` given more than once"));
            }
            self.type_narrowed = true;
            // R4 search.html#_type: system search narrowed to these types, so `s` on each
            // instead of on `*` (SMART-SEMANTICS §4, system search row); a `*` reached by an
            // include or chain stays.
            if !self.any_reached {
                self.requirements.retain(|r| r.target != ScopeType::Any);
            }
            let rest = std::mem::take(&mut self.requirements);
            for t in types {
                self.require(ScopeType::Type(t), Letters::S);
            }
            for r in rest {
                self.require(r.target, r.letters);
            }
        }
        Ok(())
    }

    /// Adds what parameter `p`, evaluated on resources of type `on` (`None`: any type),
    /// reaches.
    fn add_param(
        &mut self,
        p: &Param<'_>,
        on: Option<ResourceType>,
        types: &mut Vec<ResourceType>,
    ) -> Result<(), Unclassifiable> {
        let name: &str = &p.name;
        let bad = |why| Unclassifiable::Parameter {
            name: name.to_owned(),
            why,
        };
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name, None),
        };
        match base {
            // R4 search.html#include: `_include=Src:param[:Target]`, `_include=*`,
            // `:iterate`; `_revinclude=Src:param[:Target]`.
            "_include" | "_revinclude" => {
                if !matches!(modifier, None | Some("iterate")) {
                    return Err(bad("unknown _include/_revinclude modifier"));
                }
                let reach = include_reach(base == "_revinclude", &p.value).map_err(bad)?;
                match reach {
                    Reach::Type(t) => self.require(ScopeType::Type(t), Letters::S),
                    Reach::Param(src, param) => self.reach_through(Some(src), param),
                    Reach::Any => self.reach_any(),
                }
                Ok(())
            }
            // R4 search.html#has: `_has:Type:param:[_has:...:]name=value`; the reverse chain
            // searches Type (SMART-SEMANTICS §5: `s` on each `_has` type).
            "_has" => {
                let mut rest = modifier.ok_or_else(|| bad("_has without a type"))?;
                loop {
                    let mut parts = rest.splitn(3, ':');
                    let (t, param, tail) = match (parts.next(), parts.next(), parts.next()) {
                        (Some(t), Some(pa), Some(tail)) => (t, pa, tail),
                        _ => return Err(bad("_has must be _has:Type:param:name")),
                    };
                    let t = resource_type(t)?;
                    if !is_param_name(param) {
                        return Err(bad("malformed _has reference parameter"));
                    }
                    self.require(ScopeType::Type(t), Letters::S);
                    let has_on = Some(t);
                    match tail.strip_prefix("_has:") {
                        Some(next) => rest = next,
                        None => {
                            // The final name may itself chain or carry a modifier.
                            let inner = Param {
                                name: Cow::Borrowed(tail),
                                value: p.value.clone(),
                            };
                            if tail.starts_with('_') {
                                return Err(bad("_has ending in a special parameter"));
                            }
                            return self.add_param(&inner, has_on, types);
                        }
                    }
                }
            }
            // R4 search.html#_type: only meaningful on a system search.
            "_type" => {
                if self.interaction != Interaction::SearchSystem || modifier.is_some() {
                    return Err(bad("_type outside a system search"));
                }
                if !types.is_empty() || self.type_narrowed {
                    return Err(Unclassifiable::Query("`_type` given more than once"));
                }
                for v in p.value.split(',') {
                    types.push(resource_type(v)?);
                }
                Ok(())
            }
            // SMART-SEMANTICS §4: a named query cannot be classified.
            "_query" => Err(bad("named queries cannot be classified")),
            "_filter" => {
                self.filter = true;
                Ok(())
            }
            _ => {
                if !is_param_name(base.split('.').next().unwrap_or(base)) {
                    return Err(bad("malformed parameter name"));
                }
                self.add_chain(name, on).map_err(|e| match e {
                    ChainError::Type(t) => Unclassifiable::UnknownType(t),
                    ChainError::Shape(why) => bad(why),
                })
            }
        }
    }

    /// Chained parameters (R4 search.html#chaining): `subject:Patient.name`,
    /// `subject.name`, `a.b:Org.c`. Each link searches its target types: the type named by a
    /// `:Type` modifier, else the R4 target types of the reference parameter on the types
    /// reached so far (`compartment::reference_targets`; `*` when a type is not known or the
    /// parameter is not in the table, which is never weaker). A `:Type` modifier without a
    /// chain only narrows a reference and reaches nothing, but must still name an R4 type.
    fn add_chain(&mut self, name: &str, on: Option<ResourceType>) -> Result<(), ChainError> {
        let links: Vec<&str> = name.split('.').collect();
        let chained = links.len() > 1;
        // The types the current link is evaluated on; `None` = any type.
        let mut current: Option<Vec<ResourceType>> = on.map(|t| vec![t]);
        for (i, link) in links.iter().enumerate() {
            let last = i + 1 == links.len();
            let (pname, modifier) = match link.split_once(':') {
                Some((b, m)) => (b, Some(m)),
                None => (*link, None),
            };
            if !is_param_name(pname) {
                return Err(ChainError::Shape("malformed parameter name"));
            }
            let typed = match modifier {
                Some(m) if m.starts_with(|c: char| c.is_ascii_uppercase()) => {
                    Some(ResourceType::from_name(m).ok_or_else(|| ChainError::Type(m.to_owned()))?)
                }
                Some(m) => {
                    // Lowercase modifiers (`:exact`, `:missing`, ...) only on the last link.
                    if !last || !m.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
                        return Err(ChainError::Shape("modifier inside a chain"));
                    }
                    None
                }
                None => None,
            };
            if chained && !last {
                let next = match typed {
                    Some(t) => Some(vec![t]),
                    None => targets_of(current.as_deref(), pname),
                };
                match &next {
                    Some(ts) => {
                        for &t in ts {
                            self.require(ScopeType::Type(t), Letters::S);
                        }
                    }
                    None => self.reach_any(),
                }
                current = next;
            }
        }
        Ok(())
    }

    /// `s` on every target type of reference parameter `param` of `src`.
    fn reach_through(&mut self, src: Option<ResourceType>, param: &str) {
        match targets_of(src.map(|t| [t]).as_ref().map(|a| &a[..]), param) {
            Some(ts) => {
                for t in ts {
                    self.require(ScopeType::Type(t), Letters::S);
                }
            }
            None => self.reach_any(),
        }
    }

    fn reach_any(&mut self) {
        self.any_reached = true;
        self.require(ScopeType::Any, Letters::S);
    }
}

/// The union of the R4 target types of reference parameter `param` on each of `on`; `None`
/// (reach `*`) when `on` is unknown, `param` is `*`, a type lacks the parameter, or the
/// union is every type (`*` reads better and is as strict).
fn targets_of(on: Option<&[ResourceType]>, param: &str) -> Option<Vec<ResourceType>> {
    let on = on?;
    if param == "*" {
        return None;
    }
    let mut out: Vec<ResourceType> = Vec::new();
    for &t in on {
        for &target in compartment::reference_targets(t, param)? {
            if !out.contains(&target) {
                out.push(target);
            }
        }
    }
    if out.is_empty() || out.len() >= super::r4::RESOURCE_TYPES.len() {
        return None;
    }
    Some(out)
}

enum ChainError {
    Type(String),
    Shape(&'static str),
}

/// What an `_include`/`_revinclude` value reaches (SMART-SEMANTICS §5).
enum Reach<'v> {
    /// One type (`_include=Src:param:Target`, `_revinclude=Src:param`).
    Type(ResourceType),
    /// The targets of a reference parameter (`_include=Src:param`).
    Param(ResourceType, &'v str),
    /// Everything (`_include=*`).
    Any,
}

fn include_reach(rev: bool, value: &str) -> Result<Reach<'_>, &'static str> {
    if value == "*" {
        // `_include=*`: everything referenced.
        return Ok(Reach::Any);
    }
    let mut parts = value.split(':');
    let (src, param, target) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(p), t, None) => (s, p, t),
        _ => return Err("must be Source:param[:Target]"),
    };
    let src = ResourceType::from_name(src).ok_or("unknown source type")?;
    if !(is_param_name(param) || param == "*") {
        return Err("malformed include parameter");
    }
    let target = match target {
        Some(t) => Some(ResourceType::from_name(t).ok_or("unknown target type")?),
        None => None,
    };
    Ok(if rev {
        // `_revinclude=Src:param`: the included resources are of type Src.
        Reach::Type(src)
    } else {
        // `_include=Src:param:Target` reaches Target; without Target, every R4 target of
        // `param` (R4-SP target list).
        match target {
            Some(t) => Reach::Type(t),
            None => Reach::Param(src, param),
        }
    })
}

/// A search parameter name: letters, digits, `-` and `_` (R4 SearchParameter.code).
fn is_param_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One decoded query parameter.
#[derive(Debug, Clone)]
struct Param<'q> {
    name: Cow<'q, str>,
    value: Cow<'q, str>,
}

/// The percent-decoded parameters of a query string (operation parameters, `_typeFilter`
/// values), read exactly as searches are.
pub fn query_params(q: &str) -> Result<Vec<SearchParam>, Unclassifiable> {
    Ok(parse_query(q)?
        .into_iter()
        .map(|p| SearchParam {
            name: p.name.into(),
            value: p.value.into(),
        })
        .collect())
}

/// Splits and percent-decodes a query (R4 search.html#2.21.1.1: `application/x-www-form-
/// urlencoded` rules, so `+` is a space in values). Repeated parameters are kept as separate
/// entries (they AND together). Refuses what servers read differently: `;` separators, `+`
/// or double encoding in names, invalid UTF-8.
fn parse_query(q: &str) -> Result<Vec<Param<'_>>, Unclassifiable> {
    if q.contains(';') {
        return Err(Unclassifiable::Query("`;` is a separator for some servers"));
    }
    let mut out = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if n.contains('+') {
            return Err(Unclassifiable::Query("`+` in a parameter name"));
        }
        let name = decode(n)?;
        if name.contains('%') {
            // A server that decodes twice would read another name.
            return Err(Unclassifiable::Query("double percent-encoding in a name"));
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return Err(Unclassifiable::Query("malformed parameter name"));
        }
        let value = if v.contains('+') {
            Cow::Owned(decode(&v.replace('+', " "))?.into_owned())
        } else {
            decode(v)?
        };
        out.push(Param { name, value });
    }
    Ok(out)
}

fn decode(s: &str) -> Result<Cow<'_, str>, Unclassifiable> {
    if !s.is_ascii() {
        return Err(Unclassifiable::Query("non-ASCII in the query"));
    }
    percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| Unclassifiable::Query("percent-encoding is not UTF-8"))
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.target, self.letters)
    }
}

#[cfg(test)]
mod tests;
