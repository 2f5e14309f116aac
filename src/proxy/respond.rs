//! The one table from a refusal or an upstream failure to what the client receives: status,
//! `WWW-Authenticate` challenge (RFC 6750 §3) and a FHIR `OperationOutcome` body.
//!
//! Nothing else in fhirwall writes an error response, so every refusal looks the same to
//! clients and the mapping can be read in one place.

use std::fmt::Write as _;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::policy::{Denial, DenyReason};

/// `Content-Type` of every body fhirwall writes itself.
pub const FHIR_JSON: &str = "application/fhir+json";

/// The status, challenge and OperationOutcome issue for one refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `WWW-Authenticate` value, when the refusal is about credentials.
    pub www_authenticate: Option<String>,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// OperationOutcome `issue.code` (FHIR R4 IssueType value set).
    pub issue_code: &'static str,
    /// OperationOutcome `issue.diagnostics`.
    pub diagnostics: String,
}

/// Kinds of upstream failure answered by the gateway itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The upstream did not answer in time (504).
    Timeout,
    /// The upstream could not be reached or broke the exchange (502).
    Unreachable,
}

// === impl Answer ===

impl Answer {
    /// The answer for a policy or authentication refusal.
    ///
    /// RFC 6750 §3.1: no credentials → 401 with a bare challenge (no error code); an invalid
    /// token → 401 `invalid_token`; a valid token lacking scope → 403 `insufficient_scope`
    /// with the `scope` attribute naming what would suffice; a malformed credential request
    /// → 400 `invalid_request`.
    pub fn for_denial(denial: &Denial, realm: &str) -> Answer {
        let detail = denial.detail.as_ref();
        let challenge = |error: Option<&str>, scope: Option<&str>| {
            let mut v = String::with_capacity(96);
            let _ = write!(v, "Bearer realm=\"{}\"", quoted(realm));
            if let Some(error) = error {
                let _ = write!(
                    v,
                    ", error=\"{error}\", error_description=\"{}\"",
                    quoted(detail)
                );
            }
            if let Some(scope) = scope {
                let _ = write!(v, ", scope=\"{}\"", quoted(scope));
            }
            Some(v)
        };
        let (status, www_authenticate, retry_after, issue_code) = match &denial.reason {
            DenyReason::UnsafePath | DenyReason::BadRequest => (400, None, None, "invalid"),
            DenyReason::InvalidRequest => (
                400,
                challenge(Some("invalid_request"), None),
                None,
                "invalid",
            ),
            DenyReason::MissingToken => (401, challenge(None, None), None, "login"),
            DenyReason::InvalidToken { cause } => (
                401,
                challenge(Some("invalid_token"), None),
                None,
                if *cause == "expired" {
                    "expired"
                } else {
                    "login"
                },
            ),
            DenyReason::InsufficientScope { needed } => (
                403,
                challenge(Some("insufficient_scope"), Some(needed)),
                None,
                "forbidden",
            ),
            DenyReason::PatientContext => (
                403,
                challenge(Some("insufficient_scope"), None),
                None,
                "forbidden",
            ),
            DenyReason::NoRoute => (403, None, None, "forbidden"),
            DenyReason::IdentityProviderUnavailable | DenyReason::AuditUnavailable => {
                (503, None, Some(5), "transient")
            }
            DenyReason::RateLimited { retry_after } => {
                // Round up: a client that waits the advertised time must be admitted.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                (429, None, Some(secs.max(1)), "throttled")
            }
        };
        Answer {
            status,
            www_authenticate,
            retry_after,
            issue_code,
            diagnostics: detail.to_string(),
        }
    }

    /// The answer for an upstream failure (R4 http.html: failures carry an OperationOutcome).
    pub fn for_upstream(failure: UpstreamFailure) -> Answer {
        let (status, diagnostics) = match failure {
            UpstreamFailure::Timeout => (504, "the FHIR server did not answer in time"),
            UpstreamFailure::Unreachable => (502, "the FHIR server could not be reached"),
        };
        Answer {
            status,
            www_authenticate: None,
            retry_after: None,
            issue_code: if status == 504 {
                "timeout"
            } else {
                "transient"
            },
            diagnostics: diagnostics.to_string(),
        }
    }

    /// The answer for a fault inside fhirwall (500); the detail stays in the operator's log.
    pub fn internal() -> Answer {
        Answer {
            status: 500,
            www_authenticate: None,
            retry_after: None,
            issue_code: "exception",
            diagnostics: "the gateway failed to process the request".to_string(),
        }
    }

    /// The FHIR R4 OperationOutcome body, `resourceType` first as FHIR JSON is written.
    pub fn body(&self) -> Bytes {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct OperationOutcome<'a> {
            resource_type: &'static str,
            issue: [Issue<'a>; 1],
        }
        #[derive(serde::Serialize)]
        struct Issue<'a> {
            severity: &'static str,
            code: &'static str,
            diagnostics: &'a str,
        }
        let outcome = OperationOutcome {
            resource_type: "OperationOutcome",
            issue: [Issue {
                severity: "error",
                code: self.issue_code,
                diagnostics: &self.diagnostics,
            }],
        };
        Bytes::from(serde_json::to_vec(&outcome).expect("plain structs always serialize"))
    }

    /// Writes the answer to the client. `HEAD` requests get the headers only.
    pub async fn write(&self, session: &mut Session, request_id: &str) -> pingora::Result<()> {
        self.write_with(session, request_id, &[]).await
    }

    /// [`Answer::write`] with extra response fields (e.g. `RateLimit` on a 429).
    pub async fn write_with(
        &self,
        session: &mut Session,
        request_id: &str,
        extra: &[(&'static str, &str)],
    ) -> pingora::Result<()> {
        let head = session.req_header().method == http::Method::HEAD;
        let body = self.body();
        let mut resp = ResponseHeader::build(self.status, Some(6))?;
        resp.insert_header(http::header::CONTENT_TYPE, FHIR_JSON)?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        resp.insert_header(super::upstream::X_REQUEST_ID, request_id)?;
        if let Some(challenge) = &self.www_authenticate {
            resp.insert_header(http::header::WWW_AUTHENTICATE, challenge.as_str())?;
        }
        if let Some(secs) = self.retry_after {
            resp.insert_header(http::header::RETRY_AFTER, secs)?;
        }
        for (name, value) in extra {
            resp.append_header(*name, *value)?;
        }
        session.write_response_header(Box::new(resp), head).await?;
        if !head {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}

/// Makes `s` safe inside an RFC 6750 quoted-string: §3 allows only %x20-21 / %x23-5B /
/// %x5D-7E there, so quotes, backslashes and control or non-ASCII characters become `'` or
/// a space rather than breaking (or injecting into) the header.
fn quoted(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes()
        .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e))
    {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                c if c.is_ascii() && !c.is_ascii_control() => c,
                _ => ' ',
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn denial(reason: DenyReason, detail: &'static str) -> Denial {
        Denial::new(reason, detail)
    }

    #[test]
    fn missing_token_gets_a_bare_challenge_without_error_code() {
        let a = Answer::for_denial(
            &denial(DenyReason::MissingToken, "a bearer token is required"),
            "fhirwall",
        );
        assert_eq!(a.status, 401);
        assert_eq!(
            a.www_authenticate.as_deref(),
            Some("Bearer realm=\"fhirwall\"")
        );
        assert_eq!(a.issue_code, "login");
    }

    #[test]
    fn invalid_token_names_the_error_and_describes_it() {
        let a = Answer::for_denial(
            &denial(
                DenyReason::InvalidToken { cause: "expired" },
                "the token has expired",
            ),
            "r",
        );
        assert_eq!(a.status, 401);
        assert_eq!(
            a.www_authenticate.as_deref(),
            Some("Bearer realm=\"r\", error=\"invalid_token\", error_description=\"the token has expired\"")
        );
        assert_eq!(a.issue_code, "expired");
    }

    #[test]
    fn insufficient_scope_names_the_scope_that_would_suffice() {
        let a = Answer::for_denial(
            &denial(
                DenyReason::InsufficientScope {
                    needed: "patient/Observation.s".into(),
                },
                "missing scope",
            ),
            "r",
        );
        assert_eq!(a.status, 403);
        let c = a.www_authenticate.unwrap();
        assert!(c.contains("error=\"insufficient_scope\""), "{c}");
        assert!(c.ends_with("scope=\"patient/Observation.s\""), "{c}");
    }

    #[test]
    fn quotes_and_backslashes_cannot_break_out_of_the_challenge() {
        let a = Answer::for_denial(
            &denial(
                DenyReason::InvalidToken { cause: "malformed" },
                "bad \"x\"\\ é",
            ),
            "r",
        );
        let c = a.www_authenticate.unwrap();
        assert!(c.ends_with("error_description=\"bad 'x''  \""), "{c}");
    }

    #[test]
    fn rate_limit_rounds_retry_after_up() {
        let a = Answer::for_denial(
            &denial(
                DenyReason::RateLimited {
                    retry_after: Duration::from_millis(1500),
                },
                "slow down",
            ),
            "r",
        );
        assert_eq!((a.status, a.retry_after), (429, Some(2)));
    }

    #[test]
    fn unavailable_dependencies_answer_503_with_retry_after() {
        for r in [
            DenyReason::IdentityProviderUnavailable,
            DenyReason::AuditUnavailable,
        ] {
            let a = Answer::for_denial(&denial(r, "x"), "r");
            assert_eq!(
                (a.status, a.retry_after, a.www_authenticate),
                (503, Some(5), None)
            );
        }
    }

    #[test]
    fn body_is_an_operation_outcome() {
        let a = Answer::for_upstream(UpstreamFailure::Timeout);
        let v: serde_json::Value = serde_json::from_slice(&a.body()).unwrap();
        assert_eq!(a.status, 504);
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["code"], "timeout");
    }
}
