//! Exchanges fhirwall runs with the upstream itself, outside pingora's streaming proxy loop:
//! every request whose body was read for the decision (pingora does not resend a body
//! consumed in `request_filter`), whose response must be held for a check, that needs a
//! stored version read first, or that is a filtered batch.
//!
//! It uses pingora's own connector with the same peer ([`super::upstream::Upstream::peer`],
//! so the same TLS settings, timeouts and connection pool key) and the same header
//! preparation ([`super::upstream::Upstream::prepare_request`]) as the streaming path.
//! `connect_timeout`, `read_timeout` and `write_timeout` come with the peer; the wait for the
//! response header is bounded by `total_timeout`. Requests that need none of this never come
//! here and keep pingora's streaming path untouched.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use super::upstream::Upstream;

/// Request headers that describe the client's body; dropped where fhirwall sends its own
/// body (or none).
const BODY_HEADERS: [http::HeaderName; 3] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::EXPECT,
];

/// Headers that make a write conditional; dropped from the `GET` of a before-check.
const WRITE_HEADERS: [&str; 5] = [
    "content-type",
    "if-match",
    "if-none-match",
    "if-none-exist",
    "prefer",
];

/// The upstream side of one exchange.
pub struct Exchanger {
    connector: Connector,
}

/// An upstream response whose header has arrived; its body is still to be read.
pub struct Upstreamed {
    http: HttpSession,
    peer: Box<HttpPeer>,
    /// The response header as the upstream sent it.
    pub header: ResponseHeader,
}

/// Why a held body could not be read.
#[derive(Debug)]
pub enum HoldError {
    /// Larger than the bound.
    TooLarge,
    /// The upstream failed while sending it.
    Upstream(Box<Error>),
}

// === impl Exchanger ===

impl Default for Exchanger {
    fn default() -> Self {
        Exchanger::new(None)
    }
}

impl Exchanger {
    /// An exchanger whose connector uses `options` (pass the proxy service's, e.g.
    /// `ConnectorOptions::from_server_conf`, so CA files and client certificates configured
    /// for pingora apply here too). `None`: pingora's defaults; the peer's own options (TLS
    /// verification, timeouts) apply either way.
    pub fn new(options: Option<pingora::connectors::ConnectorOptions>) -> Self {
        Exchanger {
            connector: Connector::new(options),
        }
    }

    /// Sends `req` with `body` and waits for the response header.
    pub async fn send(
        &self,
        upstream: &Upstream,
        req: RequestHeader,
        body: Option<Bytes>,
    ) -> pingora::Result<Upstreamed> {
        let peer = upstream.peer();
        let (mut http, _reused) = self.connector.get_http_session(&*peer).await?;
        http.set_read_timeout(peer.options.read_timeout);
        http.set_write_timeout(peer.options.write_timeout);
        let exchange = async {
            http.write_request_header(Box::new(req)).await?;
            if let Some(body) = body.filter(|b| !b.is_empty()) {
                http.write_request_body(body, true).await?;
            }
            http.finish_request_body().await?;
            http.read_response_header().await
        };
        match tokio::time::timeout(upstream.total_timeout(), exchange).await {
            Ok(r) => r?,
            Err(_) => {
                let mut e = Error::explain(
                    ErrorType::ReadTimedout,
                    "upstream response header exceeded total_timeout",
                );
                e.as_up();
                return Err(e);
            }
        }
        let header = http
            .response_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?;
        Ok(Upstreamed { http, peer, header })
    }

    /// Returns the connection to the pool when the response was read to its end.
    pub async fn release(&self, mut done: Upstreamed) {
        if done.http.response_done() {
            let idle = done.peer.options.idle_timeout;
            self.connector
                .release_http_session(done.http, &*done.peer, idle)
                .await;
        } else {
            done.http.shutdown().await;
        }
    }
}

// === impl Upstreamed ===

impl Upstreamed {
    /// The response status.
    pub fn status(&self) -> u16 {
        self.header.status.as_u16()
    }

    /// Reads the whole body, refusing to hold more than `max` bytes.
    pub async fn hold(&mut self, max: usize) -> Result<Bytes, HoldError> {
        let mut buf = BytesMut::new();
        while let Some(chunk) = self
            .http
            .read_response_body()
            .await
            .map_err(HoldError::Upstream)?
        {
            if buf.len() + chunk.len() > max {
                return Err(HoldError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// The next chunk of the body, for streaming it on.
    pub async fn next_chunk(&mut self) -> pingora::Result<Option<Bytes>> {
        self.http.read_response_body().await
    }
}

/// The request header sent upstream for the client's request: the client's header with
/// `path_and_query` as target (the query may carry narrowing items), the body framing of
/// `body_len` bytes, and the forwarding rules of the streaming path (`X-Forwarded-*`,
/// `X-Request-Id`, no client credentials). `Accept-Encoding` is dropped: fhirwall reads
/// these bodies, so they must come uncompressed.
pub fn forward_header(
    client_req: &RequestHeader,
    path_and_query: &str,
    body_len: usize,
    upstream: &Upstream,
    client: Option<&SocketAddr>,
    proto: &'static str,
    request_id: &str,
) -> pingora::Result<RequestHeader> {
    let mut req = client_req.clone();
    set_target(&mut req, path_and_query)?;
    for h in BODY_HEADERS {
        req.remove_header(&h);
    }
    req.remove_header(&http::header::ACCEPT_ENCODING);
    if body_len > 0 || !matches!(req.method, http::Method::GET | http::Method::HEAD) {
        req.insert_header(http::header::CONTENT_LENGTH, body_len)?;
    }
    upstream.prepare_request(&mut req, client, proto, request_id)?;
    Ok(req)
}

/// The `GET` of a stored resource (a before-check): the client's header without its body and
/// write conditions, to `path` (below the base).
pub fn read_header(
    client_req: &RequestHeader,
    base_path: &str,
    path: &str,
    upstream: &Upstream,
    client: Option<&SocketAddr>,
    proto: &'static str,
    request_id: &str,
) -> pingora::Result<RequestHeader> {
    let mut req = client_req.clone();
    req.set_method(http::Method::GET);
    let path = path.trim_start_matches('/');
    set_target(&mut req, &format!("{base_path}/{path}"))?;
    for h in BODY_HEADERS {
        req.remove_header(&h);
    }
    for h in WRITE_HEADERS {
        req.remove_header(h);
    }
    req.remove_header(&http::header::ACCEPT_ENCODING);
    upstream.prepare_request(&mut req, client, proto, request_id)?;
    Ok(req)
}

/// The response header sent to the client for a body fhirwall replaced or holds: the
/// upstream's header with the framing of `len` bytes.
pub fn framed(header: ResponseHeader, len: usize) -> pingora::Result<ResponseHeader> {
    let mut header = relayed(header);
    header.remove_header(&http::header::TRANSFER_ENCODING);
    header.insert_header(http::header::CONTENT_LENGTH, len)?;
    Ok(header)
}

/// The upstream's response header as relayed to the client: without the hop-by-hop fields
/// of the upstream connection (RFC 9110 §7.6.1), which say nothing about the client's.
pub fn relayed(mut header: ResponseHeader) -> ResponseHeader {
    for h in ["connection", "keep-alive", "proxy-connection"] {
        header.remove_header(h);
    }
    header
}

fn set_target(req: &mut RequestHeader, path_and_query: &str) -> pingora::Result<()> {
    let uri: http::Uri = path_and_query
        .parse()
        .map_err(|e| Error::because(ErrorType::InternalError, "building the upstream target", e))?;
    req.set_uri(uri);
    Ok(())
}
