//! The pingora proxy: one request, top to bottom.
//!
//! ```text
//! request_filter ─ audit healthy? ─ policy.route (explicit routes) ─ quotas ─ bearer ─ auth
//!     ─ evaluate: policy.authorize, or the FHIR engine under the `fhir:` base ─▶ Decision
//!     │   (the engine may ask for the body first: body::read, bounded, then evaluate again)
//!     │ Deny  ─▶ respond::Answer (status, WWW-Authenticate, OperationOutcome); done
//!     │ Allow with checks, or a body already read ─▶ exchange: before-checks, the request,
//!     │       held response checked / batch merged / SMART configuration rewritten; done
//!     ▼ Allow
//! upstream_peer (needs the Permit) ─▶ upstream_request_filter (X-Forwarded-*, X-Request-Id,
//!     no Authorization, narrowing query) ─▶ upstream ─▶ upstream_response_filter /
//!     response_filter ─▶ response_body_filter (page links copied from the first 64 KiB)
//!     │ upstream failure ─▶ fail_to_proxy: 502/504 + OperationOutcome
//!     ▼
//! logging: one audit record and the metrics, for every request
//! ```
//!
//! Each phase is a few lines delegating to one module; the [`Decision`] made in
//! `request_filter` is the single source the later phases, the audit record and the metrics
//! read. [`evaluate()`] is that decision's policy part, pure (no session, no IO), so a
//! shadow policy can be evaluated on the same facts.

pub mod batch;
pub mod body;
pub mod check;
pub mod cors;
pub mod discovery;
pub mod evaluate;
pub mod exchange;
pub mod paging;
pub mod respond;
pub mod upstream;

pub use evaluate::{evaluate, Evaluated, RequestFacts};

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::audit::{redact_query, AuditRecord, AuditSink, ScopeList};
use crate::auth::{bearer, Authenticator, Principal};
use crate::metrics::{method_label, status_class, Metrics};
use crate::policy::smart::{Checks, Classified, Trace};
use crate::policy::{Decision, Denial, DenyReason, Permit, Policy};
use crate::ratelimit::{Limiter, RequestKeys, RequestLimits, RATELIMIT, RATELIMIT_POLICY};
use check::Release;
use exchange::{Exchanger, Upstreamed};
use paging::{PageStore, PrefixCopy, Remembered};
use respond::{Answer, UpstreamFailure};
use upstream::{Upstream, METHOD_OVERRIDE_HEADERS, X_REQUEST_ID};

/// Everything derived from the configuration that a request needs, compiled once and
/// swapped as a whole, so an in-flight request finishes under the version it started with.
pub struct Runtime {
    /// The compiled policy.
    pub policy: Arc<Policy>,
    /// The upstream peer and header rules.
    pub upstream: Upstream,
    /// `realm` of the challenges.
    pub realm: Arc<str>,
    /// Query parameters whose values audit records may keep.
    pub audit_allow_query: Vec<String>,
    /// The policy's quotas and distinct-patients guard, with their state.
    pub limiter: Arc<Limiter>,
    /// A candidate policy decided beside the active one and only compared ([`crate::shadow`]).
    pub shadow: Option<Arc<Policy>>,
    /// CORS for browser apps (`cors:`), when configured.
    pub cors: Option<cors::Cors>,
}

/// The gateway: fhirwall's [`ProxyHttp`] implementation.
pub struct Gateway {
    runtime: Arc<ArcSwap<Runtime>>,
    auth: Arc<Authenticator>,
    audit: AuditSink,
    metrics: Arc<Metrics>,
    /// Exchanges run outside pingora's streaming loop (held bodies, checks, batches).
    exchanger: Exchanger,
    /// Page links of searches, so page requests are decided as their search. Process-wide:
    /// a policy reload keeps them (each page is decided again under the current policy).
    pages: PageStore,
}

/// Per-request state, carried through every phase.
pub struct RequestCtx {
    started: Instant,
    arrived: SystemTime,
    request_id: String,
    runtime: Option<Arc<Runtime>>,
    principal: Option<Arc<Principal>>,
    decision: Option<Decision>,
    /// What the FHIR engine left to check and why it decided, when it decided.
    fhir: Option<FhirOutcome>,
    /// The request body read for the decision; forwarded exactly as read.
    body: Option<Bytes>,
    /// The remembered search this request is a page of.
    page_of: Option<Arc<Remembered>>,
    /// The start of a streamed search response, copied to find its page links.
    links: Option<PrefixCopy>,
    /// Why the upstream's response was withheld (a failed response or stored-version check).
    withheld: Option<String>,
    upstream_sent: Option<Instant>,
    upstream_status: Option<u16>,
    /// What the rate limiter said (response headers, audit).
    limits: RequestLimits,
    /// The record was already committed before the response (strict durability); `logging`
    /// must not write a second one.
    audited: bool,
    /// Body size for a record committed before the body is sent (strict durability): the
    /// declared `Content-Length`, or the size of a response fhirwall generated.
    bytes_out_hint: Option<u64>,
}

/// The parts of the FHIR engine's [`crate::policy::smart::Verdict`] besides the decision
/// (which is [`RequestCtx`]'s one decision value).
pub struct FhirOutcome {
    /// Checks the proxy runs before or after forwarding.
    pub checks: Checks,
    /// Why the engine decided as it did.
    pub trace: Trace,
    /// What the engine classified the request as (for the audit record).
    pub request: Option<Classified>,
}

/// Longest wait for a record to be committed (strict durability) before the response is
/// replaced by a 503: a stuck disk must not hold connections forever.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Paging defaults, used when the policy has no `fhir:` section at start.
const DEFAULT_PAGE_TTL: Duration = Duration::from_secs(30 * 60);
const DEFAULT_MAX_LINKS: u64 = 100_000;
/// Response bound for a held body when the policy has no `fhir:` section (explicit
/// routes never ask for checks; this only bounds the SMART configuration).
const DEFAULT_MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// Longest `reasons` text in an audit record.
const MAX_REASONS: usize = 1024;

// === impl Gateway ===

impl Gateway {
    /// Builds the gateway over shared state.
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        auth: Arc<Authenticator>,
        audit: AuditSink,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (ttl, max_links) = paging_settings(&runtime.load().policy);
        Gateway {
            runtime,
            auth,
            audit,
            metrics,
            exchanger: Exchanger::default(),
            pages: PageStore::new(ttl, max_links),
        }
    }

    /// Uses `options` for the connections fhirwall opens itself ([`exchange`]): give it the
    /// same [`pingora::connectors::ConnectorOptions`] as the proxy service so upstream TLS
    /// settings made there (CA file, client certificate) hold on both paths.
    pub fn with_connector_options(
        mut self,
        options: pingora::connectors::ConnectorOptions,
    ) -> Self {
        self.exchanger = Exchanger::new(Some(options));
        self
    }

    /// Makes the decision about a request, up to the policy evaluation (the body, when the
    /// engine needs it, and the per-client quotas follow in `request_filter`). Every early
    /// return is a refusal: anything this function cannot establish (route, token, scope,
    /// audit) denies.
    async fn decide(&self, session: &Session, rt: &Runtime, ctx: &mut RequestCtx) -> Evaluated {
        let deny = |d: Denial| Evaluated::Decision(Decision::Deny(d));
        // HIPAA 164.312(b): a request that cannot be audited is not served.
        if !self.audit.is_healthy() {
            return deny(Denial::new(
                DenyReason::AuditUnavailable,
                "the audit trail is unavailable; try again shortly",
            ));
        }
        let req = session.req_header();
        if METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| req.headers.contains_key(*h))
        {
            return deny(Denial::new(
                DenyReason::BadRequest,
                "method override headers are not accepted",
            ));
        }
        let path = req.uri.path();
        let query = req.uri.query();
        // Routing order (issue 3): an explicit route; else the FHIR engine for paths under
        // its base; else default deny. Path-safety refusals are final.
        let route = match rt.policy.route(&req.method, path) {
            Ok(m) => Some(m),
            Err(d) => {
                let fhir = d.reason == DenyReason::NoRoute
                    && rt
                        .policy
                        .fhir()
                        .is_some_and(|f| evaluate::under_base(path, f.base_path()));
                if !fhir {
                    return deny(d);
                }
                None
            }
        };
        let on_route = |d: Denial| match &route {
            Some(m) => d.on_route(m.route_id().clone(), m.required().clone()),
            None => d,
        };
        // Quotas' `routes:` can only name explicit routes, so a request for the FHIR engine
        // needs no finer label here (its `fhir:<interaction>` id comes with the verdict).
        let label: &str = match &route {
            Some(m) => m.route_id(),
            None => FHIR_ROUTE_LABEL,
        };
        // Per-address quotas run before the token is looked at, so failed authentication
        // attempts are counted (and slowed) too.
        let keys = quota_keys(session, rt, label, None);
        match rt.limiter.check_before_auth(&keys).await {
            Ok(admitted) => ctx.limits.admit(admitted),
            Err(limited) => return deny(on_route(ctx.limits.refuse(limited))),
        }
        let token = match bearer::extract(&req.headers, query) {
            Ok(t) => t,
            Err(e) => {
                return deny(on_route(Denial::new(
                    DenyReason::InvalidRequest,
                    e.to_string(),
                )))
            }
        };
        if route.is_none() && matches!(req.method, http::Method::GET | http::Method::HEAD) {
            // Only a read of the link is a page request: a write to the same URL is decided
            // as what it is (a POST of a Bundle there is not the search it was linked from).
            ctx.page_of = self.pages.lookup(path, query);
        }
        let facts = |page_of| RequestFacts {
            page_of,
            ..facts_of(req, None)
        };
        match &route {
            // Public routes ignore credentials; they are neither needed nor checked.
            Some(m) if m.is_public() || token.is_none() => {
                return Evaluated::Decision(rt.policy.authorize(m, path, query, None))
            }
            Some(_) => {}
            None => {
                // Public FHIR interactions (SMART-SEMANTICS §9: GET metadata, the SMART
                // configuration) pass without looking at a token; the engine says which.
                let reads = matches!(req.method, http::Method::GET | http::Method::HEAD);
                if token.is_none() || (reads && may_be_public(path)) {
                    let probe = evaluate(&rt.policy, &facts(None), None);
                    match probe {
                        Evaluated::NeedsBody { .. } if token.is_none() => {
                            // Not public, and no token: refused without reading the body.
                            return deny(Denial::new(
                                DenyReason::MissingToken,
                                "this request requires a bearer token",
                            ));
                        }
                        _ if token.is_none() => return probe,
                        Evaluated::Decision(Decision::Allow(_)) => return probe,
                        Evaluated::Verdict(v) if v.decision.permit().is_some() => {
                            return Evaluated::Verdict(v)
                        }
                        _ => {}
                    }
                }
            }
        }
        let Some(token) = token else {
            // Unreachable: every token-less request returned above.
            return deny(Denial::new(
                DenyReason::MissingToken,
                "this request requires a bearer token",
            ));
        };
        match self.auth.authenticate(token).await {
            Ok(principal) => {
                // A page link serves the caller whose search produced it (module paging).
                if ctx
                    .page_of
                    .as_ref()
                    .is_some_and(|p| !p.belongs_to(&principal))
                {
                    ctx.page_of = None;
                }
                let evaluated =
                    evaluate(&rt.policy, &facts(ctx.page_of.as_deref()), Some(&principal));
                ctx.principal = Some(principal);
                evaluated
            }
            Err(e) => {
                let reason = if e.is_unavailable() {
                    DenyReason::IdentityProviderUnavailable
                } else {
                    DenyReason::InvalidToken { cause: e.code() }
                };
                deny(on_route(Denial::new(reason, e.to_string())))
            }
        }
    }

    /// Client and subject quotas: they count only what the policy would forward.
    async fn limit_after_auth(
        &self,
        session: &Session,
        rt: &Runtime,
        ctx: &mut RequestCtx,
        decision: Decision,
    ) -> Decision {
        let (Decision::Allow(permit), Some(principal)) = (&decision, ctx.principal.clone()) else {
            return decision;
        };
        let keys = quota_keys(session, rt, permit.route_id(), Some(&principal));
        match rt.limiter.check_after_auth(&keys).await {
            Ok(admitted) => {
                ctx.limits.admit(admitted);
                decision
            }
            Err(limited) => {
                let route = permit.route_id_arc().clone();
                let required: Arc<str> = permit.required().into();
                Decision::Deny(ctx.limits.refuse(limited).on_route(route, required))
            }
        }
    }

    /// Reads the body the engine asked for and decides again with it. A body that cannot
    /// be read is refused here (413 over the bound, 400 malformed length, 408 too slow).
    async fn decide_with_body(
        &self,
        session: &mut Session,
        rt: &Runtime,
        ctx: &mut RequestCtx,
        max: usize,
    ) -> Result<Evaluated, (Denial, Answer)> {
        let body = match body::read(session, max).await {
            Ok(b) => b,
            Err(e) => return Err(body_refusal(e)),
        };
        ctx.body = Some(body);
        let req = session.req_header();
        let facts = RequestFacts {
            page_of: ctx.page_of.as_deref(),
            ..facts_of(req, ctx.body.as_deref())
        };
        match evaluate(&rt.policy, &facts, ctx.principal.as_deref()) {
            // The engine has the whole body; asking again would loop. Fail closed.
            Evaluated::NeedsBody { .. } => {
                tracing::error!(request.id = %ctx.request_id, "the FHIR engine asked for the body twice");
                Err((
                    Denial::new(DenyReason::BadRequest, "the request could not be decided"),
                    Answer::internal(),
                ))
            }
            done => Ok(done),
        }
    }

    /// Sends a refusal (or any answer fhirwall makes itself) and commits the record first
    /// under strict durability.
    async fn send_answer(
        &self,
        session: &mut Session,
        rt: &Runtime,
        ctx: &mut RequestCtx,
        mut answer: Answer,
    ) -> pingora::Result<()> {
        if self.audit.is_strict() {
            ctx.bytes_out_hint = Some(answer.body().len() as u64);
            if !self.commit_record(session, ctx, answer.status).await {
                answer = Self::audit_unavailable(rt);
            }
        }
        // draft-ietf-httpapi-ratelimit-headers-10 §6: the fields accompany a quota's 429,
        // and other refusals only when configured for every response.
        let limits = if ctx.limits.refused_quota().is_some() || rt.limiter.headers_on_allowed() {
            ctx.limits.header_values()
        } else {
            None
        };
        let mut extra = match &limits {
            Some((policy, state)) => {
                vec![
                    (RATELIMIT_POLICY, policy.as_str()),
                    (RATELIMIT, state.as_str()),
                ]
            }
            None => Vec::new(),
        };
        let cors = rt
            .cors
            .as_ref()
            .and_then(|c| c.response_fields(session.req_header()));
        push_cors(&mut extra, cors.as_ref());
        answer.write_with(session, &ctx.request_id, &extra).await
    }

    /// The answer to an allowed CORS preflight: 204 with the CORS fields (under strict
    /// durability, once its record is on disk; else the 503 of an unavailable trail).
    async fn send_preflight(
        &self,
        session: &mut Session,
        rt: &Runtime,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if self.audit.is_strict() {
            ctx.bytes_out_hint = Some(0);
            if !self.commit_record(session, ctx, 204).await {
                return Self::audit_unavailable(rt)
                    .write(session, &ctx.request_id)
                    .await;
            }
        }
        let fields = rt
            .cors
            .as_ref()
            .map(|c| c.preflight_fields(session.req_header()))
            .unwrap_or_default();
        let mut resp = ResponseHeader::build(204, Some(fields.len() + 1))?;
        for (name, value) in fields {
            resp.insert_header(name, value)?;
        }
        resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        session.write_response_header(Box::new(resp), true).await
    }

    /// What every response header from upstream gets on its way to the client (streaming
    /// or not): `X-Request-Id`, the `RateLimit` fields, and under strict durability the
    /// committed record.
    async fn finish_response_header(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(cors) = ctx.runtime.as_ref().and_then(|rt| rt.cors.as_ref()) {
            cors.apply(session.req_header(), resp)?;
        }
        if ctx
            .runtime
            .as_ref()
            .is_some_and(|rt| rt.limiter.headers_on_allowed())
        {
            if let Some((policy, state)) = ctx.limits.header_values() {
                // Appended, not replaced: limits the backend advertises itself still apply
                // (draft-ietf-httpapi-ratelimit-headers-10 §7.2), and SF lists may span lines.
                resp.append_header(RATELIMIT_POLICY, policy)?;
                resp.append_header(RATELIMIT, state)?;
            }
        }
        // Strict durability: the header (and with it the response) is released only once
        // the record is on disk. The decision was made in `request_filter`; only the status
        // and the size are new here.
        if self.audit.is_strict() {
            ctx.bytes_out_hint = resp
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .or(Some(0));
            let status = resp.status.as_u16();
            if !self.commit_record(session, ctx, status).await {
                return Error::e_explain(
                    ErrorType::HTTPStatus(503),
                    "audit record could not be committed",
                );
            }
        }
        Ok(())
    }

    /// Forwards an allowed request through [`exchange`] and answers the client, for
    /// requests pingora's streaming loop cannot carry: a body already read, a response to
    /// hold and check, a stored version to check first, a filtered batch, the SMART
    /// configuration. Errors are upstream failures, answered by `fail_to_proxy`.
    async fn forward_held(
        &self,
        session: &mut Session,
        rt: &Runtime,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if ctx.body.is_none() && has_body(session.req_header()) {
            // Checks without a body read for the decision: the body still goes upstream
            // through this exchange, so it is read here, under the same bound.
            let max = rt.policy.fhir().map_or(0, |f| f.max_body_bytes());
            match body::read(session, max).await {
                Ok(b) => ctx.body = Some(b),
                Err(e) => {
                    let (denial, answer) = body_refusal(e);
                    log_denial(&denial, &ctx.request_id);
                    ctx.decision = Some(Decision::Deny(denial));
                    return self.send_answer(session, rt, ctx, answer).await;
                }
            }
        }
        // Out of the context while the exchange borrows it mutably; back for `logging`.
        let fhir = ctx.fhir.take();
        let result = self
            .forward_held_with(session, rt, ctx, fhir.as_ref().map(|f| &f.checks))
            .await;
        ctx.fhir = fhir;
        result
    }

    /// One exchange with the backend on the held path, timed and recorded for the audit
    /// record and metrics (the streaming path records the same in its filters).
    async fn send_upstream(
        &self,
        rt: &Runtime,
        ctx: &mut RequestCtx,
        header: RequestHeader,
        body: Option<Bytes>,
    ) -> pingora::Result<exchange::Upstreamed> {
        ctx.upstream_sent = Some(Instant::now());
        let up = self.exchanger.send(&rt.upstream, header, body).await?;
        ctx.upstream_status = Some(up.status());
        Ok(up)
    }

    async fn forward_held_with(
        &self,
        session: &mut Session,
        rt: &Runtime,
        ctx: &mut RequestCtx,
        checks: Option<&Checks>,
    ) -> pingora::Result<()> {
        let base = rt.policy.fhir().map_or("", |f| f.base_path()).to_owned();
        let max_response = max_response_bytes(&rt.policy);
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let remember_pages = checks.is_some_and(|c| c.remember_pages);

        // What goes upstream: the client's request (its body exactly as read), narrowed by
        // the engine's query items, or the batch with only its allowed entries.
        let mut slots = checks
            .and_then(|c| c.batch.as_ref())
            .map(|plan| batch::slots(plan, &rt.realm));

        // Before-checks: the stored version must pass before the write is forwarded
        // (SMART-SEMANTICS §3.3, A23); in a batch, a failure refuses only its entry.
        for stored in checks.map_or(&[][..], |c| &c.before[..]) {
            let entry = stored
                .entry
                .filter(|i| slots.as_ref().is_some_and(|s| *i < s.len()));
            if entry.is_some_and(|i| {
                matches!(slots.as_ref().map(|s| &s[i]), Some(batch::Slot::Refuse(_)))
            }) {
                continue;
            }
            let h = exchange::read_header(
                session.req_header(),
                &base,
                &stored.path,
                &rt.upstream,
                client.as_ref(),
                forwarded_proto(session),
                &ctx.request_id,
            )?;
            let mut up = self.send_upstream(rt, ctx, h, None).await?;
            let status = up.status();
            let gone = matches!(status, 404 | 410);
            if gone && entry.is_none() {
                // The resource does not exist: the backend's answer says so (R4 http.html).
                return self.relay(session, ctx, up, None).await;
            }
            let held = match up.hold(max_response).await {
                Ok(b) => b,
                Err(exchange::HoldError::TooLarge) => {
                    self.exchanger.release(up).await;
                    let answer = check::too_large(max_response);
                    match (entry, slots.as_mut()) {
                        (Some(i), Some(s)) => {
                            s[i] = batch::Slot::Refuse(answer);
                            continue;
                        }
                        _ => return self.withhold(session, rt, ctx, answer).await,
                    }
                }
                Err(exchange::HoldError::Upstream(e)) => return Err(e),
            };
            let header = up.header.clone();
            self.exchanger.release(up).await;
            let release = check::judge(status, &held, &stored.check);
            let answer = match (release, (200..300).contains(&status)) {
                (Release::Unchanged, true) => continue,
                (Release::Withhold(a), _) => a,
                // Neither stored nor checked: the state is unknown, so the write is not
                // forwarded (fail closed); the backend's error outcome says why.
                (Release::Unchanged, false) => {
                    if entry.is_none() {
                        let header = exchange::framed(header, held.len())?;
                        return self.send_held(session, ctx, header, held).await;
                    }
                    Answer {
                        status,
                        www_authenticate: None,
                        retry_after: None,
                        issue_code: if gone { "not-found" } else { "exception" },
                        diagnostics: format!(
                            "the stored version of {} could not be checked (the FHIR server answered {status})",
                            stored.path
                        ),
                    }
                }
            };
            match (entry, slots.as_mut()) {
                (Some(i), Some(s)) => s[i] = batch::Slot::Refuse(answer),
                _ => return self.withhold(session, rt, ctx, answer).await,
            }
        }

        let req = session.req_header();
        let target = upstream_target(req, checks, ctx.page_of.is_some());
        let body = match (&slots, &ctx.body) {
            (Some(slots), Some(raw)) if !batch::forwards_all(slots) => {
                let bundle: serde_json::Value = serde_json::from_slice(raw).map_err(|e| {
                    Error::because(ErrorType::InternalError, "re-reading the batch Bundle", e)
                })?;
                match batch::prepare(&bundle, slots) {
                    Ok(batch::Prepared::Forward(b)) => Some(Bytes::from(
                        serde_json::to_vec(&b).expect("a JSON value always serializes"),
                    )),
                    Ok(batch::Prepared::AnswerHere(response)) => {
                        // Every entry refused: nothing reaches the backend.
                        let body = Bytes::from(
                            serde_json::to_vec(&response).expect("a JSON value always serializes"),
                        );
                        let mut header = ResponseHeader::build(200, Some(4))?;
                        header.insert_header(http::header::CONTENT_TYPE, respond::FHIR_JSON)?;
                        let header = exchange::framed(header, body.len())?;
                        return self.send_held(session, ctx, header, body).await;
                    }
                    Err(e) => {
                        return Error::e_because(ErrorType::InternalError, "preparing the batch", e)
                    }
                }
            }
            (_, raw) => raw.clone(),
        };
        let h = exchange::forward_header(
            req,
            &target,
            body.as_ref().map_or(0, Bytes::len),
            &rt.upstream,
            client.as_ref(),
            forwarded_proto(session),
            &ctx.request_id,
        )?;
        let mut up = self.send_upstream(rt, ctx, h, body).await?;
        let status = up.status();
        let head = session.req_header().method == http::Method::HEAD;
        let discovery = session.req_header().method == http::Method::GET
            && discovery::is_discovery(&base, session.req_header().uri.path());
        let must_hold =
            discovery || slots.is_some() || checks.is_some_and(|c| c.response.is_some());
        if !must_hold || head {
            let remember = self.search_to_remember(session, ctx, remember_pages);
            return self.relay(session, ctx, up, remember).await;
        }
        let limit = if discovery {
            discovery::MAX_DOCUMENT
        } else {
            max_response
        };
        let held = match up.hold(limit).await {
            Ok(b) => b,
            Err(exchange::HoldError::TooLarge) => {
                self.exchanger.release(up).await;
                return self
                    .withhold(session, rt, ctx, check::too_large(limit))
                    .await;
            }
            Err(exchange::HoldError::Upstream(e)) => return Err(e),
        };
        let header = up.header.clone();
        self.exchanger.release(up).await;
        let success = (200..300).contains(&status);

        if discovery {
            let enforced = rt
                .policy
                .fhir()
                .map(|f| f.scopes_supported())
                .unwrap_or_default();
            if status == 404 {
                // No document upstream: fhirwall publishes one from its issuer's metadata
                // (SAL2: endpoints requiring authorization SHALL serve it), else the
                // backend's 404 is passed on.
                let generated = match self.auth.server_metadata().await {
                    Some(meta) => discovery::generate(&meta, &enforced),
                    None => None,
                };
                if let Some(doc) = generated {
                    let mut header = ResponseHeader::build(200, Some(4))?;
                    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
                    let header = exchange::framed(header, doc.len())?;
                    return self.send_held(session, ctx, header, Bytes::from(doc)).await;
                }
            }
            let body = match success.then(|| discovery::rewrite(&held, &enforced)) {
                // No document upstream, and none to generate: its answer is passed on.
                None => held,
                Some(Some(doc)) => Bytes::from(doc),
                Some(None) => {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        "the backend's SMART configuration is not a JSON object",
                    )
                    .map_err(|mut e| {
                        e.as_up();
                        e
                    })
                }
            };
            let header = exchange::framed(header, body.len())?;
            return self.send_held(session, ctx, header, body).await;
        }

        if let (Some(slots), true) = (&slots, success) {
            let merged = serde_json::from_slice(&held)
                .map_err(|_| batch::BatchError::Response("not JSON"))
                .and_then(|v| batch::merge(v, slots));
            return match merged {
                Ok(v) => {
                    let body = Bytes::from(
                        serde_json::to_vec(&v).expect("a JSON value always serializes"),
                    );
                    let header = exchange::framed(header, body.len())?;
                    self.send_held(session, ctx, header, body).await
                }
                Err(e) => {
                    // A response fhirwall cannot map back cannot be checked: withheld.
                    tracing::warn!(request.id = %ctx.request_id, error = %e, "batch-response withheld");
                    self.withhold(
                        session,
                        rt,
                        ctx,
                        batch::withheld(&crate::policy::smart::Violation(e.to_string())),
                    )
                    .await
                }
            };
        }

        let release = match checks.and_then(|c| c.response.as_ref()) {
            Some(check) => check::judge(status, &held, check),
            // A failed batch as a whole: its error answer, judged like any other.
            None => Release::Unchanged,
        };
        match release {
            Release::Unchanged => {
                if success && remember_pages {
                    let search = self.search_to_remember(session, ctx, true);
                    self.remember_links(rt, search, &held);
                }
                let header = exchange::framed(header, held.len())?;
                self.send_held(session, ctx, header, held).await
            }
            Release::Withhold(answer) => self.withhold(session, rt, ctx, answer).await,
        }
    }

    /// Replaces the upstream's response by `answer` (a failed check; fail closed).
    async fn withhold(
        &self,
        session: &mut Session,
        rt: &Runtime,
        ctx: &mut RequestCtx,
        answer: Answer,
    ) -> pingora::Result<()> {
        tracing::info!(request.id = %ctx.request_id, "response withheld by a check");
        ctx.withheld = Some(answer.diagnostics.clone());
        self.send_answer(session, rt, ctx, answer).await
    }

    /// Sends a response whose body fhirwall holds.
    async fn send_held(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut header: ResponseHeader,
        body: Bytes,
    ) -> pingora::Result<()> {
        self.finish_response_header(session, &mut header, ctx)
            .await?;
        let head = session.req_header().method == http::Method::HEAD;
        let empty = body.is_empty() || head;
        session
            .write_response_header(Box::new(header), empty)
            .await?;
        if !empty {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }

    /// Streams the upstream's response on as it comes, copying the start of it to find page
    /// links when `remember` names the search.
    async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut up: Upstreamed,
        remember: Option<Arc<Remembered>>,
    ) -> pingora::Result<()> {
        let mut header = exchange::relayed(up.header.clone());
        self.finish_response_header(session, &mut header, ctx)
            .await?;
        let head = session.req_header().method == http::Method::HEAD;
        let mut copy = remember
            .as_ref()
            .filter(|_| (200..300).contains(&up.status()))
            .map(|_| PrefixCopy::default());
        session
            .write_response_header(Box::new(header), head)
            .await?;
        if !head {
            while let Some(chunk) = up.next_chunk().await? {
                if let Some(c) = copy.as_mut() {
                    c.push(&chunk);
                }
                session.write_response_body(Some(chunk), false).await?;
            }
            session.write_response_body(None, true).await?;
        }
        if let (Some(copy), Some(rt)) = (copy, ctx.runtime.clone()) {
            self.remember_links(&rt, remember, copy.bytes());
        }
        self.exchanger.release(up).await;
        Ok(())
    }

    /// The search a response's page links lead back to: the page's own search, or this
    /// request when the engine marked it `remember_pages`.
    fn search_to_remember(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        remember_pages: bool,
    ) -> Option<Arc<Remembered>> {
        if !remember_pages {
            return None;
        }
        if let Some(p) = &ctx.page_of {
            return Some(p.clone());
        }
        let req = session.req_header();
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        Remembered::of_search(
            &req.method,
            req.uri.path(),
            req.uri.query(),
            content_type,
            ctx.body.as_deref(),
            ctx.principal.as_deref(),
        )
        .map(Arc::new)
    }

    /// Remembers the page links found at the start of a search response.
    fn remember_links(&self, rt: &Runtime, search: Option<Arc<Remembered>>, prefix: &[u8]) {
        let (Some(search), Some(fhir)) = (search, rt.policy.fhir()) else {
            return;
        };
        let base = fhir.base_path();
        let links = paging::scan_links(prefix)
            .into_iter()
            .filter_map(|(_, url)| paging::page_key(&url, base));
        self.pages.remember(links, &search);
    }

    /// Strict durability: writes this request's record (with the status about to be sent)
    /// and waits until it is on disk. False when it could not be committed: the caller must
    /// then not release the response it was about to send.
    async fn commit_record(&self, session: &Session, ctx: &mut RequestCtx, status: u16) -> bool {
        let record = self.audit_record(session, ctx, status);
        ctx.audited = true;
        let committed = match self.audit.submit_committed(record) {
            Ok(commit) => tokio::time::timeout(COMMIT_TIMEOUT, commit.committed())
                .await
                .unwrap_or(false),
            Err(_) => false,
        };
        if !committed {
            self.metrics.audit_dropped.inc();
            tracing::error!(
                request.id = %ctx.request_id,
                "audit record not committed; refusing to release the response"
            );
        }
        committed
    }

    /// The 503 sent instead of a response whose record could not be committed.
    fn audit_unavailable(rt: &Runtime) -> Answer {
        Answer::for_denial(
            &Denial::new(
                DenyReason::AuditUnavailable,
                "the audit trail is unavailable; try again shortly",
            ),
            &rt.realm,
        )
    }

    /// The request's audit record. Called once, last (from `logging`, or before the response
    /// under strict durability): what the context owns is moved into the record, what the
    /// token and the policy own is shared (`Arc`), so a record costs few allocations.
    fn audit_record(&self, session: &Session, ctx: &mut RequestCtx, status: u16) -> AuditRecord {
        let req = session.req_header();
        let rt = ctx.runtime.as_deref();
        let decision = ctx.decision.as_ref();
        let principal = ctx.principal.as_ref();
        let denial = match decision {
            Some(Decision::Deny(d)) => Some(d),
            _ => None,
        };
        let required = match decision {
            Some(Decision::Allow(p)) if !p.is_public() => Some(p.required_arc().clone()),
            Some(Decision::Deny(d)) => d.required.clone(),
            _ => None,
        };
        let now = Instant::now();
        // What the request does in FHIR terms, for the auditor: as the engine classified it,
        // or (an explicit route under the base) as its request line reads; a path outside
        // the FHIR base or one that does not classify leaves these empty.
        let engine = ctx.fhir.as_mut().and_then(|f| f.request.take());
        let (interaction, resource_type, resource_id) = match engine {
            Some(c) => (
                Some(c.interaction),
                c.resource_type.map(|t| t.name()),
                c.resource_id.map(String::from),
            ),
            None => rt
                .and_then(|r| {
                    let below = req.uri.path().strip_prefix(r.policy.base_path())?;
                    let below = if below.is_empty() { "/" } else { below };
                    let has_query = req.uri.query().is_some_and(|q| !q.is_empty());
                    crate::policy::fhir::classify_path(&req.method, below, has_query).ok()
                })
                .map_or((None, None, None), |f| {
                    (
                        Some(f.interaction.code()),
                        f.resource_type.map(|t| t.name()),
                        f.id.map(String::from),
                    )
                }),
        };
        AuditRecord {
            interaction,
            resource_type,
            resource_id,
            time: format_time(ctx.arrived),
            request_id: ctx.request_id.clone(),
            client_addr: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string()),
            user_agent: req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| truncate(s, 256).to_owned()),
            method: req.method.as_str().to_owned(),
            path: req.uri.path().to_owned(),
            query: req
                .uri
                .query()
                .map(|q| redact_query(q, rt.map(|r| &r.audit_allow_query[..]).unwrap_or(&[]))),
            route: decision.and_then(|d| match d {
                Decision::Allow(p) => Some(p.route_id_arc().clone()),
                Decision::Deny(d) => d.route_id.clone(),
            }),
            decision: decision.map_or("deny", Decision::outcome),
            reason: decision.map_or("internal_error", Decision::reason_code),
            detail: denial.map(|d| d.detail.to_string()),
            required_scopes: required,
            granted_scopes: principal.map(|p| ScopeList::Granted(p.clone())),
            issuer: principal.map(|p| p.issuer.clone()),
            client_id: principal.and_then(|p| p.client_id.clone()),
            subject: principal.and_then(|p| p.subject.clone()),
            fhir_user: principal.and_then(|p| p.fhir_user.clone()),
            patient: principal.and_then(|p| p.patient.clone()),
            patients: crate::ratelimit::patients::touched(req.uri.path(), req.uri.query())
                .ids
                .into_iter()
                .map(|id| id.into_owned())
                .collect(),
            jti: principal.and_then(|p| p.jti.clone()),
            status,
            upstream_status: ctx.upstream_status,
            latency_ms: millis(now - ctx.started),
            upstream_latency_ms: ctx.upstream_sent.map(|t| millis(now - t)),
            bytes_in: session.body_bytes_read() as u64,
            bytes_out: ctx
                .bytes_out_hint
                .unwrap_or(session.body_bytes_sent() as u64),
            policy_version: rt.map_or_else(|| Arc::from(""), |r| r.policy.version_arc().clone()),
            rate_limit: ctx.limits.audit_note(),
            explanation: crate::audit::Explanation {
                granted_by: match decision {
                    Some(Decision::Allow(p)) if !p.granted_by().is_empty() => {
                        Some(p.granted_by().to_owned())
                    }
                    _ => None,
                },
                reasons: ctx.fhir.as_ref().and_then(|f| reasons(&f.trace)),
                withheld: ctx.withheld.clone(),
            },
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            arrived: SystemTime::now(),
            request_id: String::new(),
            runtime: None,
            principal: None,
            decision: None,
            fhir: None,
            body: None,
            page_of: None,
            links: None,
            withheld: None,
            upstream_sent: None,
            upstream_status: None,
            limits: RequestLimits::default(),
            audited: false,
            bytes_out_hint: None,
        }
    }

    /// Decides the request (see `Gateway::decide`), reading the body first when the FHIR
    /// engine needs it; a refusal is answered here and ends the request (`Ok(true)`), and
    /// so does a request forwarded through [`exchange`]. Everything else continues on
    /// pingora's streaming path.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let rt = self.runtime.load_full();
        ctx.request_id = match session.req_header().headers.get(X_REQUEST_ID) {
            Some(v) if upstream::well_formed_request_id(v.as_bytes()) => {
                // Checked ASCII above, so this cannot fail.
                v.to_str().unwrap_or_default().to_owned()
            }
            _ => upstream::new_request_id(),
        };
        ctx.runtime = Some(rt.clone());
        // A browser's CORS preflight carries no token: answered here for an allowed origin
        // (never forwarded); while the audit trail is down it is refused like everything.
        if self.audit.is_healthy()
            && rt
                .cors
                .as_ref()
                .is_some_and(|c| c.is_allowed_preflight(session.req_header()))
        {
            // Per-address quotas count preflights too: they are unauthenticated requests
            // that each cost an audit record.
            let keys = quota_keys(session, &rt, "cors:preflight", None);
            match rt.limiter.check_before_auth(&keys).await {
                Ok(admitted) => {
                    ctx.limits.admit(admitted);
                    ctx.decision = Some(Decision::Allow(Permit::cors_preflight()));
                    self.send_preflight(session, &rt, ctx).await?;
                }
                Err(limited) => {
                    let denial = ctx.limits.refuse(limited);
                    log_denial(&denial, &ctx.request_id);
                    let answer = Answer::for_denial(&denial, &rt.realm);
                    ctx.decision = Some(Decision::Deny(denial));
                    self.send_answer(session, &rt, ctx, answer).await?;
                }
            }
            return Ok(true);
        }
        let mut evaluated = self.decide(session, &rt, ctx).await;
        if let Evaluated::NeedsBody { max } = evaluated {
            match self.decide_with_body(session, &rt, ctx, max).await {
                Ok(e) => evaluated = e,
                Err((denial, answer)) => {
                    log_denial(&denial, &ctx.request_id);
                    ctx.decision = Some(Decision::Deny(denial));
                    self.send_answer(session, &rt, ctx, answer).await?;
                    return Ok(true);
                }
            }
        }
        let decision = match evaluated {
            Evaluated::Decision(d) => d,
            Evaluated::Verdict(v) => {
                let v = *v;
                ctx.fhir = Some(FhirOutcome {
                    checks: v.checks,
                    trace: v.trace,
                    request: v.request,
                });
                v.decision
            }
            // Unreachable: resolved above.
            Evaluated::NeedsBody { .. } => Decision::Deny(Denial::new(
                DenyReason::BadRequest,
                "the request could not be decided",
            )),
        };
        let decision = self.limit_after_auth(session, &rt, ctx, decision).await;
        if let Some(shadow) = rt.shadow.as_deref() {
            // Compared, never enforced (crate::shadow): the active decision is final here.
            let (req, who) = (session.req_header(), ctx.principal.as_deref());
            let facts = RequestFacts {
                page_of: ctx.page_of.as_deref(),
                ..facts_of(req, ctx.body.as_deref())
            };
            crate::shadow::observe(
                shadow,
                req,
                &facts,
                who,
                &decision,
                &ctx.request_id,
                &self.metrics,
            );
        }
        let denied = match &decision {
            Decision::Deny(d) => {
                log_denial(d, &ctx.request_id);
                Some(Answer::for_denial(d, &rt.realm))
            }
            Decision::Allow(_) => None,
        };
        ctx.decision = Some(decision);
        if let Some(answer) = denied {
            self.send_answer(session, &rt, ctx, answer).await?;
            return Ok(true);
        }
        if needs_exchange(session, &rt, ctx) {
            self.forward_held(session, &rt, ctx).await?;
            return Ok(true);
        }
        let remember = ctx.fhir.as_ref().is_some_and(|f| f.checks.remember_pages);
        if self.search_to_remember(session, ctx, remember).is_some() {
            ctx.links = Some(PrefixCopy::default());
        }
        Ok(false)
    }

    /// Only a request holding a [`crate::policy::Permit`] gets a peer; anything else is an
    /// internal error (500), never a pass-through.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        match (
            ctx.decision.as_ref().and_then(Decision::permit),
            ctx.runtime.as_ref(),
        ) {
            (Some(_), Some(rt)) => Ok(rt.upstream.peer()),
            _ => Error::e_explain(
                ErrorType::InternalError,
                "upstream_peer reached without a permit",
            ),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(rt) = ctx.runtime.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no runtime in request context");
        };
        let client = session.client_addr().and_then(|a| a.as_inet());
        let checks = ctx.fhir.as_ref().map(|f| &f.checks);
        if checks.is_some_and(|c| c.add_query.is_some()) && ctx.page_of.is_none() {
            // The engine narrows a granular search (`granular_search: narrow`): what is
            // forwarded is what it decided on.
            let target = upstream_target(session.req_header(), checks, false);
            let uri = target
                .parse()
                .map_err(|e| Error::because(ErrorType::InternalError, "narrowing the query", e))?;
            upstream_request.set_uri(uri);
        }
        if ctx.links.is_some() {
            // The start of the body is read for page links: it must arrive uncompressed.
            upstream_request.remove_header(&http::header::ACCEPT_ENCODING);
        }
        rt.upstream.prepare_request(
            upstream_request,
            client,
            forwarded_proto(session),
            &ctx.request_id,
        )?;
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        if !upstream_response.status.is_success() {
            // Only a successful search response names pages of the search.
            ctx.links = None;
        }
        // `total_timeout` bounds the wait for the response header. A silent upstream is cut
        // by `read_timeout`; one that trickles its header slower than the budget is cut here.
        if let (Some(sent), Some(rt)) = (ctx.upstream_sent, ctx.runtime.as_ref()) {
            if sent.elapsed() > rt.upstream.total_timeout() {
                let mut e = Error::explain(
                    ErrorType::ReadTimedout,
                    "upstream response header exceeded total_timeout",
                );
                e.as_up();
                return Err(e);
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.finish_response_header(session, upstream_response, ctx)
            .await
    }

    /// Copies the start of a search response (at most [`paging::SCAN_PREFIX`] bytes; the
    /// body itself streams on untouched) and remembers its page links at the end.
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Duration>> {
        if let (Some(copy), Some(chunk)) = (ctx.links.as_mut(), body.as_ref()) {
            copy.push(chunk);
        }
        if end_of_stream {
            if let (Some(copy), Some(rt)) = (ctx.links.take(), ctx.runtime.clone()) {
                let search = self.search_to_remember(session, ctx, true);
                self.remember_links(&rt, search, copy.bytes());
            }
        }
        Ok(None)
    }

    /// Upstream failures become 502 (unreachable) or 504 (timeout) with an OperationOutcome;
    /// a client that went away gets nothing; anything else is a 500.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use ErrorType::*;
        let answer = match (e.esource(), e.etype()) {
            (_, HTTPStatus(503)) if ctx.audited => {
                ctx.runtime.as_deref().map(Self::audit_unavailable)
            }
            (ErrorSource::Downstream, _) => None,
            (_, ConnectTimedout | ReadTimedout | WriteTimedout) => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&["timeout"])
                    .inc();
                Some(Answer::for_upstream(UpstreamFailure::Timeout))
            }
            (ErrorSource::Upstream, _)
            | (
                _,
                ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure
                | ConnectionClosed,
            ) => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&["connect"])
                    .inc();
                Some(Answer::for_upstream(UpstreamFailure::Unreachable))
            }
            _ => {
                self.metrics
                    .upstream_errors
                    .with_label_values(&["other"])
                    .inc();
                Some(Answer::internal())
            }
        };
        tracing::warn!(request.id = %ctx.request_id, error = %e, "request failed");
        let code = match answer {
            Some(mut a) if session.response_written().is_none() => {
                if self.audit.is_strict() && !ctx.audited {
                    ctx.bytes_out_hint = Some(a.body().len() as u64);
                    if !self.commit_record(session, ctx, a.status).await {
                        if let Some(rt) = ctx.runtime.as_deref() {
                            a = Self::audit_unavailable(rt);
                        }
                    }
                }
                let cors = ctx
                    .runtime
                    .as_ref()
                    .and_then(|rt| rt.cors.as_ref())
                    .and_then(|c| c.response_fields(session.req_header()));
                let mut extra = Vec::new();
                push_cors(&mut extra, cors.as_ref());
                if let Err(we) = a.write_with(session, &ctx.request_id, &extra).await {
                    tracing::debug!(request.id = %ctx.request_id, error = %we, "could not send error response");
                }
                a.status
            }
            _ => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// What pingora's own error logs say about a request. Its default is the URI with the
    /// query string, which is PHI; operational logs get the method, the request id and the
    /// route id only (the audit record has the rest).
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        format!(
            "{} request_id={} route={}",
            session.req_header().method,
            ctx.request_id,
            ctx.decision
                .as_ref()
                .and_then(Decision::route_id)
                .unwrap_or("-"),
        )
    }

    /// Every request ends here: one audit record and the metrics.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = ctx
            .decision
            .as_ref()
            .and_then(Decision::route_id)
            .unwrap_or("_none");
        let outcome = ctx.decision.as_ref().map_or("deny", Decision::outcome);
        let m = &self.metrics;
        m.requests
            .with_label_values(&[
                route,
                method_label(&session.req_header().method),
                outcome,
                status_class(status),
            ])
            .inc();
        m.request_duration
            .with_label_values(&[route, outcome])
            .observe(ctx.started.elapsed().as_secs_f64());
        if let Some(sent) = ctx.upstream_sent {
            m.upstream_duration
                .with_label_values(&[route])
                .observe(sent.elapsed().as_secs_f64());
        }
        if let Some(Decision::Deny(d)) = &ctx.decision {
            m.denials.with_label_values(&[d.reason.code()]).inc();
        }
        if ctx.audited {
            return;
        }
        let record = self.audit_record(session, ctx, status);
        if let Err(e) = self.audit.submit(record) {
            // The request was already answered; the sink is marked unhealthy so the next
            // requests are refused until it recovers.
            tracing::error!(request.id = %ctx.request_id, error = %e, "audit record lost");
        }
    }
}

/// `X-Forwarded-Proto` of requests sent upstream (streaming and exchange paths alike): the
/// scheme the client used to reach the gateway.
fn forwarded_proto(session: &Session) -> &'static str {
    crate::tls::forwarded_proto(session)
}

/// What the rate limiter counts a request by: its line, the route (label), the client's
/// address (as `forwarding.trust_forwarded_for` says) and, after authentication, the token.
fn quota_keys<'a>(
    session: &'a Session,
    rt: &Runtime,
    route: &'a str,
    principal: Option<&'a Principal>,
) -> RequestKeys<'a> {
    let req = session.req_header();
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    RequestKeys {
        method: &req.method,
        path: req.uri.path(),
        query: req.uri.query(),
        route,
        address: rt.limiter.client_address(peer, &req.headers),
        principal,
    }
}

/// Adds the CORS response fields (if any) to a locally written answer's extra fields.
fn push_cors<'a>(extra: &mut Vec<(&'static str, &'a str)>, fields: Option<&'a cors::Fields>) {
    for (name, value) in fields.into_iter().flatten() {
        // Values are the allowed origin (visible ASCII when configured; any origin's bytes
        // with `*`, which may not be text: then no field, and the browser blocks the read).
        if let Ok(v) = value.to_str() {
            extra.push((name, v));
        }
    }
}

/// Whether a FHIR request can be one of the public interactions (SMART-SEMANTICS §9:
/// `metadata`, the SMART configuration), so the engine is asked without the token first;
/// any other request with a token is decided once, with it.
fn may_be_public(path: &str) -> bool {
    path.ends_with("/metadata") || path.ends_with(discovery::PATH)
}

/// The refusal of a body that could not be read: 413 over the bound, 400 for a malformed
/// length or a broken connection, 408 too slow.
fn body_refusal(e: body::BodyError) -> (Denial, Answer) {
    let (status, code) = match e {
        body::BodyError::TooLarge { .. } => (413, "too-costly"),
        body::BodyError::BadLength | body::BodyError::Read(_) => (400, "invalid"),
        body::BodyError::Timeout => (408, "timeout"),
    };
    let answer = Answer {
        status,
        www_authenticate: None,
        retry_after: None,
        issue_code: code,
        diagnostics: e.to_string(),
    };
    (Denial::new(DenyReason::BadRequest, e.to_string()), answer)
}

/// Whether the request announces a body (RFC 9112 §6.3: `Transfer-Encoding` or a non-zero
/// `Content-Length`).
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// The facts of a request as the client sent it.
fn facts_of<'a>(req: &'a RequestHeader, body: Option<&'a [u8]>) -> RequestFacts<'a> {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    RequestFacts {
        method: &req.method,
        path: req.uri.path(),
        query: req.uri.query(),
        if_none_exist: header("if-none-exist"),
        content_type: header("content-type"),
        body,
        page_of: None,
    }
}

/// The route label of a request for the FHIR engine before it is decided (per-address
/// quotas): matched only by quotas without a `routes:` filter.
const FHIR_ROUTE_LABEL: &str = "fhir";

/// Whether the allowed request must go through [`exchange`] (see
/// [`Gateway::forward_held`]) rather than pingora's streaming loop.
fn needs_exchange(session: &Session, rt: &Runtime, ctx: &RequestCtx) -> bool {
    if ctx.body.is_some() {
        // pingora does not resend a body consumed in `request_filter`.
        return true;
    }
    let discovery = session.req_header().method == http::Method::GET
        && rt.policy.fhir().is_some_and(|f| {
            discovery::is_discovery(f.base_path(), session.req_header().uri.path())
        });
    discovery
        || ctx.fhir.as_ref().is_some_and(|f| {
            f.checks.response.is_some() || !f.checks.before.is_empty() || f.checks.batch.is_some()
        })
}

/// The upstream target: the request's path and query, with the engine's narrowing query
/// items appended (not to a page request: its search was narrowed when it ran).
fn upstream_target(req: &RequestHeader, checks: Option<&Checks>, page: bool) -> String {
    let path = req.uri.path();
    let add = checks
        .and_then(|c| c.add_query.as_deref())
        .filter(|_| !page);
    match (req.uri.query(), add) {
        (Some(q), Some(a)) => format!("{path}?{q}&{a}"),
        (None, Some(a)) => format!("{path}?{a}"),
        (Some(q), None) => format!("{path}?{q}"),
        (None, None) => path.to_owned(),
    }
}

/// `fhir.paging` of the policy (ttl, max_links).
fn paging_settings(policy: &Policy) -> (Duration, u64) {
    policy
        .fhir()
        .map_or((DEFAULT_PAGE_TTL, DEFAULT_MAX_LINKS), |f| {
            (f.paging_ttl(), f.paging_max_links())
        })
}

/// `fhir.max_response_bytes` of the policy.
fn max_response_bytes(policy: &Policy) -> usize {
    policy
        .fhir()
        .map_or(DEFAULT_MAX_RESPONSE, |f| f.max_response_bytes())
}

/// The trace, short, for the audit record: its summary, at most [`MAX_REASONS`] bytes.
fn reasons(trace: &Trace) -> Option<String> {
    let summary = trace.summary();
    (!summary.is_empty()).then(|| truncate(&summary, MAX_REASONS).to_owned())
}

fn log_denial(d: &Denial, request_id: &str) {
    // Our own faults are the operator's business; client faults are routine.
    match d.reason {
        DenyReason::IdentityProviderUnavailable | DenyReason::AuditUnavailable => {
            tracing::warn!(request.id = %request_id, reason = d.reason.code(), detail = %d.detail, "request refused")
        }
        _ => tracing::debug!(
            request.id = %request_id,
            reason = d.reason.code(),
            route.id = d.route_id.as_deref().unwrap_or("-"),
            "request refused"
        ),
    }
}

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T10:00:00.123Z`.
pub fn format_time(t: SystemTime) -> String {
    // Hand-rolled (one per request, into one 24-byte string): days to a civil date by
    // Howard Hinnant's `civil_from_days` (proleptic Gregorian, valid for any u64 seconds
    // this clock can give); the `time` crate's formatter is the reference in the tests.
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    fn push(out: &mut String, n: i64, width: usize, then: char) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n);
        for _ in digits.len()..width {
            out.push('0');
        }
        out.push_str(digits);
        out.push(then);
    }
    let mut out = String::with_capacity(24);
    push(&mut out, year, 4, '-');
    push(&mut out, month, 2, '-');
    push(&mut out, day, 2, 'T');
    push(&mut out, (rem / 3_600) as i64, 2, ':');
    push(&mut out, (rem % 3_600 / 60) as i64, 2, ':');
    push(&mut out, (rem % 60) as i64, 2, '.');
    push(&mut out, i64::from(since.subsec_millis()), 3, 'Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        for (n, v) in headers {
            req.insert_header(n.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn record_times_are_rfc3339_utc_with_milliseconds() {
        use time::macros::format_description;
        let reference = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        // Epoch, leap days, century rules (2000 is a leap year, 2100 is not), year ends.
        for secs in [
            0u64,
            951_782_400,
            951_868_799,
            1_709_164_800,
            1_767_225_599,
            4_107_542_400,
            4_102_444_799,
            253_402_300_799,
        ] {
            for millis in [0u64, 7, 999] {
                let t = SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis);
                let expected = time::OffsetDateTime::from(t).format(&reference).unwrap();
                assert_eq!(format_time(t), expected, "{secs}.{millis}");
            }
        }
        let mut secs = 0u64;
        while secs < 7_000_000_000 {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let expected = time::OffsetDateTime::from(t).format(&reference).unwrap();
            assert_eq!(format_time(t), expected, "{secs}");
            secs += 86_399 * 13 + 7;
        }
    }

    #[test]
    fn narrowing_items_are_appended_except_to_a_page_request() {
        let checks = Checks {
            add_query: Some("category=laboratory".into()),
            ..Checks::default()
        };
        let req = request("GET", "/fhir/Observation?patient=123", &[]);
        assert_eq!(
            upstream_target(&req, Some(&checks), false),
            "/fhir/Observation?patient=123&category=laboratory"
        );
        assert_eq!(
            upstream_target(&req, Some(&checks), true),
            "/fhir/Observation?patient=123"
        );
        let bare = request("GET", "/fhir/Observation", &[]);
        assert_eq!(
            upstream_target(&bare, Some(&checks), false),
            "/fhir/Observation?category=laboratory"
        );
        assert_eq!(upstream_target(&bare, None, false), "/fhir/Observation");
    }

    #[test]
    fn a_body_is_announced_by_its_length_or_chunked_coding() {
        assert!(!has_body(&request("PUT", "/x", &[])));
        assert!(!has_body(&request("PUT", "/x", &[("content-length", "0")])));
        assert!(has_body(&request("PUT", "/x", &[("content-length", "12")])));
        assert!(has_body(&request(
            "PUT",
            "/x",
            &[("transfer-encoding", "chunked")]
        )));
    }

    #[test]
    fn only_discovery_endpoints_are_probed_without_the_token() {
        assert!(may_be_public("/fhir/metadata"));
        assert!(may_be_public("/fhir/.well-known/smart-configuration"));
        assert!(!may_be_public("/fhir/Patient/123"));
        assert!(!may_be_public("/fhir"));
    }

    #[test]
    fn a_body_over_the_bound_answers_413() {
        let (denial, answer) = body_refusal(body::BodyError::TooLarge { max: 10 });
        assert_eq!((answer.status, answer.issue_code), (413, "too-costly"));
        assert_eq!(denial.reason, DenyReason::BadRequest);
        assert_eq!(body_refusal(body::BodyError::Timeout).1.status, 408);
    }
}
