//! The decision about one request: made once, in [`crate::policy`], carried in the request
//! context, and read by the proxy, the audit record and the metrics alike.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// What fhirwall does with a request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Forward it upstream.
    Allow(Permit),
    /// Answer it here.
    Deny(Denial),
}

/// Proof that the policy allowed a request. Its fields are private and it is only built
/// inside [`crate::policy`], so forwarding without a decision does not compile.
#[derive(Debug, Clone)]
pub struct Permit {
    route_id: Arc<str>,
    public: bool,
    /// The required scopes of the route, rendered once at load (`""` for public routes).
    required: Arc<str>,
    /// The granted scope(s) that satisfied the requirement, space separated.
    granted_by: Box<str>,
}

/// Why a request is refused, with what the client and the auditor are told.
#[derive(Debug, Clone)]
pub struct Denial {
    /// The machine-readable reason (drives status, headers, metrics label).
    pub reason: DenyReason,
    /// The matched route, when one matched.
    pub route_id: Option<Arc<str>>,
    /// The route's required scopes (for the audit record), when a route matched.
    pub required: Option<Arc<str>>,
    /// Human-readable explanation for the client (OperationOutcome diagnostics and
    /// `error_description`). Never contains internals, tokens or PHI beyond the request's own.
    pub detail: Cow<'static, str>,
}

/// The reasons a request can be refused. Each maps to exactly one answer in
/// [`crate::proxy::respond`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// 400: the path could mean one thing to fhirwall and another to the backend.
    UnsafePath,
    /// 400: the request is malformed in a way unrelated to credentials (for example a
    /// method-override header, which would make the backend run another method than the one
    /// authorized).
    BadRequest,
    /// 400 `invalid_request`: malformed credentials (two `Authorization` headers, a token in
    /// the query string, ...). RFC 6750 §3.1.
    InvalidRequest,
    /// 401 without an error code: no bearer credentials at all. RFC 6750 §3.1.
    MissingToken,
    /// 401 `invalid_token`: the token is malformed, expired, not yet valid, from an
    /// untrusted issuer, for another audience, badly signed, or signed by an unknown key.
    InvalidToken {
        /// The authentication failure's stable code (`expired`, `bad_signature`, ...).
        cause: &'static str,
    },
    /// 403 `insufficient_scope`: the token lacks the scopes the route needs; `needed` is the
    /// minimal space-separated set that would satisfy it.
    InsufficientScope {
        /// Scopes to request (the `scope` attribute of the challenge).
        needed: Box<str>,
    },
    /// 403 `insufficient_scope`: a `patient/` scope was used outside its patient's compartment.
    PatientContext,
    /// 403: no policy route matches this method and path (default deny).
    NoRoute,
    /// 503: the identity provider cannot be reached and nothing valid is cached.
    IdentityProviderUnavailable,
    /// 503: the audit trail cannot take the record, so the request is not served unaudited.
    AuditUnavailable,
    /// 429: a rate limit refused the request.
    RateLimited {
        /// When the client may try again.
        retry_after: Duration,
    },
}

// === impl Decision ===

impl Decision {
    /// The permit, if allowed.
    pub fn permit(&self) -> Option<&Permit> {
        match self {
            Decision::Allow(p) => Some(p),
            Decision::Deny(_) => None,
        }
    }

    /// The route id the decision was made under, if a route matched.
    pub fn route_id(&self) -> Option<&str> {
        match self {
            Decision::Allow(p) => Some(&p.route_id),
            Decision::Deny(d) => d.route_id.as_deref(),
        }
    }

    /// `"allow"` or `"deny"`, for metrics labels and audit records.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::Deny(_) => "deny",
        }
    }

    /// A stable reason code: `"allowed"`, `"public"`, or the denial's [`DenyReason::code`].
    pub fn reason_code(&self) -> &'static str {
        match self {
            Decision::Allow(p) if p.public => "public",
            Decision::Allow(_) => "allowed",
            Decision::Deny(d) => d.reason.code(),
        }
    }
}

// === impl Permit ===

impl Permit {
    /// The permit of a CORS preflight from an allowed origin (`cors:`): answered by the
    /// gateway itself with its CORS fields, never forwarded, recorded as the public route
    /// `cors:preflight` (crate::proxy::cors).
    pub fn cors_preflight() -> Self {
        Permit::new("cors:preflight".into(), true, "".into(), "".into())
    }

    /// Only the policy grants permits.
    pub(in crate::policy) fn new(
        route_id: Arc<str>,
        public: bool,
        required: Arc<str>,
        granted_by: Box<str>,
    ) -> Self {
        Permit {
            route_id,
            public,
            required,
            granted_by,
        }
    }

    /// The id of the route that allowed the request.
    pub fn route_id(&self) -> &str {
        &self.route_id
    }

    /// The route id as a shared string (cheap to clone into records).
    pub fn route_id_arc(&self) -> &Arc<str> {
        &self.route_id
    }

    /// True when the route needs no token.
    pub fn is_public(&self) -> bool {
        self.public
    }

    /// The route's requirement, as written in the policy.
    pub fn required(&self) -> &str {
        &self.required
    }

    /// The requirement as a shared string (cheap to clone into records).
    pub fn required_arc(&self) -> &Arc<str> {
        &self.required
    }

    /// The granted scope(s) that satisfied the route, space separated.
    pub fn granted_by(&self) -> &str {
        &self.granted_by
    }
}

// === impl Denial ===

impl Denial {
    /// A denial with no route context.
    pub fn new(reason: DenyReason, detail: impl Into<Cow<'static, str>>) -> Self {
        Denial {
            reason,
            route_id: None,
            required: None,
            detail: detail.into(),
        }
    }

    /// Attaches the matched route.
    pub fn on_route(mut self, route_id: Arc<str>, required: Arc<str>) -> Self {
        self.route_id = Some(route_id);
        self.required = Some(required);
        self
    }
}

// === impl DenyReason ===

impl DenyReason {
    /// A stable, low-cardinality code for metrics labels and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::UnsafePath => "unsafe_path",
            DenyReason::BadRequest => "bad_request",
            DenyReason::InvalidRequest => "invalid_request",
            DenyReason::MissingToken => "missing_token",
            DenyReason::InvalidToken { .. } => "invalid_token",
            DenyReason::InsufficientScope { .. } => "insufficient_scope",
            DenyReason::PatientContext => "patient_context",
            DenyReason::NoRoute => "no_route",
            DenyReason::IdentityProviderUnavailable => "idp_unavailable",
            DenyReason::AuditUnavailable => "audit_unavailable",
            DenyReason::RateLimited { .. } => "rate_limited",
        }
    }
}
