//! The pingora proxy: one request, top to bottom.
//!
//! ```text
//! request_filter ─ audit healthy? ─ policy.route ─ bearer ─ auth ─ policy.authorize ─▶ Decision
//!     │ Deny  ─▶ respond::Answer (status, WWW-Authenticate, OperationOutcome); done
//!     ▼ Allow
//! upstream_peer (needs the Permit) ─▶ upstream_request_filter (X-Forwarded-*, X-Request-Id,
//!     no Authorization) ─▶ upstream ─▶ upstream_response_filter / response_filter
//!     │ upstream failure ─▶ fail_to_proxy: 502/504 + OperationOutcome
//!     ▼
//! logging: one audit record and the metrics, for every request
//! ```
//!
//! Each phase is a few lines delegating to one module; the [`Decision`] made in
//! `request_filter` is the single source the later phases, the audit record and the metrics
//! read.

pub mod respond;
pub mod upstream;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::audit::{redact_query, AuditRecord, AuditSink};
use crate::auth::{bearer, Authenticator, Principal};
use crate::metrics::{method_label, status_class, Metrics};
use crate::policy::{Decision, Denial, DenyReason, Policy};
use crate::ratelimit::{Limiter, RequestKeys, RequestLimits, RATELIMIT, RATELIMIT_POLICY};
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
}

/// The gateway: fhirwall's [`ProxyHttp`] implementation.
pub struct Gateway {
    runtime: Arc<ArcSwap<Runtime>>,
    auth: Arc<Authenticator>,
    audit: AuditSink,
    metrics: Arc<Metrics>,
}

/// Per-request state, carried through every phase.
pub struct RequestCtx {
    started: Instant,
    arrived: SystemTime,
    request_id: String,
    runtime: Option<Arc<Runtime>>,
    principal: Option<Arc<Principal>>,
    decision: Option<Decision>,
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

/// Longest wait for a record to be committed (strict durability) before the response is
/// replaced by a 503: a stuck disk must not hold connections forever.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

// === impl Gateway ===

impl Gateway {
    /// Builds the gateway over shared state.
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        auth: Arc<Authenticator>,
        audit: AuditSink,
        metrics: Arc<Metrics>,
    ) -> Self {
        Gateway {
            runtime,
            auth,
            audit,
            metrics,
        }
    }

    /// Makes the decision about a request. Every early return is a refusal: anything this
    /// function cannot establish (route, token, scope, audit) denies.
    async fn decide(&self, session: &Session, rt: &Runtime, ctx: &mut RequestCtx) -> Decision {
        // HIPAA 164.312(b): a request that cannot be audited is not served.
        if !self.audit.is_healthy() {
            return Decision::Deny(Denial::new(
                DenyReason::AuditUnavailable,
                "the audit trail is unavailable; try again shortly",
            ));
        }
        let req = session.req_header();
        if METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| req.headers.contains_key(*h))
        {
            return Decision::Deny(Denial::new(
                DenyReason::BadRequest,
                "method override headers are not accepted",
            ));
        }
        let m = match rt.policy.route(&req.method, req.uri.path()) {
            Ok(m) => m,
            Err(denial) => return Decision::Deny(denial),
        };
        // Per-address quotas run before the token is looked at, so failed authentication
        // attempts are counted (and slowed) too.
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let keys = RequestKeys {
            method: &req.method,
            path: req.uri.path(),
            query: req.uri.query(),
            route: m.route_id(),
            address: rt.limiter.client_address(peer, &req.headers),
            principal: None,
        };
        match rt.limiter.check_before_auth(&keys).await {
            Ok(admitted) => ctx.limits.admit(admitted),
            Err(limited) => {
                return Decision::Deny(
                    ctx.limits
                        .refuse(limited)
                        .on_route(m.route_id().clone(), m.required().clone()),
                )
            }
        }
        let token = match bearer::extract(&req.headers, req.uri.query()) {
            Ok(t) => t,
            Err(e) => {
                return Decision::Deny(
                    Denial::new(DenyReason::InvalidRequest, e.to_string())
                        .on_route(m.route_id().clone(), m.required().clone()),
                )
            }
        };
        let token = match token {
            // Public routes ignore credentials; they are neither needed nor checked.
            Some(t) if !m.is_public() => t,
            _ => {
                return rt
                    .policy
                    .authorize(&m, req.uri.path(), req.uri.query(), None)
            }
        };
        match self.auth.authenticate(token).await {
            Ok(principal) => {
                let req = session.req_header();
                let d = rt
                    .policy
                    .authorize(&m, req.uri.path(), req.uri.query(), Some(&principal));
                // Client and subject quotas count only what the policy would forward.
                let d = match d {
                    Decision::Allow(permit) => {
                        let keys = RequestKeys {
                            principal: Some(&principal),
                            ..keys
                        };
                        match rt.limiter.check_after_auth(&keys).await {
                            Ok(admitted) => {
                                ctx.limits.admit(admitted);
                                Decision::Allow(permit)
                            }
                            Err(limited) => Decision::Deny(
                                ctx.limits
                                    .refuse(limited)
                                    .on_route(m.route_id().clone(), m.required().clone()),
                            ),
                        }
                    }
                    deny => deny,
                };
                ctx.principal = Some(principal);
                d
            }
            Err(e) => {
                let reason = if e.is_unavailable() {
                    DenyReason::IdentityProviderUnavailable
                } else {
                    DenyReason::InvalidToken { cause: e.code() }
                };
                Decision::Deny(
                    Denial::new(reason, e.to_string())
                        .on_route(m.route_id().clone(), m.required().clone()),
                )
            }
        }
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

    fn audit_record(&self, session: &Session, ctx: &RequestCtx, status: u16) -> AuditRecord {
        let req = session.req_header();
        let rt = ctx.runtime.as_deref();
        let decision = ctx.decision.as_ref();
        let principal = ctx.principal.as_deref();
        let denial = match decision {
            Some(Decision::Deny(d)) => Some(d),
            _ => None,
        };
        let required = match decision {
            Some(Decision::Allow(p)) if !p.is_public() => Some(p.required().to_owned()),
            Some(Decision::Deny(d)) => d.required.as_deref().map(str::to_owned),
            _ => None,
        };
        let now = Instant::now();
        // What the request does in FHIR terms, for the auditor; a path outside the FHIR base
        // (a legacy route) or one that does not classify leaves these empty.
        let fhir = rt.and_then(|r| {
            let below = req.uri.path().strip_prefix(r.policy.base_path())?;
            let below = if below.is_empty() { "/" } else { below };
            crate::policy::fhir::classify(&req.method, below, req.uri.query()).ok()
        });
        AuditRecord {
            interaction: fhir.as_ref().map(|f| f.interaction.code()),
            resource_type: fhir
                .as_ref()
                .and_then(|f| f.resource_type)
                .map(|t| t.name().to_owned()),
            resource_id: fhir
                .as_ref()
                .and_then(|f| f.id.as_deref().map(str::to_owned)),
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
            route: decision.and_then(|d| d.route_id()).map(str::to_owned),
            decision: decision.map_or("deny", Decision::outcome),
            reason: decision.map_or("internal_error", Decision::reason_code),
            detail: denial.map(|d| d.detail.to_string()),
            required_scopes: required,
            granted_scopes: principal.map(|p| p.scopes.iter().map(|s| s.to_string()).collect()),
            issuer: principal.map(|p| p.issuer.to_string()),
            client_id: principal.and_then(|p| p.client_id.as_deref().map(str::to_owned)),
            subject: principal.and_then(|p| p.subject.as_deref().map(str::to_owned)),
            fhir_user: principal.and_then(|p| p.fhir_user.as_deref().map(str::to_owned)),
            patient: principal.and_then(|p| p.patient.as_deref().map(str::to_owned)),
            patients: crate::ratelimit::patients::touched(req.uri.path(), req.uri.query())
                .ids
                .into_iter()
                .map(|id| id.into_owned())
                .collect(),
            jti: principal.and_then(|p| p.jti.as_deref().map(str::to_owned)),
            status,
            upstream_status: ctx.upstream_status,
            latency_ms: millis(now - ctx.started),
            upstream_latency_ms: ctx.upstream_sent.map(|t| millis(now - t)),
            bytes_in: session.body_bytes_read() as u64,
            bytes_out: ctx
                .bytes_out_hint
                .unwrap_or(session.body_bytes_sent() as u64),
            policy_version: rt
                .map(|r| r.policy.version().to_owned())
                .unwrap_or_default(),
            rate_limit: ctx.limits.audit_note(),
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
            upstream_sent: None,
            upstream_status: None,
            limits: RequestLimits::default(),
            audited: false,
            bytes_out_hint: None,
        }
    }

    /// Decides the request (see [`Gateway::decide`]); a refusal is answered here and ends the
    /// request (`Ok(true)`).
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
        let decision = self.decide(session, &rt, ctx).await;
        if let Some(shadow) = rt.shadow.as_deref() {
            let (req, who) = (session.req_header(), ctx.principal.as_deref());
            crate::shadow::observe(shadow, req, who, &decision, &ctx.request_id, &self.metrics);
        }
        let denied = match &decision {
            Decision::Deny(d) => {
                log_denial(d, &ctx.request_id);
                Some(Answer::for_denial(d, &rt.realm))
            }
            Decision::Allow(_) => None,
        };
        ctx.decision = Some(decision);
        match denied {
            Some(mut answer) => {
                if self.audit.is_strict() {
                    ctx.bytes_out_hint = Some(answer.body().len() as u64);
                    if !self.commit_record(session, ctx, answer.status).await {
                        answer = Self::audit_unavailable(&rt);
                    }
                }
                // draft-ietf-httpapi-ratelimit-headers-10 §6: the fields accompany a quota's 429,
                // and other refusals only when configured for every response.
                let limits =
                    if ctx.limits.refused_quota().is_some() || rt.limiter.headers_on_allowed() {
                        ctx.limits.header_values()
                    } else {
                        None
                    };
                let extra = match &limits {
                    Some((policy, state)) => {
                        vec![
                            (RATELIMIT_POLICY, policy.as_str()),
                            (RATELIMIT, state.as_str()),
                        ]
                    }
                    None => Vec::new(),
                };
                answer.write_with(session, &ctx.request_id, &extra).await?;
                Ok(true)
            }
            None => Ok(false),
        }
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
        let proto = crate::tls::forwarded_proto(session);
        rt.upstream
            .prepare_request(upstream_request, client, proto, &ctx.request_id)?;
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
        upstream_response.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        if ctx
            .runtime
            .as_ref()
            .is_some_and(|rt| rt.limiter.headers_on_allowed())
        {
            if let Some((policy, state)) = ctx.limits.header_values() {
                // Appended, not replaced: limits the backend advertises itself still apply
                // (draft-ietf-httpapi-ratelimit-headers-10 §7.2), and SF lists may span lines.
                upstream_response.append_header(RATELIMIT_POLICY, policy)?;
                upstream_response.append_header(RATELIMIT, state)?;
            }
        }
        // Strict durability: the header (and with it the response) is released only once
        // the record is on disk. The decision was made in `request_filter`; only the status
        // and the size are new here.
        if self.audit.is_strict() {
            ctx.bytes_out_hint = upstream_response
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .or(Some(0));
            let status = upstream_response.status.as_u16();
            if !self.commit_record(session, ctx, status).await {
                return Error::e_explain(
                    ErrorType::HTTPStatus(503),
                    "audit record could not be committed",
                );
            }
        }
        Ok(())
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
                if let Err(we) = a.write(session, &ctx.request_id).await {
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
    use time::macros::format_description;
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_default()
}
