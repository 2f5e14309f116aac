//! CORS for browser SMART apps (Fetch Standard, "CORS protocol"; configured by `cors:`).
//!
//! A SMART app running in a browser sends its FHIR requests with an `Authorization` header,
//! so the browser first sends a preflight: `OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`, and no token. fhirwall answers it itself (204, never
//! forwarded, audited as `cors:preflight`, counted by per-address quotas) when the origin is
//! allowed; an origin that is not
//! allowed gets no CORS fields, and its preflight is decided like any other request (refused:
//! there is no token), so the browser blocks the call. Every other response to an allowed
//! origin (forwarded, or answered by fhirwall: a 401 must be readable for the app to see
//! `WWW-Authenticate`) carries `Access-Control-Allow-Origin` with the request's origin,
//! `Vary: Origin` and `Access-Control-Expose-Headers`.
//!
//! No `Access-Control-Allow-Credentials`: bearer tokens travel in a header, not in cookies.

use http::header::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::CorsConfig;

/// `Access-Control-Allow-Methods`: the methods of the FHIR RESTful API (R4 http.html).
const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";

/// `Access-Control-Expose-Headers`: what a FHIR client reads besides the CORS-safelisted
/// fields: `Location`/`Content-Location` and `ETag`/`Last-Modified` (R4 http.html, create and
/// versioning), the RFC 6750 challenge, the request id, and the rate-limit fields.
pub const EXPOSE_HEADERS: &str = "Location, Content-Location, ETag, Last-Modified, \
WWW-Authenticate, X-Request-Id, Retry-After, RateLimit, RateLimit-Policy";

/// The compiled `cors:` section.
#[derive(Debug)]
pub struct Cors {
    /// `None`: any origin.
    origins: Option<Box<[Box<str>]>>,
    allow_headers: HeaderValue,
    max_age: HeaderValue,
}

/// The CORS fields of a response: (name, value).
pub type Fields = [(&'static str, HeaderValue); 3];

// === impl Cors ===

impl Cors {
    /// Compiles the configuration (once, at load).
    pub fn new(cfg: &CorsConfig) -> Self {
        let allow_headers = cfg.allowed_headers.join(", ");
        Cors {
            origins: cfg
                .allowed_origins
                .as_ref()
                .map(|o| o.iter().map(|s| s.as_str().into()).collect()),
            // Header names were checked at load; the join of valid names is a valid value.
            allow_headers: HeaderValue::from_str(&allow_headers)
                .unwrap_or_else(|_| HeaderValue::from_static("Authorization")),
            max_age: HeaderValue::from(cfg.max_age.as_secs()),
        }
    }

    /// The request's `Origin` when it is one this gateway serves.
    fn allowed_origin<'r>(&self, req: &'r RequestHeader) -> Option<&'r HeaderValue> {
        let mut origins = req.headers.get_all(http::header::ORIGIN).iter();
        let origin = origins.next()?;
        if origins.next().is_some() {
            // Browsers send one; two are not a browser's request.
            return None;
        }
        match &self.origins {
            None => Some(origin),
            Some(list) => list
                .iter()
                .any(|o| o.as_bytes() == origin.as_bytes())
                .then_some(origin),
        }
    }

    /// True for a CORS preflight from an allowed origin: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method` (Fetch Standard, "CORS-preflight request").
    pub fn is_allowed_preflight(&self, req: &RequestHeader) -> bool {
        req.method == http::Method::OPTIONS
            && req
                .headers
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            && self.allowed_origin(req).is_some()
    }

    /// The preflight answer's fields (status 204).
    pub fn preflight_fields(&self, req: &RequestHeader) -> Vec<(HeaderName, HeaderValue)> {
        let Some(origin) = self.allowed_origin(req) else {
            return Vec::new();
        };
        vec![
            (http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
            (http::header::VARY, HeaderValue::from_static("Origin")),
            (
                http::header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            ),
            (
                http::header::ACCESS_CONTROL_ALLOW_HEADERS,
                self.allow_headers.clone(),
            ),
            (http::header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()),
        ]
    }

    /// The fields of any other response to `req`, when its origin is allowed.
    pub fn response_fields(&self, req: &RequestHeader) -> Option<Fields> {
        let origin = self.allowed_origin(req)?;
        Some([
            ("access-control-allow-origin", origin.clone()),
            ("vary", HeaderValue::from_static("Origin")),
            (
                "access-control-expose-headers",
                HeaderValue::from_static(EXPOSE_HEADERS),
            ),
        ])
    }

    /// Sets the response fields on `resp` (replacing any the backend sent: fhirwall's
    /// configuration decides which origins may read its answers).
    pub fn apply(&self, req: &RequestHeader, resp: &mut ResponseHeader) -> pingora::Result<()> {
        let Some(fields) = self.response_fields(req) else {
            // Not an allowed origin: nothing the backend says about CORS goes through either.
            for name in [
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            ] {
                resp.remove_header(&name);
            }
            // The answer depends on `Origin` all the same (a cache must not serve it to an
            // allowed origin, nor the other way round).
            resp.append_header(http::header::VARY, HeaderValue::from_static("Origin"))?;
            return Ok(());
        };
        resp.remove_header(&http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        for (name, value) in fields {
            // `Vary` may already list what the backend's answer depends on.
            if name == "vary" {
                resp.append_header(name, value)?;
            } else {
                resp.insert_header(name, value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cors(origins: Option<&[&str]>) -> Cors {
        Cors::new(&CorsConfig {
            allowed_origins: origins.map(|o| o.iter().map(|s| (*s).to_owned()).collect()),
            allowed_headers: vec!["Authorization".into(), "Content-Type".into()],
            max_age: Duration::from_secs(600),
        })
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/fhir/Patient/1", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_the_configured_fields() {
        let c = cors(Some(&["https://app.example.org"]));
        let pre = request(
            "OPTIONS",
            &[
                ("origin", "https://app.example.org"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
            ],
        );
        assert!(c.is_allowed_preflight(&pre));
        let fields = c.preflight_fields(&pre);
        let get = |n: HeaderName| {
            fields
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            get(http::header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
            Some("https://app.example.org")
        );
        assert_eq!(
            get(http::header::ACCESS_CONTROL_ALLOW_HEADERS).as_deref(),
            Some("Authorization, Content-Type")
        );
        assert_eq!(
            get(http::header::ACCESS_CONTROL_MAX_AGE).as_deref(),
            Some("600")
        );
        assert!(get(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    }

    #[test]
    fn other_origins_and_non_preflights_get_nothing() {
        let c = cors(Some(&["https://app.example.org"]));
        let other = request(
            "OPTIONS",
            &[
                ("origin", "https://evil.example.org"),
                ("access-control-request-method", "GET"),
            ],
        );
        assert!(!c.is_allowed_preflight(&other));
        assert!(c.response_fields(&other).is_none());
        // Origin matching is exact: no prefix, suffix or case games.
        for origin in [
            "https://app.example.org.evil.test",
            "https://APP.example.org",
            "http://app.example.org",
            "null",
        ] {
            assert!(c
                .response_fields(&request("GET", &[("origin", origin)]))
                .is_none());
        }
        // An OPTIONS without Access-Control-Request-Method is not a preflight.
        let plain = request("OPTIONS", &[("origin", "https://app.example.org")]);
        assert!(!c.is_allowed_preflight(&plain));
        // Two Origin fields are not a browser's request.
        let two = request(
            "GET",
            &[
                ("origin", "https://app.example.org"),
                ("origin", "https://app.example.org"),
            ],
        );
        assert!(c.response_fields(&two).is_none());
    }

    #[test]
    fn any_origin_echoes_the_request_origin_and_backend_cors_fields_are_replaced() {
        let c = cors(None);
        let req = request("GET", &[("origin", "https://anywhere.example")]);
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("access-control-allow-origin", "*")
            .unwrap();
        resp.insert_header("access-control-allow-credentials", "true")
            .unwrap();
        c.apply(&req, &mut resp).unwrap();
        assert_eq!(
            resp.headers.get("access-control-allow-origin").unwrap(),
            "https://anywhere.example"
        );
        assert!(resp
            .headers
            .get("access-control-allow-credentials")
            .is_none());
        assert_eq!(
            resp.headers.get("access-control-expose-headers").unwrap(),
            EXPOSE_HEADERS
        );
        // Not an allowed origin (no Origin at all): the backend's CORS fields are dropped.
        let c = cors(Some(&["https://app.example.org"]));
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("access-control-allow-origin", "*")
            .unwrap();
        c.apply(&request("GET", &[]), &mut resp).unwrap();
        assert!(resp.headers.get("access-control-allow-origin").is_none());
    }
}
