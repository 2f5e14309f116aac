//! Request bodies the FHIR engine must see before it decides (Bundles, `_search` forms,
//! writes under `patient/` grants): read whole, bounded by `fhir.max_body_bytes`, and then
//! forwarded byte for byte ([`super::exchange`]).
//!
//! A declared `Content-Length` over the bound is refused before a byte is read; a chunked
//! body is read until it passes the bound. Each read waits at most [`READ_TIMEOUT`] and the
//! whole body at most [`TOTAL_TIMEOUT`], so a client trickling its body cannot hold a
//! connection (and up to the bound in memory) indefinitely.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

/// Longest wait for one chunk of a request body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time to receive a whole request body.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the engine accepts (413).
    #[error("the request body is larger than {max} bytes")]
    TooLarge {
        /// The bound.
        max: usize,
    },
    /// `Content-Length` is not a number, or is given twice with different values (400).
    #[error("the Content-Length header is malformed")]
    BadLength,
    /// The client stopped sending (408).
    #[error("the request body did not arrive in time")]
    Timeout,
    /// The connection failed while reading.
    #[error("the request body could not be read: {0}")]
    Read(String),
}

/// Collects a body up to a bound.
#[derive(Debug)]
pub struct Collector {
    buf: BytesMut,
    max: usize,
}

// === impl Collector ===

impl Collector {
    /// An empty collector for at most `max` bytes; `declared` is the `Content-Length`, if
    /// any, refused at once when over the bound.
    pub fn new(max: usize, declared: Option<u64>) -> Result<Self, BodyError> {
        if declared.is_some_and(|n| n > max as u64) {
            return Err(BodyError::TooLarge { max });
        }
        // Reserve what was declared (never more than the bound), else grow as needed.
        let reserve = declared.map_or(0, |n| n as usize).min(max);
        Ok(Collector {
            buf: BytesMut::with_capacity(reserve),
            max,
        })
    }

    /// Appends a chunk; an error once the bound is passed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        if self.buf.len() + chunk.len() > self.max {
            return Err(BodyError::TooLarge { max: self.max });
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// The body read.
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// The request's `Content-Length`, if it declares one. Several headers must agree
/// (RFC 9110 §8.6), else the length is malformed.
pub fn declared_length(headers: &http::HeaderMap) -> Result<Option<u64>, BodyError> {
    let mut found: Option<u64> = None;
    for v in headers.get_all(http::header::CONTENT_LENGTH) {
        let n: u64 = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(BodyError::BadLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(BodyError::BadLength);
        }
        found = Some(n);
    }
    Ok(found)
}

/// Reads the whole request body (at most `max` bytes).
///
/// A client that sent `Expect: 100-continue` (curl does for bodies over 1 KiB) waits for
/// a `100 Continue` before it sends the body: fhirwall reads the body itself, so it answers
/// that expectation here, once the request passed everything decided without the body
/// (RFC 9110 §10.1.1: a server that will read the content sends 100; one that answers
/// before, such as the 413 above, sends the final status without it). HTTP/1.0 clients
/// never get a 100 (RFC 9110 §15.2).
pub async fn read(session: &mut Session, max: usize) -> Result<Bytes, BodyError> {
    let declared = declared_length(&session.req_header().headers)?;
    let mut body = Collector::new(max, declared)?;
    if expects_continue(session.req_header()) && declared != Some(0) {
        session
            .write_continue_response()
            .await
            .map_err(|e| BodyError::Read(e.to_string()))?;
    }
    let deadline = Instant::now() + TOTAL_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(READ_TIMEOUT.min(left), session.read_request_body())
            .await
            .map_err(|_| BodyError::Timeout)?
            .map_err(|e| BodyError::Read(e.to_string()))?;
        match chunk {
            Some(chunk) => body.push(&chunk)?,
            None => return Ok(body.finish()),
        }
    }
}

/// Whether the client waits for `100 Continue` before sending its body: an HTTP/1.1
/// request whose `Expect` is `100-continue` (case-insensitive, RFC 9110 §10.1.1).
pub fn expects_continue(req: &pingora::http::RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get_all(http::header::EXPECT)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_11_requests_expecting_100_continue_wait_for_it() {
        let request = |version, expect: Option<&str>| {
            let mut r = pingora::http::RequestHeader::build("POST", b"/fhir/Bundle", None).unwrap();
            r.set_version(version);
            if let Some(e) = expect {
                r.insert_header("expect", e).unwrap();
            }
            r
        };
        assert!(expects_continue(&request(
            http::Version::HTTP_11,
            Some("100-continue")
        )));
        assert!(expects_continue(&request(
            http::Version::HTTP_11,
            Some("100-Continue")
        )));
        assert!(!expects_continue(&request(http::Version::HTTP_11, None)));
        assert!(!expects_continue(&request(
            http::Version::HTTP_11,
            Some("200-ok")
        )));
        assert!(!expects_continue(&request(
            http::Version::HTTP_10,
            Some("100-continue")
        )));
    }

    #[test]
    fn a_declared_length_over_the_bound_is_refused_before_reading() {
        assert!(matches!(
            Collector::new(10, Some(11)),
            Err(BodyError::TooLarge { max: 10 })
        ));
        assert!(Collector::new(10, Some(10)).is_ok());
    }

    #[test]
    fn a_chunked_body_is_refused_once_it_passes_the_bound() {
        let mut c = Collector::new(10, None).unwrap();
        c.push(b"12345").unwrap();
        c.push(b"67890").unwrap();
        assert!(matches!(c.push(b"x"), Err(BodyError::TooLarge { .. })));
    }

    #[test]
    fn the_body_is_kept_byte_for_byte() {
        let mut c = Collector::new(100, None).unwrap();
        c.push(b"{\"a\":").unwrap();
        c.push(b" 1}\r\n").unwrap();
        assert_eq!(&c.finish()[..], b"{\"a\": 1}\r\n");
    }

    #[test]
    fn conflicting_content_lengths_are_malformed() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::CONTENT_LENGTH, "5".parse().unwrap());
        assert_eq!(declared_length(&h).unwrap(), Some(5));
        h.append(http::header::CONTENT_LENGTH, "6".parse().unwrap());
        assert!(matches!(declared_length(&h), Err(BodyError::BadLength)));
        let mut h = http::HeaderMap::new();
        h.append(http::header::CONTENT_LENGTH, "-1".parse().unwrap());
        assert!(matches!(declared_length(&h), Err(BodyError::BadLength)));
    }
}
