//! The decision procedure of SMART-SEMANTICS §3.5 for one request under the FHIR base:
//! path safety and public discovery, classification ([`crate::policy::fhir`]), then every
//! requirement (letters on a type) met by some grant, each grant with its own confinement
//! (§2: "Confinement is decided per grant, not per token").
//!
//! A requirement letter is met by a grant of a covering type (or `*`) holding the letter:
//! - `user/` and `system/` grants are unconfined;
//! - `patient/` grants need the token's patient and must be confined to it (§3.3): decided
//!   here from the URL, the query and the body where they can tell, else handed to the proxy
//!   as a response check (reads) or a stored-version check (update, patch, delete); types
//!   outside the compartment follow `patient_scopes_outside_compartment` (§3.4);
//! - a granular grant (`?category=...`) must also hold for the data (§6): a search provably
//!   narrowed to its query (or narrowed by fhirwall), a read checked on the response, a
//!   written body matching it.
//!
//! Among the grants that meet a letter, an unconditional one wins over checks, and checks
//! of several grants are alternatives (any one passing is enough).

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use http::Method;
use serde_json::Value;

use super::check::{self, BodyRefusal};
use super::{
    compartment, Alternative, Assessment, BatchPlan, Checks, Classified, EntryPlan, FhirRequest,
    FhirSection, GranularSearch, OutsideCompartment, ResourceCheck, StoredCheck, Trace, Verdict,
};
use crate::auth::Principal;
use crate::policy::decision::{Decision, Denial, DenyReason, Permit};
use crate::policy::fhir::{self, BodyNeed, Interaction, Level, Request, Requirement};
use crate::policy::patient::is_fhir_id;
use crate::policy::r4::ResourceType;
use crate::policy::scope::{Context, Evaluation, GranularQuery, Letters, ScopeType};

/// Interaction codes used in `fhir:<code>` route ids (low cardinality for metrics).
pub(super) const ROUTE_CODES: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "history-system",
    "create",
    "search-type",
    "search-system",
    "search-compartment",
    "capabilities",
    "smart-configuration",
    "operation",
    "batch",
    "transaction",
    "batch-or-transaction",
    "page",
    "unclassified",
];

// Rules, with where they come from (the trace's `rule`).
const R_PATH: &str = "SMART-SEMANTICS §12 (path safety)";
const R_PUBLIC: &str = "SMART-SEMANTICS §9 (public discovery)";
const R_CLASSIFY: &str = "FHIR R4 http.html, SMART-SEMANTICS §4 (classification)";
const R_TOKEN: &str = "RFC 6750 §3.1 (bearer token)";
const R_PAGING: &str = "SMART-SEMANTICS A22 (page links)";
const R_LETTERS: &str = "SAL2 scopes c r u d s, SMART-SEMANTICS §3.5";
const R_BODY: &str = "FHIR R4 http.html#create/#update (request body)";
const R_BUNDLE: &str = "SAL2 batch/transaction, SMART-SEMANTICS §7";
const R_OPERATION: &str = "SMART-SEMANTICS §8 (operations)";
const R_DECISION: &str = "SMART-SEMANTICS §3.5 step 5 (decision)";

/// The letters in `cruds` order.
const LETTERS: [Letters; 5] = [Letters::C, Letters::R, Letters::U, Letters::D, Letters::S];

pub(super) fn assess(
    sec: &FhirSection,
    req: &FhirRequest<'_>,
    principal: Option<&Principal>,
) -> Assessment {
    let mut e = Engine {
        sec,
        principal,
        patient: principal
            .and_then(|p| p.patient.as_deref())
            .filter(|p| is_fhir_id(p)),
        trace: Trace::default(),
        classified: None,
    };
    e.top(req)
}

/// One assessment in progress.
struct Engine<'a> {
    sec: &'a FhirSection,
    principal: Option<&'a Principal>,
    /// The token's patient context, when it is a valid FHIR id (else `patient/` grants are
    /// unusable: SMART-SEMANTICS A15).
    patient: Option<&'a str>,
    trace: Trace,
    /// The request's audit facts, once classified.
    classified: Option<Classified>,
}

/// What a written body or patch looks like, for the checks that need it.
#[derive(Clone, Copy)]
enum Body<'v> {
    /// No body is involved (reads, searches, deletes).
    None,
    /// A resource to create or update.
    Resource(&'v Value),
    /// A patch; `Some` when it is a JSON Patch fhirwall could parse.
    Patch(Option<&'v Value>),
}

/// Options of one decision.
#[derive(Clone, Copy)]
struct Opts<'m> {
    method: &'m Method,
    /// `granular_search: narrow` may append query items (not for Bundle entries, whose URL
    /// fhirwall does not rewrite).
    narrow_allowed: bool,
    /// The batch entry index, for stored checks.
    entry: Option<usize>,
}

/// An allowed request (or entry), with what remains to be checked.
struct Allowed {
    code: &'static str,
    required: String,
    granted_by: String,
    response: Option<ResourceCheck>,
    before: Vec<StoredCheck>,
    add_query: Option<Box<str>>,
    remember_pages: bool,
}

type Outcome = Result<Allowed, Denial>;

/// How a `patient/` grant's confinement is judged for one letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judge {
    /// Instance read, vread, history: `Patient/<id>` by id, else on the response.
    InstanceRead,
    /// Instance update, delete: `Patient/<id>` by id, else the stored version.
    InstanceWrite,
    /// Instance patch: as a write, and the patch must leave the patient elements alone.
    Patch,
    /// Create: the body.
    Create,
    /// A search (or the criteria of a conditional write), and what it reaches.
    Search,
    /// The write letter of a conditional update/patch/delete: criteria confined, body.
    ConditionalWrite,
    /// `Patient/<id>/$everything`: confined when `<id>` is the patient.
    PatientInstance,
    /// Cannot be confined to a patient (system/type history, system search, type-level
    /// `$everything`).
    Unconfinable,
    /// Bulk export: `user/` and `system/` grants only.
    NotForPatient,
}

/// What a grant's use depends on.
#[derive(Debug, Clone)]
enum Cond {
    /// Nothing: allowed as it is.
    Free,
    /// The response must pass this alternative.
    Response(Alternative),
    /// The stored version must pass this alternative.
    Stored(Alternative),
    /// Allowed once these query items are appended.
    Narrow(Box<str>),
}

/// Why a grant that holds a letter cannot be used for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    NoPatient,
    OtherPatient,
    Unconfined,
    Unconfinable,
    OutsideDenied,
    Body(BodyRefusal),
    PatchUnchecked,
    CreatePatient,
    NotForPatient,
    GranularNotNarrowed,
    GranularUnprovable,
    GranularBody,
    GranularPatch,
}

/// The request facts confinement and granular narrowing are judged on.
struct Facts<'r> {
    req: &'r Request,
    /// The search (or conditional criteria) is confined to the token's patient (§3.3).
    confined: bool,
    /// The search has `_include`/`_revinclude`: returned resources are checked.
    includes: bool,
}

/// The state of one requirement letter while grants are tried.
struct LetterResult {
    held: bool,
    conds: Vec<(usize, Cond)>,
    whys: Vec<Why>,
}

// === impl Engine ===

impl<'a> Engine<'a> {
    fn top(&mut self, req: &FhirRequest<'_>) -> Assessment {
        let sec = self.sec;
        // The proxy calls only for paths under the base; anything else is refused.
        let below = match req.path.strip_prefix(&*sec.base_path) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => {
                return self.deny_early(
                    "unclassified",
                    DenyReason::NoRoute,
                    "the path is not under the FHIR base",
                )
            }
        };
        if let Err(e) = crate::policy::path::check(req.path) {
            self.trace.step(R_PATH, e.to_string());
            return self.deny_early("unclassified", DenyReason::UnsafePath, e.to_string());
        }
        let get = req.method == Method::GET || req.method == Method::HEAD;
        // SAL2 conformance: "FHIR endpoints requiring authorization SHALL serve a JSON
        // document at ... /.well-known/smart-configuration"; fetched before any token.
        if below == "/.well-known/smart-configuration" && get {
            self.trace
                .step(R_PUBLIC, "SMART configuration: public, no token needed");
            return self.allow_public("smart-configuration");
        }
        let classified = fhir::classify(req.method, below, req.query).and_then(|r| {
            match req.if_none_exist {
                Some(c) if r.interaction == Interaction::Create => r.with_if_none_exist(c),
                // If-None-Exist only means something on a create; elsewhere a server might
                // still act on it, so it is refused rather than ignored.
                Some(_) => Err(fhir::Unclassifiable::Query("If-None-Exist on a non-create")),
                None => Ok(r),
            }
        });
        if let Ok(r) = &classified {
            if r.interaction == Interaction::Capabilities {
                self.trace
                    .step(R_PUBLIC, "capabilities (metadata): public, no token needed");
                return self.allow_public("capabilities");
            }
        }
        // SMART-SEMANTICS §3.5 step 2: everything else needs a token before it is looked
        // at further (RFC 6750 §3.1: no credentials -> 401 without an error code).
        if self.principal.is_none() {
            self.trace.step(R_TOKEN, "no bearer token");
            let code = classified.as_ref().map_or("unclassified", code_of);
            return self.deny_early(
                code,
                DenyReason::MissingToken,
                "this FHIR request requires a bearer token",
            );
        }
        // Page links carry no type: only a remembered search may use them (the proxy looks
        // them up first and assesses the original search instead).
        if below.trim_start_matches('/').is_empty()
            && req.query.is_some_and(|q| self.is_page_link(q))
        {
            self.trace.step(
                R_PAGING,
                "a page link at the base that is not a remembered search's",
            );
            return self.deny_early("page", DenyReason::NoRoute, "unknown or expired page link");
        }
        let mut classified = match classified {
            Ok(r) => r,
            Err(e) => {
                // SMART-SEMANTICS §12, ISSUE02 "Unknown resource types are refused": what
                // cannot be classified is a malformed request (400), never forwarded.
                self.trace.step(R_CLASSIFY, format!("refused: {e}"));
                return self.deny_early("unclassified", DenyReason::BadRequest, e.to_string());
            }
        };
        let code = code_of(&classified);
        self.classified = Some(Classified {
            interaction: code,
            resource_type: classified.resource_type,
            resource_id: classified
                .id
                .clone()
                .or_else(|| classified.compartment.as_ref().map(|(_, id)| id.clone())),
        });

        // Bodies the decision depends on (SMART-SEMANTICS §3.3 body, §4 POST _search, §7).
        let needs_body = match classified.body {
            BodyNeed::SearchForm | BodyNeed::Bundle => true,
            BodyNeed::None => matches!(
                classified.interaction,
                Interaction::Create | Interaction::Update | Interaction::Patch
            ),
        };
        let Some(body) = req.body.filter(|_| needs_body) else {
            if !needs_body {
                self.trace.step(R_CLASSIFY, describe(&classified));
                let opts = Opts {
                    method: req.method,
                    narrow_allowed: true,
                    entry: None,
                };
                let out = self.decide(&classified, Body::None, opts);
                return self.finish(out);
            }
            // Refuse what no body could make allowed before reading one (a `_search` form
            // or a Bundle can still change the requirements; a write's body cannot).
            if classified.body == BodyNeed::None {
                if let Err(d) = self.precheck(&classified) {
                    return self.finish(Err(d));
                }
            }
            self.trace.step(R_CLASSIFY, "the request body is needed");
            return Assessment::NeedsBody {
                max: sec.max_body_bytes,
            };
        };
        if body.len() > sec.max_body_bytes {
            // The proxy enforces the bound; a caller that did not is refused, not trusted.
            return self.deny_early(
                code,
                DenyReason::BadRequest,
                "the request body is too large",
            );
        }
        match classified.body {
            BodyNeed::Bundle => self.bundle(req, body),
            BodyNeed::SearchForm => {
                let form = match req.content_type.map(media_type) {
                    Some("application/x-www-form-urlencoded") => std::str::from_utf8(body).ok(),
                    _ => None,
                };
                let Some(form) = form else {
                    return self.deny_early(
                        code,
                        DenyReason::BadRequest,
                        "POST _search needs an application/x-www-form-urlencoded body",
                    );
                };
                if let Err(e) = classified.add_search_form(form) {
                    self.trace.step(R_CLASSIFY, format!("refused: {e}"));
                    return self.deny_early(code, DenyReason::BadRequest, e.to_string());
                }
                self.trace.step(R_CLASSIFY, describe(&classified));
                let opts = Opts {
                    method: req.method,
                    // The search parameters are in the body, which is forwarded unchanged.
                    narrow_allowed: false,
                    entry: None,
                };
                let out = self.decide(&classified, Body::None, opts);
                self.finish(out)
            }
            BodyNeed::None => {
                self.trace.step(R_CLASSIFY, describe(&classified));
                let opts = Opts {
                    method: req.method,
                    narrow_allowed: false,
                    entry: None,
                };
                if classified.interaction == Interaction::Patch {
                    let json = match req.content_type.map(media_type) {
                        Some("application/json-patch+json") => {
                            serde_json::from_slice::<Value>(body).ok()
                        }
                        _ => None,
                    };
                    let out = self.decide(&classified, Body::Patch(json.as_ref()), opts);
                    return self.finish(out);
                }
                let parsed = match self.parse_resource(&classified, req.content_type, body) {
                    Ok(v) => v,
                    Err(detail) => {
                        self.trace.step(R_BODY, format!("refused: {detail}"));
                        return self.deny_early(code, DenyReason::BadRequest, detail);
                    }
                };
                let out = self.decide(&classified, Body::Resource(&parsed), opts);
                self.finish(out)
            }
        }
    }

    /// True when a query at the base carries a page parameter (names compared after
    /// percent-decoding, as the server reads them). An unreadable query is left to the
    /// classifier, which refuses it.
    fn is_page_link(&self, q: &str) -> bool {
        let params = self.sec.page_parameters.iter();
        match fhir::query_params(q) {
            Ok(ps) => ps
                .iter()
                .any(|p| params.clone().any(|name| **name == *p.name)),
            Err(_) => false,
        }
    }

    /// A create/update body: JSON, a resource of the URL's type, and for an update the
    /// URL's id (R4 http.html#update: "the request body SHALL be a Resource with an id
    /// element that has an identical value to the [id] in the URL").
    fn parse_resource(
        &self,
        req: &Request,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Value, String> {
        if let Some(ct) = content_type.map(media_type) {
            if !is_json(ct) {
                return Err(format!("fhirwall checks FHIR JSON bodies only, not `{ct}`"));
            }
        }
        let v: Value =
            serde_json::from_slice(body).map_err(|_| "the body is not valid JSON".to_owned())?;
        check_resource_shape(req, &v)?;
        Ok(v)
    }

    /// Before reading a body: refuse when the token lacks the letters whatever the body.
    fn precheck(&mut self, req: &Request) -> Result<(), Denial> {
        let Some(principal) = self.principal else {
            return Ok(());
        };
        let mut missing = Vec::new();
        for rq in &req.requirements {
            let held = principal
                .scopes
                .resource_scopes()
                .filter(|(_, g)| g.resource().covers(rq.target))
                .fold(Letters::NONE, |acc, (_, g)| acc.union(g.letters()));
            let lacking = rq.letters.difference(held);
            if !lacking.is_empty() {
                missing.push((rq.target, lacking, Vec::new()));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(self.denial(code_of(req), &req.requirements, &missing))
    }

    /// Decides one classified request (top level or Bundle entry).
    fn decide(&mut self, req: &Request, body: Body<'_>, opts: Opts<'_>) -> Outcome {
        if req.interaction == Interaction::Operation {
            return self.operation(req, opts);
        }
        let facts = self.facts(req);
        let primary = primary_target(req);
        let judge = |rq: &Requirement, letter: Letters| -> Judge {
            let is_primary =
                req.interaction == Interaction::SearchSystem || Some(rq.target) == primary;
            if !is_primary {
                // SMART-SEMANTICS §5: what includes, chains and `_has` reach inherits the
                // primary search's confinement.
                return Judge::Search;
            }
            match req.interaction {
                Interaction::Read | Interaction::Vread | Interaction::HistoryInstance => {
                    Judge::InstanceRead
                }
                Interaction::Update | Interaction::Delete | Interaction::Patch
                    if req.conditional =>
                {
                    if letter == Letters::S {
                        Judge::Search
                    } else {
                        Judge::ConditionalWrite
                    }
                }
                Interaction::Update | Interaction::Delete => Judge::InstanceWrite,
                Interaction::Patch => Judge::Patch,
                Interaction::Create if letter == Letters::S => Judge::Search,
                Interaction::Create => Judge::Create,
                Interaction::SearchType | Interaction::SearchCompartment => Judge::Search,
                _ => Judge::Unconfinable,
            }
        };
        let mut out = self.evaluate(req, &req.requirements, &judge, &facts, body, opts)?;
        if out.response.is_some() && !json_format(&req.params) {
            // The response must be read to be checked; fhirwall reads FHIR JSON only.
            self.trace.step(
                R_CLASSIFY,
                "the response must be checked, and `_format` asks for something other than JSON",
            );
            return Err(Denial::new(
                DenyReason::BadRequest,
                "this response is checked by fhirwall, which needs it as JSON: remove `_format` or ask for json",
            )
            .on_route(self.sec.route_id(code_of(req)), Arc::from(out.required)));
        }
        out.remember_pages = matches!(
            req.interaction,
            Interaction::SearchType
                | Interaction::SearchSystem
                | Interaction::SearchCompartment
                | Interaction::HistoryInstance
                | Interaction::HistoryType
                | Interaction::HistorySystem
        );
        Ok(out)
    }

    fn facts<'r>(&self, req: &'r Request) -> Facts<'r> {
        let includes = req.params.iter().any(|p| {
            let base = p.name.split(':').next().unwrap_or("");
            base == "_include" || base == "_revinclude"
        });
        let confined = match self.patient {
            Some(p) => search_confined(req, p, &self.sec.server_urls),
            None => false,
        };
        Facts {
            req,
            confined,
            includes,
        }
    }

    /// Meets every letter of every requirement, or says what is missing.
    fn evaluate(
        &mut self,
        req: &Request,
        reqs: &[Requirement],
        judge: &dyn Fn(&Requirement, Letters) -> Judge,
        facts: &Facts<'_>,
        body: Body<'_>,
        opts: Opts<'_>,
    ) -> Outcome {
        let Some(principal) = self.principal else {
            return Err(Denial::new(DenyReason::MissingToken, "no token"));
        };
        let mut free: Vec<ScopeType> = Vec::new();
        let mut response: Vec<Alternative> = Vec::new();
        let mut stored: Vec<Alternative> = Vec::new();
        let mut narrow: Option<Box<str>> = None;
        let mut granted: Vec<usize> = Vec::new();
        let mut missing: Vec<(ScopeType, Letters, Vec<Why>)> = Vec::new();
        for rq in reqs {
            for letter in LETTERS.into_iter().filter(|&l| rq.letters.contains(l)) {
                let j = judge(rq, letter);
                let r = self.letter(principal, rq.target, letter, j, facts, body, opts);
                if !r.held {
                    add_missing(&mut missing, rq.target, letter, &[]);
                    continue;
                }
                let pick = pick(&r.conds);
                if pick.is_empty() {
                    add_missing(&mut missing, rq.target, letter, &r.whys);
                    continue;
                }
                let read_like = letter == Letters::R || letter == Letters::S;
                for (i, cond) in pick {
                    if !granted.contains(&i) {
                        granted.push(i);
                    }
                    match cond {
                        Cond::Free => {
                            if read_like && !free.contains(&rq.target) {
                                free.push(rq.target);
                            }
                        }
                        Cond::Response(a) => {
                            if !response.contains(&a) {
                                response.push(a)
                            }
                        }
                        Cond::Stored(a) => {
                            if !stored.contains(&a) {
                                stored.push(a)
                            }
                        }
                        Cond::Narrow(q) => {
                            narrow.get_or_insert(q);
                        }
                    }
                }
                let grants: Vec<&str> = r
                    .conds
                    .iter()
                    .map(|(i, _)| principal.scopes.text_at(*i))
                    .collect();
                self.trace.step(
                    R_LETTERS,
                    format!(
                        "{}.{letter} met by {}{}",
                        rq.target,
                        grants.join(" "),
                        cond_note(&r.conds)
                    ),
                );
            }
        }
        if !missing.is_empty() {
            return Err(self.denial(code_of(req), reqs, &missing));
        }
        let bases = self.sec.server_urls.clone();
        let before = match (stored.is_empty(), req.resource_type, &req.id) {
            (false, Some(t), Some(id)) => {
                match ResourceCheck::resources(Vec::new(), stored, bases.clone()) {
                    Some(check) => vec![StoredCheck {
                        path: format!("{}/{id}", t.name()).into(),
                        check,
                        entry: opts.entry,
                    }],
                    None => Vec::new(),
                }
            }
            (true, _, _) => Vec::new(),
            // A stored check without an instance cannot happen (only instance writes get
            // one); refuse rather than forward unchecked.
            _ => {
                return Err(Denial::new(
                    DenyReason::BadRequest,
                    "the stored version to check cannot be determined",
                ))
            }
        };
        Ok(Allowed {
            code: code_of(req),
            required: render_requirements(reqs),
            granted_by: render_granted(principal, &granted),
            response: ResourceCheck::resources(free, response, bases),
            before,
            add_query: narrow,
            remember_pages: false,
        })
    }

    /// Tries every grant on one letter.
    #[allow(clippy::too_many_arguments)]
    fn letter(
        &self,
        principal: &Principal,
        target: ScopeType,
        letter: Letters,
        judge: Judge,
        facts: &Facts<'_>,
        body: Body<'_>,
        opts: Opts<'_>,
    ) -> LetterResult {
        let mut r = LetterResult {
            held: false,
            conds: Vec::new(),
            whys: Vec::new(),
        };
        for (i, g) in principal.scopes.resource_scopes() {
            if !g.resource().covers(target) || !g.letters().contains(letter) {
                continue;
            }
            r.held = true;
            let cond = match g.context() {
                // SMART-SEMANTICS §2: user/ and system/ are not confined to a patient.
                Context::User | Context::System => Ok(Cond::Free),
                Context::Patient => self.patient_cond(judge, target, letter, facts, body),
            };
            let cond = match (cond, g.query()) {
                (Ok(c), Some(q)) => self.granular(c, q, judge, target, letter, facts, body, opts),
                (c, _) => c,
            };
            match cond {
                Ok(c) => r.conds.push((i, c)),
                Err(w) => {
                    if !r.whys.contains(&w) {
                        r.whys.push(w)
                    }
                }
            }
        }
        if r.conds.is_empty()
            && r.whys.contains(&Why::GranularNotNarrowed)
            && judge == Judge::Search
            && is_primary_search(facts.req, target)
        {
            if let Some(grants) = self.granular_union(principal, target, facts, body) {
                r.conds = grants.into_iter().map(|i| (i, Cond::Free)).collect();
            }
        }
        r
    }

    /// SMART-SEMANTICS §6 item 2 [interpretation]: a comma list on one parameter whose
    /// values come from several granted single-item granular scopes on that parameter is
    /// covered by their union. Returns the grants used.
    fn granular_union(
        &self,
        principal: &Principal,
        target: ScopeType,
        facts: &Facts<'_>,
        body: Body<'_>,
    ) -> Option<Vec<usize>> {
        // Usable single-item granular `s` grants on the type: (index, name, decoded value).
        let mut items: Vec<(usize, &str, String)> = Vec::new();
        for (i, g) in principal.scopes.resource_scopes() {
            let Some(q) = g.query() else { continue };
            if !g.resource().covers(target) || !g.letters().contains(Letters::S) {
                continue;
            }
            let usable = match g.context() {
                Context::User | Context::System => true,
                Context::Patient => matches!(
                    self.patient_cond(Judge::Search, target, Letters::S, facts, body),
                    Ok(Cond::Free)
                ),
            };
            let mut pairs = q.pairs();
            if let (true, Some((n, v)), None) = (usable, pairs.next(), pairs.next()) {
                let v = percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned();
                items.push((i, n, v));
            }
        }
        for p in &facts.req.params {
            let values: Vec<&str> = p.value.split(',').collect();
            let mut used = Vec::new();
            let covered = values.iter().all(|v| {
                match items.iter().find(|(_, n, iv)| *n == &*p.name && iv == v) {
                    Some((i, _, _)) => {
                        if !used.contains(i) {
                            used.push(*i);
                        }
                        true
                    }
                    None => false,
                }
            });
            if covered && !used.is_empty() {
                return Some(used);
            }
        }
        None
    }

    /// SMART-SEMANTICS §3.3 and §3.4 for a `patient/` grant.
    fn patient_cond(
        &self,
        judge: Judge,
        target: ScopeType,
        letter: Letters,
        facts: &Facts<'_>,
        body: Body<'_>,
    ) -> Result<Cond, Why> {
        let p = self.patient.ok_or(Why::NoPatient)?;
        if judge == Judge::NotForPatient {
            return Err(Why::NotForPatient);
        }
        if let ScopeType::Type(t) = target {
            if !t.in_patient_compartment() {
                // §3.4: allowed without patient filtering unless the policy refuses.
                return match self.sec.outside_compartment {
                    OutsideCompartment::Allow => Ok(Cond::Free),
                    OutsideCompartment::Deny => Err(Why::OutsideDenied),
                };
            }
        }
        let req = facts.req;
        let is_patient = is_patient_type(target);
        let own_id = req.id.as_deref() == Some(p);
        let alt = || Alternative {
            target,
            patient: Some(Arc::from(p)),
            outside_ok: self.sec.outside_compartment == OutsideCompartment::Allow,
            filter: None,
        };
        let body_ok = |t: ScopeType| -> Result<(), Why> {
            match (t, body) {
                (ScopeType::Type(t), Body::Resource(b)) => {
                    check::body_in_compartment(t, b, p, &self.sec.server_urls).map_err(Why::Body)
                }
                (_, _) => Err(Why::Body(BodyRefusal::NoPatient)),
            }
        };
        let patch_ok = |t: ScopeType| -> Result<(), Why> {
            match (t, body) {
                (ScopeType::Type(t), Body::Patch(Some(v)))
                    if check::json_patch_keeps_compartment(t, v) =>
                {
                    Ok(())
                }
                _ => Err(Why::PatchUnchecked),
            }
        };
        match judge {
            Judge::InstanceRead => {
                if is_patient {
                    // A12: only Patient/<ctx>, never a linked or other patient.
                    if own_id {
                        Ok(Cond::Free)
                    } else {
                        Err(Why::OtherPatient)
                    }
                } else {
                    Ok(Cond::Response(alt()))
                }
            }
            Judge::InstanceWrite | Judge::Patch => {
                if is_patient && !own_id {
                    return Err(Why::OtherPatient);
                }
                if letter == Letters::U {
                    if judge == Judge::Patch {
                        patch_ok(target)?;
                    } else {
                        body_ok(target)?;
                    }
                }
                if is_patient {
                    Ok(Cond::Free)
                } else {
                    // A23: the current version must be the patient's.
                    Ok(Cond::Stored(alt()))
                }
            }
            Judge::Create => {
                if is_patient {
                    // The server assigns a new id: a created Patient is never the context.
                    return Err(Why::CreatePatient);
                }
                body_ok(target)?;
                Ok(Cond::Free)
            }
            Judge::Search => {
                if !facts.confined {
                    return Err(Why::Unconfined);
                }
                if facts.includes {
                    // §5: included resources can point outside the compartment.
                    Ok(Cond::Response(alt()))
                } else {
                    Ok(Cond::Free)
                }
            }
            Judge::ConditionalWrite => {
                if !facts.confined {
                    return Err(Why::Unconfined);
                }
                match (req.interaction, letter) {
                    (Interaction::Update, _) => body_ok(target)?,
                    (Interaction::Patch, _) => patch_ok(target)?,
                    _ => {}
                }
                Ok(Cond::Free)
            }
            Judge::PatientInstance => {
                if own_id {
                    Ok(Cond::Free)
                } else {
                    Err(Why::OtherPatient)
                }
            }
            Judge::Unconfinable => Err(Why::Unconfinable),
            Judge::NotForPatient => Err(Why::NotForPatient),
        }
    }

    /// SMART-SEMANTICS §6 for a granular grant whose context condition is `cond`.
    #[allow(clippy::too_many_arguments)]
    fn granular(
        &self,
        cond: Cond,
        q: &GranularQuery,
        judge: Judge,
        target: ScopeType,
        letter: Letters,
        facts: &Facts<'_>,
        body: Body<'_>,
        opts: Opts<'_>,
    ) -> Result<Cond, Why> {
        let filtered = |c: Cond| -> Alternative {
            let mut alt = match c {
                Cond::Response(a) | Cond::Stored(a) => a,
                _ => Alternative {
                    target,
                    patient: None,
                    outside_ok: false,
                    filter: None,
                },
            };
            alt.filter = Some(q.clone());
            alt
        };
        let body_matches = || match (target, body) {
            (ScopeType::Type(t), Body::Resource(b)) => check::matches_query(t, q, b),
            _ => false,
        };
        match (judge, letter) {
            (Judge::Search, l) if l == Letters::S && is_primary_search(facts.req, target) => {
                if narrowed(&facts.req.params, q) {
                    Ok(cond)
                } else if self.sec.granular_search == GranularSearch::Narrow
                    && opts.narrow_allowed
                    && matches!(cond, Cond::Free)
                {
                    Ok(Cond::Narrow(encode_query(q)))
                } else {
                    Err(Why::GranularNotNarrowed)
                }
            }
            (Judge::InstanceRead, _) => Ok(Cond::Response(filtered(cond))),
            (Judge::Create, _) | (Judge::ConditionalWrite, _)
                if facts.req.interaction != Interaction::Delete
                    && facts.req.interaction != Interaction::Patch =>
            {
                if body_matches() {
                    Ok(cond)
                } else {
                    Err(Why::GranularBody)
                }
            }
            (Judge::InstanceWrite, l) if l == Letters::U => {
                if body_matches() {
                    Ok(Cond::Stored(filtered(cond)))
                } else {
                    Err(Why::GranularBody)
                }
            }
            (Judge::InstanceWrite, _) => Ok(Cond::Stored(filtered(cond))),
            (Judge::Patch, _) => Err(Why::GranularPatch),
            _ => Err(Why::GranularUnprovable),
        }
    }

    /// SMART-SEMANTICS §8.
    fn operation(&mut self, req: &Request, opts: Opts<'_>) -> Outcome {
        let Some(op) = &req.operation else {
            return Err(Denial::new(DenyReason::BadRequest, "not an operation"));
        };
        let name = &*op.name;
        let t = req.resource_type;
        let tname = t.map(|t| t.name());
        // Operations the policy configures come first.
        let configured = self.sec.operations.iter().find(|r| {
            &*r.name == name
                && r.level == op.level
                && r.types
                    .as_ref()
                    .is_none_or(|ts| t.is_some_and(|t| ts.contains(&t)))
                && (r.methods.contains(opts.method)
                    || (opts.method == Method::HEAD && r.methods.contains(&Method::GET)))
        });
        if let Some(rule) = configured {
            return self.configured_operation(req, rule);
        }
        let all_rs = Letters::R.union(Letters::S);
        match (name, op.level, tname) {
            // $everything: r+s on every compartment type (practically `*`), confined by the
            // instance id.
            ("everything", Level::Instance | Level::Type, Some("Patient")) => {
                self.trace.step(
                    R_OPERATION,
                    "$everything needs r and s on every type (`*.rs`), confined by the id",
                );
                let reqs = [Requirement {
                    target: ScopeType::Any,
                    letters: all_rs,
                }];
                let judge = |_: &Requirement, _: Letters| {
                    if op.level == Level::Instance {
                        Judge::PatientInstance
                    } else {
                        Judge::Unconfinable
                    }
                };
                let facts = Facts {
                    req,
                    confined: false,
                    includes: false,
                };
                let mut out = self.evaluate(req, &reqs, &judge, &facts, Body::None, opts)?;
                out.remember_pages = true;
                Ok(out)
            }
            // Bulk Data $export: r+s on every exported type; user/ and system/ only.
            ("export", Level::System, None)
            | ("export", Level::Type, Some("Patient"))
            | ("export", Level::Instance, Some("Group")) => {
                self.trace.step(
                    R_OPERATION,
                    "$export needs r and s on each exported type, from user/ or system/ scopes",
                );
                let reqs = match export_requirements(req) {
                    Ok(r) => r,
                    Err(e) => return Err(Denial::new(DenyReason::BadRequest, e.to_string())),
                };
                let judge = |_: &Requirement, _: Letters| Judge::NotForPatient;
                let facts = Facts {
                    req,
                    confined: false,
                    includes: false,
                };
                self.evaluate(req, &reqs, &judge, &facts, Body::None, opts)
            }
            // $lastn: a search on Observation, confined like one.
            ("lastn", Level::Type, Some("Observation"))
                if opts.method == Method::GET || opts.method == Method::HEAD =>
            {
                self.trace
                    .step(R_OPERATION, "$lastn is a search on Observation");
                let query = req.raw_query.as_deref();
                let search = fhir::classify(&Method::GET, "Observation", query)
                    .map_err(|e| Denial::new(DenyReason::BadRequest, e.to_string()))?;
                let mut out = self.decide(
                    &search,
                    Body::None,
                    Opts {
                        narrow_allowed: false,
                        ..opts
                    },
                )?;
                out.code = "operation";
                out.add_query = None;
                Ok(out)
            }
            _ => {
                self.trace
                    .step(R_OPERATION, format!("${name} is not enabled by the policy"));
                Err(Denial::new(
                    DenyReason::NoRoute,
                    format!(
                        "the operation ${name} is not enabled at this level by the policy (SMART defines no operation scopes)"
                    ),
                ))
            }
        }
    }

    fn configured_operation(&mut self, req: &Request, rule: &super::OperationRule) -> Outcome {
        let Some(principal) = self.principal else {
            return Err(Denial::new(DenyReason::MissingToken, "no token"));
        };
        // Only `Patient/<ctx>/$op` can be confined by the URL; elsewhere patient/ scopes
        // of a configured operation do not hold (fail closed).
        let confined = rule.level == Level::Instance
            && req.resource_type.is_some_and(|t| t.name() == "Patient")
            && self.patient.is_some()
            && req.id.as_deref() == self.patient;
        let ev = rule.scopes.evaluate(&principal.scopes, || confined);
        let name = &rule.name;
        match ev {
            Evaluation::Satisfied { alternative, .. } => {
                self.trace.step(
                    R_OPERATION,
                    format!("${name} enabled by the policy; needs {}", rule.required),
                );
                Ok(Allowed {
                    code: "operation",
                    required: rule.required.to_string(),
                    granted_by: rule
                        .scopes
                        .granted_by(&principal.scopes, alternative)
                        .into(),
                    response: None,
                    before: Vec::new(),
                    add_query: None,
                    remember_pages: false,
                })
            }
            Evaluation::OutsideContext => {
                self.trace.step(
                    R_OPERATION,
                    format!("${name}: patient/ scopes only hold on Patient/<context>/${name}"),
                );
                Err(Denial::new(
                    DenyReason::PatientContext,
                    format!("the token's patient/ scopes allow ${name} only on its own Patient"),
                )
                .on_route(self.sec.route_id("operation"), rule.required.clone()))
            }
            Evaluation::Insufficient => {
                let needed = rule.scopes.needed(&principal.scopes);
                self.trace
                    .step(R_OPERATION, format!("${name} needs {needed}"));
                let detail = format!("the token's scopes do not allow ${name}; it needs {needed}");
                Err(Denial::new(
                    DenyReason::InsufficientScope {
                        needed: needed.into_boxed_str(),
                    },
                    detail,
                )
                .on_route(self.sec.route_id("operation"), rule.required.clone()))
            }
        }
    }

    /// SMART-SEMANTICS §7: a batch or transaction Bundle POSTed to the base.
    fn bundle(&mut self, req: &FhirRequest<'_>, body: &[u8]) -> Assessment {
        if let Some(ct) = req.content_type.map(media_type) {
            if !is_json(ct) {
                return self.deny_early(
                    "batch-or-transaction",
                    DenyReason::BadRequest,
                    format!("fhirwall checks FHIR JSON Bundles only, not `{ct}`"),
                );
            }
        }
        let Ok(bundle) = serde_json::from_slice::<Value>(body) else {
            return self.deny_early(
                "batch-or-transaction",
                DenyReason::BadRequest,
                "the body is not valid JSON",
            );
        };
        let kind = match (
            bundle.get("resourceType").and_then(Value::as_str),
            bundle.get("type").and_then(Value::as_str),
        ) {
            (Some("Bundle"), Some(k @ ("batch" | "transaction"))) => k,
            _ => {
                self.trace.step(
                    R_BUNDLE,
                    "only a batch or transaction Bundle may be POSTed to the base",
                );
                return self.deny_early(
                    "batch-or-transaction",
                    DenyReason::BadRequest,
                    "only a Bundle of type batch or transaction may be POSTed to the base",
                );
            }
        };
        let transaction = kind == "transaction";
        let code = if transaction { "transaction" } else { "batch" };
        let empty = Vec::new();
        let entries = match bundle.get("entry") {
            None => &empty,
            Some(Value::Array(a)) => a,
            Some(_) => {
                return self.deny_early(code, DenyReason::BadRequest, "`entry` must be a list")
            }
        };
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let out = self.entry(i, e);
            match &out {
                Ok(a) => self
                    .trace
                    .step(R_BUNDLE, format!("entry {i}: {} allowed", a.code)),
                Err(d) => self
                    .trace
                    .step(R_BUNDLE, format!("entry {i}: refused: {}", d.detail)),
            }
            outcomes.push(out);
            if transaction && outcomes.last().is_some_and(|o| o.is_err()) {
                break;
            }
        }
        let route = self.sec.route_id(code);
        let required: String = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .map(|a| a.required.as_str())
            .filter(|s| !s.is_empty())
            .fold(String::new(), join_unique);
        let required: Arc<str> = Arc::from(required);
        if transaction {
            if let Some((i, Err(d))) = outcomes.iter().enumerate().find(|(_, o)| o.is_err()) {
                // Atomicity: one refused entry refuses the whole transaction, naming it.
                let detail = format!("transaction entry {i} refused: {}", d.detail);
                self.trace.step(R_DECISION, detail.clone());
                let denial = Denial::new(d.reason.clone(), detail).on_route(route, required);
                return self.verdict(Decision::Deny(denial), Checks::default());
            }
        }
        let granted: String = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .fold(String::new(), |acc, a| join_unique(acc, &a.granted_by));
        let mut checks = Checks::default();
        if transaction {
            let mut per_entry = Vec::with_capacity(outcomes.len());
            for o in outcomes {
                let Ok(a) = o else { continue };
                // Atomic: any failed stored check refuses the whole transaction.
                checks.before.extend(
                    a.before
                        .into_iter()
                        .map(|c| StoredCheck { entry: None, ..c }),
                );
                per_entry.push(a.response);
            }
            checks.response = ResourceCheck::per_entry(per_entry);
        } else {
            let mut plan = Vec::with_capacity(outcomes.len());
            for o in outcomes {
                match o {
                    Ok(a) => {
                        checks.before.extend(a.before);
                        plan.push(EntryPlan::Forward(a.response));
                    }
                    Err(d) => plan.push(EntryPlan::Refuse(d)),
                }
            }
            checks.batch = Some(BatchPlan { entries: plan });
        }
        self.trace.step(
            R_DECISION,
            format!("{code} allowed ({} entries)", entries.len()),
        );
        let permit = Permit::new(route, false, required, granted.into_boxed_str());
        self.verdict(Decision::Allow(permit), checks)
    }

    /// One Bundle entry, classified and decided like a top-level request.
    fn entry(&mut self, i: usize, e: &Value) -> Outcome {
        let refuse = |reason, detail: String| Err(Denial::new(reason, detail));
        let Some(request) = e.get("request").filter(|r| r.is_object()) else {
            return refuse(DenyReason::BadRequest, "the entry has no request".into());
        };
        let method = match request.get("method").and_then(Value::as_str) {
            Some(m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE")) => {
                Method::from_bytes(m.as_bytes()).unwrap_or(Method::OPTIONS)
            }
            _ => {
                return refuse(
                    DenyReason::BadRequest,
                    "the entry's request.method is missing or not a FHIR method".into(),
                )
            }
        };
        let Some(url) = request.get("url").and_then(Value::as_str) else {
            return refuse(
                DenyReason::BadRequest,
                "the entry has no request.url".into(),
            );
        };
        // R4 Bundle.entry.request.url is relative to the base; an absolute URL is only
        // accepted for this server's own base.
        let relative = if url.contains("://") {
            let local = self.sec.server_urls.iter().find_map(|b| {
                url.strip_prefix(&**b)
                    .and_then(|r| r.strip_prefix('/').or(r.is_empty().then_some("")))
            });
            match local {
                Some(r) => r,
                None => {
                    return refuse(
                        DenyReason::BadRequest,
                        "the entry's URL points to another server".into(),
                    )
                }
            }
        } else {
            url.strip_prefix('/').unwrap_or(url)
        };
        let (path, query) = match relative.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (relative, None),
        };
        let full = if path.is_empty() {
            self.sec.base_path.to_string()
        } else {
            format!("{}/{path}", self.sec.base_path)
        };
        if let Err(e) = crate::policy::path::check(&full) {
            return refuse(DenyReason::UnsafePath, format!("the entry's URL: {e}"));
        }
        if path.is_empty() && query.is_some_and(|q| self.is_page_link(q)) {
            return refuse(
                DenyReason::NoRoute,
                "page links are not accepted inside a Bundle".into(),
            );
        }
        if path == ".well-known/smart-configuration" || path == "metadata" {
            return refuse(
                DenyReason::BadRequest,
                "discovery requests do not belong in a Bundle".into(),
            );
        }
        let mut classified = match fhir::classify(&method, path, query) {
            Ok(r) => r,
            Err(e) => return refuse(DenyReason::BadRequest, e.to_string()),
        };
        match classified.body {
            BodyNeed::Bundle => {
                return refuse(
                    DenyReason::BadRequest,
                    "a Bundle entry cannot be a nested batch or transaction".into(),
                )
            }
            BodyNeed::SearchForm => {
                return refuse(
                    DenyReason::BadRequest,
                    "POST _search is not accepted inside a Bundle".into(),
                )
            }
            BodyNeed::None => {}
        }
        if let Some(c) = request.get("ifNoneExist").and_then(Value::as_str) {
            classified = match classified.with_if_none_exist(c) {
                Ok(r) => r,
                Err(e) => return refuse(DenyReason::BadRequest, e.to_string()),
            };
        }
        let decoded_patch;
        let body = match classified.interaction {
            Interaction::Create | Interaction::Update => {
                let Some(resource) = e.get("resource") else {
                    return refuse(DenyReason::BadRequest, "the entry has no resource".into());
                };
                if let Err(detail) = check_resource_shape(&classified, resource) {
                    return refuse(DenyReason::BadRequest, detail);
                }
                Body::Resource(resource)
            }
            Interaction::Patch => {
                // R4 http.html#transaction: a JSON Patch travels as a Binary resource.
                decoded_patch = e.get("resource").and_then(binary_json_patch);
                Body::Patch(decoded_patch.as_ref())
            }
            _ => Body::None,
        };
        let opts = Opts {
            method: &method,
            narrow_allowed: false,
            entry: Some(i),
        };
        self.decide(&classified, body, opts)
    }

    /// Renders a denial from the missing letters (with why each grant failed).
    fn denial(
        &mut self,
        code: &'static str,
        reqs: &[Requirement],
        missing: &[(ScopeType, Letters, Vec<Why>)],
    ) -> Denial {
        let family = self.family(missing);
        let mut needed = String::new();
        let mut detail = String::new();
        for (target, letters, whys) in missing {
            // Letters held but unusable only for the patient context are not fixed by
            // asking for the same scope again; the others are.
            let scope_fixes = whys.is_empty() || whys.iter().any(|w| !w.is_patient());
            if scope_fixes {
                if !needed.is_empty() {
                    needed.push(' ');
                }
                let _ = write!(needed, "{family}/{target}.{letters}");
            }
            if !detail.is_empty() {
                detail.push_str("; ");
            }
            if whys.is_empty() {
                let _ = write!(detail, "{target}.{letters}: no granted scope has it");
            } else {
                let _ = write!(detail, "{target}.{letters}: ");
                for (k, w) in whys.iter().enumerate() {
                    if k > 0 {
                        detail.push_str(", and ");
                    }
                    detail.push_str(w.detail());
                }
            }
        }
        let patient_only = missing
            .iter()
            .all(|(_, _, whys)| !whys.is_empty() && whys.iter().all(|w| w.is_patient()));
        let reason = if patient_only {
            DenyReason::PatientContext
        } else {
            DenyReason::InsufficientScope {
                needed: needed.clone().into_boxed_str(),
            }
        };
        let detail = if patient_only {
            format!("this token's patient/ scopes are limited to its patient context: {detail}")
        } else {
            format!("the token's scopes do not allow this request ({detail}); it needs {needed}")
        };
        self.trace.step(R_DECISION, format!("denied: {detail}"));
        let required: Arc<str> = Arc::from(render_requirements(reqs));
        Denial::new(reason, detail).on_route(self.sec.route_id(code), required)
    }

    /// The context family to ask for (RFC 6750 `scope`, SMART-SEMANTICS A18): the one the
    /// token uses, `patient` first when it has a patient; bulk export never `patient`.
    fn family(&self, missing: &[(ScopeType, Letters, Vec<Why>)]) -> Context {
        let Some(p) = self.principal else {
            return Context::User;
        };
        let export = missing
            .iter()
            .any(|(_, _, w)| w.contains(&Why::NotForPatient));
        let s = &p.scopes;
        if !export && self.patient.is_some() && s.uses_context(Context::Patient) {
            Context::Patient
        } else if s.uses_context(Context::User) {
            Context::User
        } else if s.uses_context(Context::System) || export {
            Context::System
        } else if self.patient.is_some() {
            Context::Patient
        } else {
            Context::User
        }
    }

    fn finish(&mut self, out: Outcome) -> Assessment {
        match out {
            Ok(a) => {
                self.trace.step(
                    R_DECISION,
                    format!("allowed: needs {}, granted by {}", a.required, a.granted_by),
                );
                let checks = Checks {
                    before: a.before,
                    response: a.response,
                    add_query: a.add_query,
                    batch: None,
                    remember_pages: a.remember_pages,
                };
                let permit = Permit::new(
                    self.sec.route_id(a.code),
                    false,
                    Arc::from(a.required),
                    a.granted_by.into_boxed_str(),
                );
                self.verdict(Decision::Allow(permit), checks)
            }
            Err(d) => {
                if d.route_id.is_none() {
                    // Entry-level denials built without a route (operations, bodies).
                    let d = Denial {
                        route_id: Some(self.sec.route_id("unclassified")),
                        required: Some(Arc::from("")),
                        ..d
                    };
                    return self.verdict(Decision::Deny(d), Checks::default());
                }
                self.verdict(Decision::Deny(d), Checks::default())
            }
        }
    }

    fn allow_public(&mut self, code: &str) -> Assessment {
        let permit = Permit::new(self.sec.route_id(code), true, Arc::from(""), "".into());
        self.verdict(Decision::Allow(permit), Checks::default())
    }

    fn deny_early(
        &mut self,
        code: &str,
        reason: DenyReason,
        detail: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Assessment {
        let detail = detail.into();
        self.trace.step(R_DECISION, format!("denied: {detail}"));
        let d = Denial::new(reason, detail).on_route(self.sec.route_id(code), Arc::from(""));
        self.verdict(Decision::Deny(d), Checks::default())
    }

    fn verdict(&mut self, decision: Decision, checks: Checks) -> Assessment {
        let request = self.classified.take().map(|mut c| {
            // A Bundle is only known as a batch or a transaction once it is read.
            if let Some(code) = decision.route_id().and_then(|r| r.strip_prefix("fhir:")) {
                if c.interaction == "batch-or-transaction" {
                    if let Some(&known) = ROUTE_CODES.iter().find(|&&k| k == code) {
                        c.interaction = known;
                    }
                }
            }
            c
        });
        Assessment::Verdict(Box::new(Verdict {
            decision,
            checks,
            trace: std::mem::take(&mut self.trace),
            request,
        }))
    }
}

// === impl Why ===

impl Why {
    fn is_patient(self) -> bool {
        !matches!(
            self,
            Why::GranularNotNarrowed
                | Why::GranularUnprovable
                | Why::GranularBody
                | Why::GranularPatch
                | Why::NotForPatient
        )
    }

    fn detail(self) -> &'static str {
        match self {
            Why::NoPatient => {
                "patient/ scopes need a patient context (a FHIR id), and the token has none"
            }
            Why::OtherPatient => "the request is about a patient other than the context patient",
            Why::Unconfined => {
                "the search is not confined to the context patient (use patient=<id>, subject=Patient/<id>, or Patient/<id>/<type>)"
            }
            Why::Unconfinable => "this interaction cannot be confined to one patient",
            Why::OutsideDenied => {
                "the policy does not let patient/ scopes reach types outside the patient compartment"
            }
            Why::Body(b) => b.detail(),
            Why::PatchUnchecked => {
                "under patient/ scopes only a JSON Patch that leaves the patient references alone is accepted"
            }
            Why::CreatePatient => "patient/ scopes cannot create a Patient",
            Why::NotForPatient => "bulk export needs user/ or system/ scopes",
            Why::GranularNotNarrowed => {
                "the granular scope covers only searches narrowed to its query"
            }
            Why::GranularUnprovable => "a granular scope cannot cover this use",
            Why::GranularBody => "the resource written does not match the granular scope",
            Why::GranularPatch => "a granular scope cannot cover a patch",
        }
    }
}

// === helpers ===

/// True for the `Patient` type.
fn is_patient_type(t: ScopeType) -> bool {
    matches!(t, ScopeType::Type(t) if t.name() == "Patient")
}

/// The route code of a classified request.
fn code_of(req: &Request) -> &'static str {
    match req.interaction {
        Interaction::BatchOrTransaction => "batch-or-transaction",
        i => i.code(),
    }
}

/// The type the interaction itself is on (`*` for system level and `Patient/<id>/*`).
fn primary_target(req: &Request) -> Option<ScopeType> {
    match req.interaction {
        Interaction::SearchSystem | Interaction::HistorySystem => Some(ScopeType::Any),
        Interaction::SearchCompartment => {
            Some(req.resource_type.map_or(ScopeType::Any, ScopeType::Type))
        }
        _ => req.resource_type.map(ScopeType::Type),
    }
}

fn is_primary_search(req: &Request, target: ScopeType) -> bool {
    req.interaction == Interaction::SearchSystem || primary_target(req) == Some(target)
}

/// Keeps the preferred conditions of one letter: an unconditional grant, else every check
/// (alternatives), else the first narrowing.
fn pick(conds: &[(usize, Cond)]) -> Vec<(usize, Cond)> {
    if let Some((i, c)) = conds.iter().find(|(_, c)| matches!(c, Cond::Free)) {
        return vec![(*i, c.clone())];
    }
    let checks: Vec<(usize, Cond)> = conds
        .iter()
        .filter(|(_, c)| matches!(c, Cond::Response(_) | Cond::Stored(_)))
        .cloned()
        .collect();
    if !checks.is_empty() {
        return checks;
    }
    conds
        .iter()
        .find(|(_, c)| matches!(c, Cond::Narrow(_)))
        .cloned()
        .into_iter()
        .collect()
}

fn cond_note(conds: &[(usize, Cond)]) -> &'static str {
    if conds.iter().any(|(_, c)| matches!(c, Cond::Free)) {
        ""
    } else if conds.iter().any(|(_, c)| matches!(c, Cond::Response(_))) {
        " (the response is checked)"
    } else if conds.iter().any(|(_, c)| matches!(c, Cond::Stored(_))) {
        " (the stored version is checked first)"
    } else {
        " (fhirwall narrows the search)"
    }
}

fn add_missing(
    missing: &mut Vec<(ScopeType, Letters, Vec<Why>)>,
    target: ScopeType,
    letter: Letters,
    whys: &[Why],
) {
    match missing.iter_mut().find(|(t, _, _)| *t == target) {
        Some((_, l, w)) => {
            *l = l.union(letter);
            if whys.is_empty() {
                // A letter no grant holds at all: the denial is about scopes.
                w.clear();
            } else if !w.is_empty() {
                for &y in whys {
                    if !w.contains(&y) {
                        w.push(y);
                    }
                }
            }
        }
        None => missing.push((target, letter, whys.to_vec())),
    }
}

fn render_requirements(reqs: &[Requirement]) -> String {
    let mut out = String::new();
    for r in reqs {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{r}");
    }
    out
}

fn render_granted(p: &Principal, granted: &[usize]) -> String {
    let mut sorted = granted.to_vec();
    sorted.sort_unstable();
    let mut out = String::new();
    for i in sorted {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(p.scopes.text_at(i));
    }
    out
}

/// `acc` plus the space-separated words of `s` not already in it.
fn join_unique(mut acc: String, s: &str) -> String {
    for w in s.split(' ').filter(|w| !w.is_empty()) {
        if !acc.split(' ').any(|a| a == w) {
            if !acc.is_empty() {
                acc.push(' ');
            }
            acc.push_str(w);
        }
    }
    acc
}

/// True unless a `_format` parameter asks for a non-JSON representation.
fn json_format(params: &[fhir::SearchParam]) -> bool {
    params
        .iter()
        .filter(|p| &*p.name == "_format")
        .all(|p| p.value.contains("json"))
}

/// Percent-encodes a granular query for appending to a URL: items stay `name=value` joined
/// by `&`; everything but unreserved characters and `:` `/` inside names and values is
/// encoded (`|` becomes `%7C`).
fn encode_query(q: &GranularQuery) -> Box<str> {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b':')
        .remove(b'/');
    let mut out = String::new();
    for (n, v) in q.pairs() {
        if !out.is_empty() {
            out.push('&');
        }
        // Scope values may already carry percent-encoding; decode once, encode once.
        let n = percent_encoding::percent_decode_str(n).decode_utf8_lossy();
        let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
        let _ = write!(
            out,
            "{}={}",
            percent_encoding::utf8_percent_encode(&n, SET),
            percent_encoding::utf8_percent_encode(&v, SET)
        );
    }
    out.into_boxed_str()
}

/// The media type of a Content-Type value, without parameters.
fn media_type(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

fn is_json(media: &str) -> bool {
    matches!(
        media,
        "application/fhir+json" | "application/json" | "application/json+fhir"
    )
}

/// Checks a body's `resourceType` (and update id) against the URL.
fn check_resource_shape(req: &Request, v: &Value) -> Result<(), String> {
    let Some(t) = req.resource_type else {
        return Err("the request has no resource type".into());
    };
    match v.get("resourceType").and_then(Value::as_str) {
        Some(rt) if rt == t.name() => {}
        _ => {
            return Err(format!(
                "the body must be a {} resource (resourceType must match the URL)",
                t.name()
            ))
        }
    }
    if req.interaction == Interaction::Update && !req.conditional {
        if let (Some(id), Some(url_id)) = (v.get("id"), req.id.as_deref()) {
            if id.as_str() != Some(url_id) {
                return Err("the body's id must equal the id in the URL".into());
            }
        }
    }
    Ok(())
}

/// A Bundle entry's JSON Patch: a Binary with `contentType` application/json-patch+json
/// and base64 `data`.
fn binary_json_patch(resource: &Value) -> Option<Value> {
    if resource.get("resourceType").and_then(Value::as_str) != Some("Binary") {
        return None;
    }
    if resource.get("contentType").and_then(Value::as_str) != Some("application/json-patch+json") {
        return None;
    }
    let data = resource.get("data").and_then(Value::as_str)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What a request was classified as, for the trace.
fn describe(req: &Request) -> String {
    let mut s = String::from(req.interaction.code());
    if let Some(t) = req.resource_type {
        let _ = write!(s, " on {t}");
    }
    if req.conditional {
        s.push_str(" (conditional)");
    }
    s.push_str(": needs ");
    s.push_str(&render_requirements(&req.requirements));
    s
}

/// SMART-SEMANTICS §3.3 "search on T" / "search on Patient": the request can name nothing
/// but `patient`. Every occurrence of a confining parameter name must confine (a second,
/// other occurrence may win on some servers), and `_filter` can say anything.
fn search_confined(req: &Request, patient: &str, bases: &[Box<str>]) -> bool {
    if req.filter {
        return false;
    }
    match req.interaction {
        Interaction::SearchCompartment => {
            return matches!(&req.compartment, Some((c, id)) if c.name() == "Patient" && &**id == patient)
        }
        Interaction::SearchType
        | Interaction::Create
        | Interaction::Update
        | Interaction::Patch
        | Interaction::Delete => {}
        _ => return false,
    }
    let Some(t) = req.resource_type else {
        return false;
    };
    let is_patient = t.name() == "Patient";
    let inclusion = compartment::inclusion_params(t);
    let has_patient = compartment::has_patient_param(t);
    // Which parameter names can confine, and whether a bare id is unambiguous for them.
    let confining = |base: &str| -> Option<bool> {
        if is_patient {
            return (base == "_id").then_some(true);
        }
        if base == "patient" && has_patient {
            return Some(true);
        }
        inclusion
            .iter()
            .find(|ip| ip.name == base)
            .map(|ip| ip.patient_only)
    };
    let mut found = false;
    for p in &req.params {
        if p.name.contains('.') {
            // A chain (`patient.name=`, `subject:Patient.name=`) tests another resource; it
            // neither confines nor is one of the confining occurrences.
            continue;
        }
        let (base, modifier) = match p.name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (&*p.name, None),
        };
        let Some(patient_only) = confining(base) else {
            continue;
        };
        let v = &*p.value;
        let ok = !v.contains(',')
            && match modifier {
                None => {
                    (patient_only && v == patient)
                        || (!is_patient && is_patient_ref(v, patient, bases))
                }
                Some("Patient") if !is_patient => v == patient || is_patient_ref(v, patient, bases),
                _ => false,
            };
        if !ok {
            return false;
        }
        found = true;
    }
    found
}

/// `Patient/<patient>`, relative or under one of this server's base URLs.
fn is_patient_ref(v: &str, patient: &str, bases: &[Box<str>]) -> bool {
    let rel = bases
        .iter()
        .find_map(|b| v.strip_prefix(&**b).and_then(|r| r.strip_prefix('/')))
        .unwrap_or(v);
    rel.strip_prefix("Patient/") == Some(patient)
}

/// SMART-SEMANTICS §6 item 2: for each scope item `p=v`, the request carries `p` with every
/// comma-separated value exactly `v` (both percent-decoded).
fn narrowed(params: &[fhir::SearchParam], q: &GranularQuery) -> bool {
    q.pairs().all(|(name, value)| {
        let want = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        params
            .iter()
            .any(|p| &*p.name == name && p.value.split(',').all(|v| v == want))
    })
}

/// `$export`: r+s on each `_type` (or `*`), and on what `_typeFilter` queries reach.
fn export_requirements(req: &Request) -> Result<Vec<Requirement>, fhir::Unclassifiable> {
    let rs = Letters::R.union(Letters::S);
    let mut out: Vec<Requirement> = Vec::new();
    let mut add =
        |target: ScopeType, letters: Letters| match out.iter_mut().find(|r| r.target == target) {
            Some(r) => r.letters = r.letters.union(letters),
            None => out.push(Requirement { target, letters }),
        };
    let params = match req.raw_query.as_deref() {
        Some(q) => fhir::query_params(q)?,
        None => Vec::new(),
    };
    let mut typed = false;
    for p in &params {
        match &*p.name {
            "_type" => {
                typed = true;
                for v in p.value.split(',') {
                    let t = ResourceType::from_name(v)
                        .ok_or_else(|| fhir::Unclassifiable::UnknownType(v.to_owned()))?;
                    add(ScopeType::Type(t), rs);
                }
            }
            "_typeFilter" => {
                for f in p.value.split(',') {
                    let (t, q) = f.split_once('?').unwrap_or((f, ""));
                    let sub = fhir::classify(&Method::GET, t, Some(q))?;
                    for r in sub.requirements {
                        add(r.target, r.letters);
                    }
                }
            }
            _ => {}
        }
    }
    if !typed {
        add(ScopeType::Any, rs);
    }
    Ok(out)
}
