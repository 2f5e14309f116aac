//! The audit record: what one request did, who did it, and what fhirwall decided.

use std::sync::Arc;

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use crate::auth::Principal;

/// One audit record (one JSON line). Never contains a bearer token; query values are
/// redacted unless the configuration allows the parameter by name.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    /// RFC 3339 UTC time the request arrived, millisecond precision.
    pub time: String,
    /// `X-Request-Id` of the request (the client's if well-formed, else generated).
    pub request_id: String,
    /// Client address (the TCP peer).
    pub client_addr: Option<String>,
    /// `User-Agent`, truncated to 256 bytes.
    pub user_agent: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path (no query).
    pub path: String,
    /// Query string with values of non-allowed parameters replaced by `REDACTED`.
    pub query: Option<String>,
    /// FHIR interaction (`read`, `search-type`, `create`, ...; see the README), when the path
    /// is below the policy's `base_path` and classifies as FHIR R4 REST.
    pub interaction: Option<&'static str>,
    /// FHIR resource type the request is about, when known.
    pub resource_type: Option<&'static str>,
    /// FHIR resource id the request names (instance-level interactions), when known.
    pub resource_id: Option<String>,
    /// Matched policy route id.
    pub route: Option<Arc<str>>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Reason code (`allowed`, `public`, `insufficient_scope`, ...).
    pub reason: &'static str,
    /// Human-readable reason for denials.
    pub detail: Option<String>,
    /// The route's scope requirement.
    pub required_scopes: Option<Arc<str>>,
    /// The scopes the token granted (valid ones).
    pub granted_scopes: Option<ScopeList>,
    /// Token issuer.
    pub issuer: Option<Arc<str>>,
    /// Token client (`client_id`/`azp`).
    pub client_id: Option<Arc<str>>,
    /// Token subject.
    pub subject: Option<Arc<str>>,
    /// SMART `fhirUser`.
    pub fhir_user: Option<Arc<str>>,
    /// SMART patient context.
    pub patient: Option<Arc<str>>,
    /// Patients the request names: the id after `Patient/` in the path, and the values of
    /// `patient` / `subject` query parameters (references reduced to their id; a value that
    /// cannot be reduced is kept as sent, failing safe). At most 64; empty lists are omitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<String>,
    /// Token `jti`.
    pub jti: Option<Arc<str>>,
    /// Status sent to the client (0 if the connection died before a response).
    pub status: u16,
    /// Status the upstream answered, when the request was forwarded.
    pub upstream_status: Option<u16>,
    /// Whole request latency in milliseconds.
    pub latency_ms: f64,
    /// Upstream latency in milliseconds, when forwarded.
    pub upstream_latency_ms: Option<f64>,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// Content hash of the policy that decided.
    pub policy_version: Arc<str>,
    /// The rate limit that refused the request, or the distinct-patients alert it raised;
    /// absent when no rate limit had anything to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitNote>,
    /// Why the decision was made: `granted_by`, `reasons`, `withheld` (flattened into the
    /// record; each member omitted when empty).
    #[serde(flatten)]
    pub explanation: Explanation,
}

/// The scopes a token granted, serialized as a JSON array of strings. Built from the
/// token's [`Principal`] (shared, not copied: a record is made for every request) or from a
/// list.
#[derive(Debug, Clone)]
pub enum ScopeList {
    /// The valid scopes of this principal's token, in the token's order.
    Granted(Arc<Principal>),
    /// Given scopes.
    Listed(Vec<String>),
}

impl ScopeList {
    /// The scopes, in order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            ScopeList::Granted(p) => Box::new(p.scopes.texts()),
            ScopeList::Listed(v) => Box::new(v.iter().map(String::as_str)),
        }
    }
}

impl From<Vec<String>> for ScopeList {
    fn from(v: Vec<String>) -> Self {
        ScopeList::Listed(v)
    }
}

impl PartialEq for ScopeList {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Serialize for ScopeList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // One per record on the writer thread: no boxed iterator here.
        fn all<'a, S: Serializer>(
            serializer: S,
            scopes: impl Iterator<Item = &'a str>,
        ) -> Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(None)?;
            for s in scopes {
                seq.serialize_element(s)?;
            }
            seq.end()
        }
        match self {
            ScopeList::Granted(p) => all(serializer, p.scopes.texts()),
            ScopeList::Listed(v) => all(serializer, v.iter().map(String::as_str)),
        }
    }
}

/// The why of a decision, as recorded (members of [`AuditRecord`]).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Explanation {
    /// The granted scope(s) that satisfied the requirement, space separated (allowed
    /// requests with a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted_by: Option<String>,
    /// The FHIR engine's decision trace, short: its findings joined by `; `, at most 1 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<String>,
    /// Why the upstream's response was replaced by a 403 (a failed response check, or a
    /// stored version that failed its check before a write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
}

/// A rate-limit event in an audit record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RateLimitNote {
    /// The quota id, or `distinct_patients`.
    pub quota: String,
    /// `deny` (the request was refused, 429) or `alert` (served, over the distinct-patients
    /// limit in alert mode).
    pub action: &'static str,
    /// Seconds the client was told to wait (`Retry-After`), for refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

/// Replaces the value of every query parameter not in `allow` with `REDACTED`; parameter
/// names are kept (they are not PHI and tell the auditor what kind of query it was).
pub fn redact_query(query: &str, allow: &[String]) -> String {
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, value)) => {
                out.push_str(name);
                out.push('=');
                if allow.iter().any(|a| a == name) {
                    out.push_str(value);
                } else {
                    out.push_str("REDACTED");
                }
            }
            None => out.push_str(pair),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_redacted_unless_allowed() {
        let allow = vec!["_count".to_string()];
        assert_eq!(
            redact_query("patient=123&_count=10&name", &allow),
            "patient=REDACTED&_count=10&name"
        );
    }
}
