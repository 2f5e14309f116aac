//! The little HTTP plumbing the dev backend and the dev issuer share: an accept loop over
//! hyper 1 (HTTP/1.1, one task per connection), bounded body reading, and
//! `application/x-www-form-urlencoded` parsing (query strings and token requests).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Response body of the dev servers: always fully buffered (small JSON documents).
pub(crate) type Body = Full<Bytes>;

/// A request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The body is larger than the limit.
    #[error("request body exceeds {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The connection failed while the body was read.
    #[error("request body could not be read: {0}")]
    Read(String),
}

/// A query string or form body is not valid `application/x-www-form-urlencoded`.
#[derive(Debug, thiserror::Error)]
#[error("parameter `{name}` is not valid percent-encoded UTF-8")]
pub(crate) struct FormError {
    /// The raw name of the offending parameter.
    pub(crate) name: String,
}

/// Accepts connections on `listener` forever, serving each with `handler` on its own task.
///
/// Accept errors do not end the loop: a client that resets during the handshake is
/// skipped, and resource exhaustion (EMFILE and the like) is waited out, as hyper's own
/// examples do, so a burst of load cannot silently stop a demo server.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    name: &'static str,
    handler: H,
) -> io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                tracing::warn!(server = name, error = %e, "accept failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(server = name, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Errors that concern one connection only, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub(crate) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// Parses `application/x-www-form-urlencoded` text (WHATWG URL §5.1): pairs split on `&`,
/// name and value on the first `=`, `+` means space, then percent-decoding. Empty pairs
/// (`a=1&&b=2`) are skipped. Invalid UTF-8 after decoding is an error, not a lossy
/// replacement: a parameter must mean exactly one thing.
pub(crate) fn parse_form(src: &str) -> Result<Vec<(String, String)>, FormError> {
    src.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let err = || FormError {
                name: name.to_owned(),
            };
            Ok((
                decode(name).ok_or_else(err)?,
                decode(value).ok_or_else(err)?,
            ))
        })
        .collect()
}

fn decode(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// A response with a JSON body of the given media type.
pub(crate) fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_handles_plus_percent_and_missing_values() {
        let pairs =
            parse_form("scope=patient%2FPatient.rs+patient/Observation.rs&flag&&a=b%3Dc").unwrap();
        assert_eq!(
            pairs,
            vec![
                (
                    "scope".into(),
                    "patient/Patient.rs patient/Observation.rs".into()
                ),
                ("flag".into(), String::new()),
                ("a".into(), "b=c".into()),
            ]
        );
    }

    #[test]
    fn form_decoding_refuses_invalid_utf8() {
        let err = parse_form("ok=1&bad=%FF").unwrap_err();
        assert_eq!(err.name, "bad");
    }
}
