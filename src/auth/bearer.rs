//! RFC 6750 bearer credentials: finds the access token of a request, or says why the request
//! carries its credentials in a way fhirwall refuses.
//!
//! Only the `Authorization` request header carries tokens (RFC 6750 §2.1). The form-encoded
//! body method (§2.2) is never looked at, and the URI query parameter method (§2.3) is refused
//! outright: URLs end up in access logs, browser history and `Referer` headers (§5.3).
//!
//! This module only checks *where* the token is. Whether the token itself is well formed is
//! [`crate::auth::Authenticator::authenticate`]'s job: a `Bearer` credential whose token is
//! empty or not `b64token` syntax is still returned as `Ok(Some(..))`, so that every malformed
//! token is refused the same way (401 `invalid_token`, code `malformed`), and audited as such,
//! whatever made it malformed.

use http::header::AUTHORIZATION;
use http::HeaderMap;

/// Why the request's credentials are refused before looking at the token (400
/// `invalid_request`, RFC 6750 §3.1). The `Display` text is safe to send to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// More than one `Authorization` header: which one the backend would read is anyone's
    /// guess, so none is trusted.
    #[error("more than one Authorization header")]
    MultipleAuthorization,
    /// An `access_token` query parameter (RFC 6750 §2.3), with or without a header.
    #[error("tokens in the query string are not accepted; URLs end up in logs")]
    TokenInQuery,
}

/// The token of the request's `Bearer` credentials.
///
/// - `Err(..)`: the credentials are presented in a way that is refused (400 `invalid_request`):
///   several `Authorization` headers, or an `access_token` query parameter (even when a header
///   is also present).
/// - `Ok(None)`: no bearer credentials at all: no `Authorization` header, or another scheme
///   (`Basic ...`). The answer is 401 without an error code (RFC 6750 §3.1).
/// - `Ok(Some(token))`: `Bearer` credentials (scheme matched case-insensitively, RFC 7235
///   §2.1). The token is *not* validated here: it may be empty or not `b64token` syntax, which
///   [`crate::auth::Authenticator::authenticate`] refuses as malformed. A header whose bytes
///   after `Bearer ` are not UTF-8 yields `Some("")` (refused as malformed the same way), since
///   those bytes cannot be handed out as a `&str`.
///
/// `query` is the raw query string of the request URI, without the `?`.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
) -> Result<Option<&'a str>, BearerError> {
    // RFC 6750 §2.3 is refused even alongside a header: a client that puts the token in the
    // URL must learn so, and the URL may already be on its way into someone's logs.
    if query.is_some_and(has_access_token_param) {
        return Err(BearerError::TokenInQuery);
    }

    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BearerError::MultipleAuthorization);
    }

    Ok(bearer_token(value.as_bytes()))
}

/// `Some(token)` when `value` is `Bearer` credentials, `None` for any other scheme.
fn bearer_token(value: &[u8]) -> Option<&str> {
    const SCHEME: &[u8] = b"bearer";

    // A field value excludes leading and trailing whitespace (RFC 9110 §5.5); HTTP parsers
    // strip it, but a HeaderMap built elsewhere may not have.
    let value = value.trim_ascii();
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    match rest.first() {
        // `Bearer` alone: bearer credentials with an empty token.
        None => Some(""),
        // RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token.
        Some(b' ') => {
            let token = rest.trim_ascii_start();
            Some(std::str::from_utf8(token).unwrap_or(""))
        }
        // `Bearerish ...`: another auth-scheme that merely starts with the same letters.
        Some(&b) if is_tchar(b) => None,
        // `Bearer<TAB>token` and the like: meant as bearer credentials but not well formed;
        // handing on the raw rest makes it fail `b64token` syntax, hence `malformed`.
        Some(_) => Some(std::str::from_utf8(rest).unwrap_or("")),
    }
}

/// RFC 9110 §5.6.2 `tchar`, the characters of an auth-scheme token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the query string has an `access_token` parameter (any value, even empty).
fn has_access_token_param(query: &str) -> bool {
    const NAME: &str = "access_token";
    query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        if name == NAME {
            return true;
        }
        // `access%5Ftoken` decodes to the same name for the backend; compare decoded.
        name.contains('%')
            && percent_encoding::percent_decode_str(name)
                .decode_utf8()
                .is_ok_and(|decoded| decoded == NAME)
    })
}

/// Whether `token` matches RFC 6750 §2.1
/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub(crate) fn is_b64token(token: &str) -> bool {
    let bytes = token.as_bytes();
    let body_len = bytes.len() - bytes.iter().rev().take_while(|&&b| b == b'=').count();
    body_len > 0
        && bytes[..body_len]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn extraction_follows_rfc_6750() {
        type Want = Result<Option<&'static str>, BearerError>;
        type Case = (&'static [&'static [u8]], Option<&'static str>, Want);
        let cases: &[Case] = &[
            (&[], None, Ok(None)),
            (&[b"Bearer abc.def-ghi"], None, Ok(Some("abc.def-ghi"))),
            (&[b"bearer abc"], None, Ok(Some("abc"))),
            (&[b"BEARER abc"], None, Ok(Some("abc"))),
            (&[b"bEaReR abc"], None, Ok(Some("abc"))),
            (&[b"Bearer    abc=="], None, Ok(Some("abc=="))),
            (&[b"Basic dXNlcjpwYXNz"], None, Ok(None)),
            (&[b"Digest username=x"], None, Ok(None)),
            (&[b"Bearerx abc"], None, Ok(None)),
            (&[b""], None, Ok(None)),
            (&[b"Bear"], None, Ok(None)),
            // Bearer credentials, malformed token: handed on for `authenticate` to refuse.
            (&[b"Bearer"], None, Ok(Some(""))),
            (&[b"Bearer "], None, Ok(Some(""))),
            (&[b"Bearer a b"], None, Ok(Some("a b"))),
            (&[b"Bearer\tabc"], None, Ok(Some("\tabc"))),
            (&[b"Bearer \xff\xfe"], None, Ok(Some(""))),
            // Refused outright.
            (
                &[b"Bearer a", b"Bearer b"],
                None,
                Err(BearerError::MultipleAuthorization),
            ),
            (
                &[b"Basic x", b"Bearer b"],
                None,
                Err(BearerError::MultipleAuthorization),
            ),
            (
                &[],
                Some("access_token=abc"),
                Err(BearerError::TokenInQuery),
            ),
            (
                &[],
                Some("_count=1&access_token"),
                Err(BearerError::TokenInQuery),
            ),
            (&[], Some("access_token="), Err(BearerError::TokenInQuery)),
            (
                &[],
                Some("access%5Ftoken=abc"),
                Err(BearerError::TokenInQuery),
            ),
            (
                &[b"Bearer abc"],
                Some("access_token=abc"),
                Err(BearerError::TokenInQuery),
            ),
            // Look-alike parameters are not tokens.
            (
                &[b"Bearer abc"],
                Some("x_access_token=1&access_tokens=2"),
                Ok(Some("abc")),
            ),
            (&[], Some("q=access_token"), Ok(None)),
        ];
        for (values, query, want) in cases {
            let map = headers(values);
            assert_eq!(
                extract(&map, *query),
                *want,
                "headers {values:?}, query {query:?}"
            );
        }
    }

    #[test]
    fn b64token_syntax_is_rfc_6750_section_2_1() {
        for ok in ["a", "abc.DEF-123_~+/", "abc==", "eyJhbGciOi.eyJpc3Mi.c2ln"] {
            assert!(is_b64token(ok), "{ok:?}");
        }
        for bad in [
            "", "=", "==", "a=b", "a b", "a\tb", "a,b", "a\"b", "é", "a\\b",
        ] {
            assert!(!is_b64token(bad), "{bad:?}");
        }
    }

    #[test]
    fn bearer_error_messages_are_safe_in_a_quoted_string() {
        for e in [
            BearerError::MultipleAuthorization,
            BearerError::TokenInQuery,
        ] {
            let s = e.to_string();
            assert!(!s.contains('"') && !s.contains('\\'), "{s}");
        }
    }
}
