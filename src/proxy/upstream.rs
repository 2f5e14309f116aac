//! The upstream side: the peer requests go to, and the headers fhirwall adds or removes on
//! the way there and back.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

use crate::config::{ForwardingConfig, UpstreamConfig};
use crate::tls::{Identity, TlsFileError};

/// `X-Request-Id`.
pub const X_REQUEST_ID: &str = "x-request-id";
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// Client-supplied headers that name the client or the original request to the backend.
/// Unless the gateway sits behind a trusted proxy (`trust_forwarded_for`), a client could use
/// them to pose as another address or host, so they are removed.
pub const SPOOFABLE_FORWARDING_HEADERS: [&str; 5] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-client-ip",
];

/// Headers some servers honour to run another method than the request line's; fhirwall
/// authorizes the request line's method, so a request carrying one is refused.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The upstream peer, resolved once at load so no request waits on DNS.
#[derive(Clone)]
pub struct Upstream {
    peer: HttpPeer,
    total_timeout: std::time::Duration,
    forward_authorization: bool,
    trust_forwarded_for: bool,
}

/// Why the upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The host name did not resolve.
    #[error("upstream host `{host}` did not resolve: {source}")]
    Resolve {
        /// The configured host.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The CA bundle or client certificate did not load.
    #[error("upstream TLS: {0}")]
    Tls(#[from] TlsFileError),
}

// === impl Upstream ===

impl Upstream {
    /// Resolves the upstream address and prepares the peer template (timeouts, TLS, pool).
    pub fn new(cfg: &UpstreamConfig, fwd: &ForwardingConfig) -> Result<Self, UpstreamError> {
        // The configured host keeps IPv6 brackets (`[::1]`), which the resolver does not take.
        let host = cfg.host.trim_start_matches('[').trim_end_matches(']');
        let addr: SocketAddr = (host, cfg.port)
            .to_socket_addrs()
            .and_then(|mut it| {
                it.next()
                    .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
            })
            .map_err(|source| UpstreamError::Resolve {
                host: cfg.host.clone(),
                source,
            })?;
        let mut peer = HttpPeer::new(addr, cfg.tls, cfg.sni.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(cfg.connect_timeout);
        // No single wait on the upstream may exceed the total budget; the response-header
        // deadline itself is checked again when the header arrives (a trickling upstream).
        o.read_timeout = Some(cfg.read_timeout.min(cfg.total_timeout));
        o.total_connection_timeout = Some(cfg.connect_timeout.min(cfg.total_timeout));
        o.write_timeout = Some(cfg.write_timeout);
        o.idle_timeout = Some(cfg.idle_timeout);
        // pingora's rustls connector: with `verify_cert` it checks the chain against `ca` (or
        // the system roots) and the name against the SNI (`verify_hostname`); an empty SNI
        // would turn verification off, which the configuration never produces.
        o.verify_cert = cfg.verify_tls;
        o.verify_hostname = cfg.verify_tls;
        if cfg.tls {
            if let Some(ca) = &cfg.ca {
                let certs = crate::tls::load_certificates(ca)?;
                // Each certificate was parsed by `load_certificates`, so `parse_x509` (which
                // panics on bad DER) cannot fail here.
                let ca: Vec<WrappedX509> = certs
                    .into_iter()
                    .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
                    .collect();
                o.ca = Some(Arc::from(ca));
            }
            if let Some(files) = &cfg.client_identity {
                let id = Identity::load(files)?;
                let key = id.key_der_for_pingora(files)?;
                let chain = id.chain.iter().map(|c| c.to_vec()).collect();
                peer.client_cert_key = Some(Arc::new(CertKey::new(chain, key)));
            }
        }
        Ok(Upstream {
            peer,
            total_timeout: cfg.total_timeout,
            forward_authorization: cfg.forward_authorization,
            trust_forwarded_for: fwd.trust_forwarded_for,
        })
    }

    /// The budget from sending the request to the end of the upstream's response header.
    pub fn total_timeout(&self) -> std::time::Duration {
        self.total_timeout
    }

    /// A peer for one request (same pool key every time, so connections are reused).
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }

    /// Rewrites the request on its way upstream: origin-form target (what was matched is
    /// what is forwarded), no client credentials unless configured, `X-Forwarded-For`,
    /// `X-Forwarded-Proto` and `X-Request-Id`.
    pub fn prepare_request(
        &self,
        req: &mut RequestHeader,
        client: Option<&SocketAddr>,
        proto: &'static str,
        request_id: &str,
    ) -> pingora::Result<()> {
        // An absolute-form target (`GET http://other/Patient/1`) was authorized by its path;
        // send only that path and query so the backend cannot route on the authority.
        if req.uri.scheme().is_some() || req.uri.authority().is_some() {
            let origin_form = req
                .uri
                .path_and_query()
                .map(|pq| pq.as_str().to_owned())
                .unwrap_or_else(|| "/".to_owned());
            let uri = origin_form.parse().map_err(|e| {
                pingora::Error::because(
                    pingora::ErrorType::InternalError,
                    "rewriting the request target",
                    e,
                )
            })?;
            req.set_uri(uri);
        }
        if !self.forward_authorization {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        if !self.trust_forwarded_for {
            for h in SPOOFABLE_FORWARDING_HEADERS {
                req.remove_header(h);
            }
        }
        // Several `X-Forwarded-For` lines are one comma-separated list (RFC 9110 §5.3): keep
        // them all, in order, when the previous hop is trusted.
        let previous = if self.trust_forwarded_for {
            let mut all = String::new();
            for v in req.headers.get_all(X_FORWARDED_FOR) {
                let v = v.to_str().unwrap_or_default().trim();
                if !v.is_empty() {
                    if !all.is_empty() {
                        all.push_str(", ");
                    }
                    all.push_str(v);
                }
            }
            all
        } else {
            String::new()
        };
        match client {
            Some(client) => {
                let ip = client.ip().to_string();
                let xff = if previous.is_empty() {
                    ip
                } else {
                    format!("{previous}, {ip}")
                };
                req.insert_header(X_FORWARDED_FOR, xff)?;
            }
            None if !previous.is_empty() => req.insert_header(X_FORWARDED_FOR, previous)?,
            None => {
                req.remove_header(X_FORWARDED_FOR);
            }
        }
        req.insert_header(X_FORWARDED_PROTO, proto)?;
        req.insert_header(X_REQUEST_ID, request_id)?;
        Ok(())
    }
}

/// Whether a client-sent `X-Request-Id` is kept: 1 to 128 characters from a conservative
/// set, so it can be logged and echoed without escaping or header injection.
pub fn well_formed_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new random request id (128 bits, 32 hex characters).
pub fn new_request_id() -> String {
    let n: u128 = rand::random();
    format!("{n:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_well_formed() {
        assert!(well_formed_request_id(b"abc-123_DEF.4:5"));
        assert!(!well_formed_request_id(b""));
        assert!(!well_formed_request_id(b"a b"));
        assert!(!well_formed_request_id(b"a\r\nx-evil: 1"));
        assert!(!well_formed_request_id(&[b'a'; 129]));
    }

    #[test]
    fn generated_request_ids_are_unique_hex() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_request_id());
    }
}
