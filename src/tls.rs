//! Transmission security (HIPAA 164.312(e)(1)): TLS for clients on the proxy listeners, and
//! the certificate files both sides read.
//!
//! Client side: a TLS listener is pingora's rustls listener ([`TlsSettings`]) given two
//! things of ours instead of file paths:
//! - a [`ServerCertificate`], the `ResolvesServerCert` that hands rustls the current
//!   certificate from an `ArcSwap`. [`ServerCertificate::watch`] re-reads the files every
//!   `reload_interval` and at SIGHUP, and swaps in a new certificate when their content
//!   changed; a file that does not load (bad PEM, key not matching, expired) is refused with
//!   a log line and the previous certificate keeps serving. Each handshake takes the certificate current at that
//!   moment, so a renewal needs no restart and drops no connection.
//! - for mTLS, a webpki client verifier over the `client_ca` bundle, `required` or
//!   `optional`.
//!
//! Protocol versions are TLS 1.2 and 1.3 only (pingora builds the `ServerConfig` with exactly
//! those; rustls negotiates 1.3 whenever the client offers it). The cipher suites are those of
//! rustls' ring provider: AEAD only (AES-GCM, ChaCha20-Poly1305), ECDHE key exchange only; no
//! CBC, no RSA key exchange, no compression, no renegotiation.
//!
//! Upstream side: `proxy::upstream` sets pingora's peer options (`ca`, client certificate,
//! `verify_cert`, `verify_hostname`, SNI) from files loaded here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pingora::listeners::tls::TlsSettings;
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use sha2::{Digest as _, Sha256};

use crate::config::{
    ClientCertMode, IdentityFiles, ListenerConfig, ListenerTlsConfig, UpstreamConfig,
};

/// Name of the certificate-reload counter.
pub const RELOADS_METRIC: &str = "fhirwall_tls_certificate_reloads_total";
/// Name of the certificate-expiry gauge.
pub const EXPIRY_METRIC: &str = "fhirwall_tls_certificate_expiry_timestamp_seconds";

/// Why a certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No `CERTIFICATE` PEM section.
    #[error("`{path}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// No private key PEM section.
    #[error("`{path}` holds no PEM private key (PKCS#8 `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The PEM text is malformed.
    #[error("`{path}` is not valid PEM: {why}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint.
        why: String,
    },
    /// A certificate section does not hold a valid X.509 certificate.
    #[error("`{path}`: certificate #{index} is not a valid X.509 certificate: {why}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Its position in the file, from 1.
        index: usize,
        /// The parser's complaint.
        why: String,
    },
    /// The key is of a kind rustls cannot sign with.
    #[error("`{path}`: the private key cannot be used: {why}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// rustls' complaint.
        why: String,
    },
    /// The key is not the key of the leaf certificate.
    #[error(
        "the private key in `{key}` does not belong to the first certificate in `{certificate}`"
    )]
    KeyMismatch {
        /// The certificate chain file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The leaf certificate's validity has ended.
    #[error("the certificate in `{path}` expired at {not_after}")]
    Expired {
        /// The certificate chain file.
        path: PathBuf,
        /// Its `notAfter`, RFC 3339.
        not_after: String,
    },
    /// The client CA bundle could not be turned into a verifier.
    #[error("`{path}`: cannot verify client certificates with these CAs: {why}")]
    BadClientCa {
        /// The CA file.
        path: PathBuf,
        /// rustls' complaint.
        why: String,
    },
}

/// A loaded certificate chain and its key, checked to belong together.
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The chain and a signer over the key, as rustls serves them.
    pub certified: Arc<CertifiedKey>,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// The certificate a TLS listener serves, swapped in place when its files change.
pub struct ServerCertificate {
    files: IdentityFiles,
    /// The listener address, for logs and the expiry gauge.
    listener: String,
    current: ArcSwap<CertifiedKey>,
    /// SHA-256 over the certificate and key file contents last looked at (served or refused),
    /// so an unchanged file is not parsed again and a bad one is reported once.
    seen: Mutex<[u8; 32]>,
    metrics: Option<TlsMetrics>,
}

/// What one look at the files found.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// Same content as last time.
    Unchanged,
    /// A new certificate is served from now on.
    Reloaded {
        /// The new leaf's `notAfter`, Unix seconds.
        not_after: i64,
    },
    /// The files changed but do not load; the previous certificate keeps serving.
    Refused(TlsFileError),
}

/// The TLS collectors, registered in the gateway's registry.
#[derive(Clone)]
pub struct TlsMetrics {
    /// `fhirwall_tls_certificate_reloads_total{result="success"|"failure"}`.
    pub reloads: IntCounterVec,
    /// `fhirwall_tls_certificate_expiry_timestamp_seconds{listener}`: `notAfter` of the leaf
    /// served on each TLS listener.
    pub expiry: GaugeVec,
}

// === impl TlsMetrics ===

impl TlsMetrics {
    /// Creates the collectors and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let reloads = IntCounterVec::new(
            Opts::new(
                RELOADS_METRIC,
                "Certificate file changes seen on TLS listeners, by result (failure: the previous certificate kept serving).",
            ),
            &["result"],
        )?;
        let expiry = GaugeVec::new(
            Opts::new(
                EXPIRY_METRIC,
                "notAfter of the certificate served on each TLS listener (Unix seconds).",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(expiry.clone()))?;
        // Both series exist from the start, so an alert on failures has a baseline.
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        Ok(TlsMetrics { reloads, expiry })
    }
}

// === impl ServerCertificate ===

impl ServerCertificate {
    /// Loads the listener's certificate and key; fails when they do not load.
    pub fn load(
        files: &IdentityFiles,
        listener: impl Into<String>,
        metrics: Option<TlsMetrics>,
    ) -> Result<Self, TlsFileError> {
        let (cert_pem, key_pem) = read_pair(files)?;
        let identity = Identity::from_pem(&cert_pem, &key_pem, files)?;
        let this = ServerCertificate {
            files: files.clone(),
            listener: listener.into(),
            current: ArcSwap::new(identity.certified),
            seen: Mutex::new(fingerprint(&cert_pem, &key_pem)),
            metrics,
        };
        this.set_expiry(identity.not_after);
        Ok(this)
    }

    /// The certificate served to the next handshake.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Reads the files and, when their content changed since the last look, loads and
    /// serves them; a change that does not load is refused and the current certificate
    /// stays. Counts and logs the outcome. Also the hook for an explicit reload (SIGHUP).
    pub fn check_for_change(&self) -> ReloadOutcome {
        let outcome = self.look();
        match &outcome {
            ReloadOutcome::Unchanged => {}
            ReloadOutcome::Reloaded { not_after } => {
                tracing::info!(
                    listener = %self.listener,
                    certificate = %self.files.certificate.display(),
                    not_after = %rfc3339(*not_after),
                    "TLS certificate reloaded"
                );
                self.count("success");
            }
            ReloadOutcome::Refused(e) => {
                tracing::error!(
                    listener = %self.listener,
                    error = %e,
                    "TLS certificate files changed but do not load; still serving the previous certificate"
                );
                self.count("failure");
            }
        }
        outcome
    }

    /// Checks the files every `interval` and at every SIGHUP, forever.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        // Every SIGHUP listener in the process is woken (tokio fans the signal out), so this
        // coexists with other uses of SIGHUP, e.g. a configuration reload.
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(listener = %self.listener, error = %e, "cannot listen for SIGHUP; TLS certificate files are still checked on schedule");
                None
            }
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        tracing::info!(
            listener = %self.listener,
            certificate = %self.files.certificate.display(),
            interval = ?interval,
            "watching the TLS certificate files (and SIGHUP)"
        );
        loop {
            let hangup_ended = tokio::select! {
                _ = tick.tick() => false,
                signal = async {
                    match hangup.as_mut() {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                } => signal.is_none(),
            };
            if hangup_ended {
                // The signal stream is gone; keep to the schedule rather than spin.
                hangup = None;
            }
            // A few kilobytes, read off the async workers so a slow disk stalls nothing.
            let this = self.clone();
            if tokio::task::spawn_blocking(move || this.check_for_change())
                .await
                .is_err()
            {
                tracing::error!(listener = %self.listener, "TLS certificate check panicked");
            }
        }
    }

    fn look(&self) -> ReloadOutcome {
        let (cert_pem, key_pem) = match read_pair(&self.files) {
            Ok(pair) => pair,
            Err(e) => {
                // A vanished file is a change too; report it once, like bad content.
                let mut seen = self.seen.lock();
                let mark = fingerprint(e.to_string().as_bytes(), b"unreadable");
                if *seen == mark {
                    return ReloadOutcome::Unchanged;
                }
                *seen = mark;
                return ReloadOutcome::Refused(e);
            }
        };
        let print = fingerprint(&cert_pem, &key_pem);
        {
            let mut seen = self.seen.lock();
            if *seen == print {
                return ReloadOutcome::Unchanged;
            }
            *seen = print;
        }
        match Identity::from_pem(&cert_pem, &key_pem, &self.files) {
            Ok(identity) => {
                self.current.store(identity.certified);
                self.set_expiry(identity.not_after);
                ReloadOutcome::Reloaded {
                    not_after: identity.not_after,
                }
            }
            Err(e) => ReloadOutcome::Refused(e),
        }
    }

    fn set_expiry(&self, not_after: i64) {
        if let Some(m) = &self.metrics {
            m.expiry
                .with_label_values(&[self.listener.as_str()])
                .set(not_after as f64);
        }
    }

    fn count(&self, result: &str) {
        if let Some(m) = &self.metrics {
            m.reloads.with_label_values(&[result]).inc();
        }
    }
}

impl ResolvesServerCert for ServerCertificate {
    /// One certificate per listener whatever the SNI: the one current at this handshake.
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("listener", &self.listener)
            .field("certificate", &self.files.certificate)
            .field("key", &self.files.key)
            .finish_non_exhaustive()
    }
}

// === impl Identity ===

impl Identity {
    /// Loads `files` and checks that the key belongs to the leaf and the leaf has not expired.
    pub fn load(files: &IdentityFiles) -> Result<Self, TlsFileError> {
        let (cert_pem, key_pem) = read_pair(files)?;
        Identity::from_pem(&cert_pem, &key_pem, files)
    }

    fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        files: &IdentityFiles,
    ) -> Result<Self, TlsFileError> {
        let chain = parse_certificates(cert_pem, &files.certificate)?;
        let key = parse_private_key(key_pem, &files.key)?;
        Identity::new(chain, key, files)
    }

    /// Checks a parsed chain and key together (see [`Identity::load`]).
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        files: &IdentityFiles,
    ) -> Result<Self, TlsFileError> {
        let not_after = not_after(&chain[0]);
        if not_after < time::OffsetDateTime::now_utc().unix_timestamp() {
            return Err(TlsFileError::Expired {
                path: files.certificate.clone(),
                not_after: rfc3339(not_after),
            });
        }
        let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), provider())
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsFileError::KeyMismatch {
                    certificate: files.certificate.clone(),
                    key: files.key.clone(),
                },
                other => TlsFileError::BadKey {
                    path: files.key.clone(),
                    why: other.to_string(),
                },
            })?;
        Ok(Identity {
            chain,
            key,
            certified: Arc::new(certified),
            not_after,
        })
    }
}

impl Identity {
    /// The key's DER for pingora's `CertKey`, which detects the key format from the bytes
    /// again (and panics when it cannot); checked here so that cannot happen mid-request.
    pub fn key_der_for_pingora(&self, files: &IdentityFiles) -> Result<Vec<u8>, TlsFileError> {
        let der = self.key.secret_der().to_vec();
        match PrivateKeyDer::try_from(der.as_slice()) {
            Ok(k) if std::mem::discriminant(&k) == std::mem::discriminant(&self.key) => Ok(der),
            _ => Err(TlsFileError::BadKey {
                path: files.key.clone(),
                why: "the key encoding is not recognised from its DER; convert it to PKCS#8 (`openssl pkcs8 -topk8 -nocrypt`)".to_owned(),
            }),
        }
    }
}

// === listeners ===

/// Why the proxy listeners could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The TLS collectors could not be registered.
    #[error("registering the TLS metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A listener's certificate, key or client CA did not load.
    #[error("TLS on {addr}: {source}")]
    Tls {
        /// The listener address.
        addr: String,
        /// What failed.
        source: TlsFileError,
    },
}

/// Adds every configured listener to the proxy service: TLS ones with their certificate
/// (and client verifier), plain ones (loopback, or `plaintext: true`) with a warning.
/// Returns each TLS listener's certificate and `reload_interval`, for
/// [`ServerCertificate::watch`].
pub fn add_listeners<A>(
    service: &mut pingora::services::listening::Service<A>,
    listeners: &[ListenerConfig],
    metrics: &crate::metrics::Metrics,
) -> Result<Vec<(Arc<ServerCertificate>, Duration)>, ListenerError> {
    let tls_metrics = TlsMetrics::register(metrics.registry())?;
    let mut certificates = Vec::new();
    for listener in listeners {
        let addr = listener.addr.to_string();
        let Some(tls) = &listener.tls else {
            // The configuration refuses a plain listener off loopback unless the file says
            // `plaintext: true`.
            tracing::warn!(listener = %addr, "listener serves clients in plain HTTP (no TLS)");
            service.add_listener(
                pingora::listeners::ListenerConfig::tcp(addr.as_str()).l4_buffer(write_buffer()),
            );
            continue;
        };
        let in_listener = |source| ListenerError::Tls {
            addr: addr.clone(),
            source,
        };
        let cert = Arc::new(
            ServerCertificate::load(&tls.identity, &addr, Some(tls_metrics.clone()))
                .map_err(in_listener)?,
        );
        let settings = listener_settings(cert.clone(), tls).map_err(in_listener)?;
        service.add_listener(
            pingora::listeners::ListenerConfig::tcp(addr.as_str())
                .tls(settings)
                .l4_buffer(write_buffer()),
        );
        certificates.push((cert, tls.reload_interval));
    }
    Ok(certificates)
}

/// Bytes a client connection buffers before a send. pingora writes a response's header and
/// body separately; with its default (one MSS, 1,460 bytes) a typical FHIR resource costs two
/// `sendto` calls, the header alone and then the body. 8 KiB lets the header and a body of up
/// to about 7.5 KiB leave in one send (measured: 3 -> 2 sends per proxied request, which was a
/// third of the process's CPU in the load benchmark profile), for 8 KiB per open connection.
const CLIENT_WRITE_BUFFER: usize = 8 * 1024;

fn write_buffer() -> pingora::listeners::L4BufferSettings {
    pingora::listeners::L4BufferSettings::default().write(CLIENT_WRITE_BUFFER)
}

/// Start-up log lines for an upstream reached without (verified) TLS.
pub fn warn_about_upstream_transport(upstream: &UpstreamConfig) {
    let target = format!("{}:{}", upstream.host, upstream.port);
    if !upstream.tls {
        tracing::warn!(
            upstream = %target,
            "upstream is reached in plain HTTP: requests and PHI are not encrypted on the way"
        );
    } else if !upstream.verify_tls {
        // HIPAA 164.312(e)(1): without verification anyone on the path can pose as the
        // backend and read every request.
        tracing::error!(
            upstream = %target,
            "TLS CERTIFICATE VERIFICATION OF THE UPSTREAM IS DISABLED (upstream.verify_tls: false): anyone on the network path can impersonate the backend"
        );
    }
}

/// pingora's TLS settings for a listener serving `cert`, with client certificate
/// verification when the listener has a `client_ca`.
pub fn listener_settings(
    cert: Arc<ServerCertificate>,
    cfg: &ListenerTlsConfig,
) -> Result<TlsSettings, TlsFileError> {
    // The paths are ignored once a resolver is set (pingora `TlsSettings::build`).
    let mut settings =
        TlsSettings::intermediate("", "").expect("TlsSettings::intermediate does not fail");
    settings.set_cert_resolver(cert);
    if let Some(clients) = &cfg.client_certs {
        settings.set_client_cert_verifier(client_verifier(&clients.ca, clients.mode)?);
    }
    Ok(settings)
}

/// A verifier of client certificates chaining to the CAs in `ca`.
pub fn client_verifier(
    ca: &Path,
    mode: ClientCertMode,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsFileError> {
    let roots = load_roots(ca)?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider_arc());
    let builder = match mode {
        ClientCertMode::Required => builder,
        // A certificate that is presented is still verified; only its absence is allowed.
        ClientCertMode::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|e| TlsFileError::BadClientCa {
        path: ca.to_path_buf(),
        why: e.to_string(),
    })
}

/// `X-Forwarded-Proto` for a request on this session: `https` when the client connection
/// is TLS.
pub fn forwarded_proto(session: &pingora::proxy::Session) -> &'static str {
    match session.digest().and_then(|d| d.ssl_digest.as_ref()) {
        Some(_) => "https",
        None => "http",
    }
}

/// SHA-256 of the DER client certificate the TLS handshake verified, if the client
/// presented one: the `x5t#S256` of RFC 8705 §3.1 (base64url of these bytes) that a
/// certificate-bound token carries in `cnf`.
pub fn client_certificate_sha256(session: &pingora::proxy::Session) -> Option<[u8; 32]> {
    let digest = session.digest()?.ssl_digest.as_ref()?;
    digest.cert_digest.as_slice().try_into().ok()
}

// === files ===

/// Reads a PEM bundle of CA certificates into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let certs = load_certificates(path)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsFileError::BadCertificate {
            path: path.to_path_buf(),
            index: i + 1,
            why: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Reads every certificate of a PEM file (at least one), each checked to parse as X.509.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    parse_certificates(&read(path)?, path)
}

/// Reads the first private key of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    parse_private_key(&read(path)?, path)
}

fn parse_certificates(
    pem_text: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::BadPem {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for (i, cert) in certs.iter().enumerate() {
        // Parsed now so nothing later (pingora parses CA and client certificates with
        // `expect`) meets a malformed one.
        if let Err(e) = x509_parser::parse_x509_certificate(cert.as_ref()) {
            return Err(TlsFileError::BadCertificate {
                path: path.to_path_buf(),
                index: i + 1,
                why: e.to_string(),
            });
        }
    }
    Ok(certs)
}

fn parse_private_key(pem_text: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    match PrivateKeyDer::from_pem_slice(pem_text) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsFileError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(TlsFileError::BadPem {
            path: path.to_path_buf(),
            why: e.to_string(),
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_pair(files: &IdentityFiles) -> Result<(Vec<u8>, Vec<u8>), TlsFileError> {
    Ok((read(&files.certificate)?, read(&files.key)?))
}

fn fingerprint(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert_pem.len() as u64).to_be_bytes());
    h.update(cert_pem);
    h.update(key_pem);
    h.finalize().into()
}

/// `notAfter` of a certificate already checked to parse.
fn not_after(cert: &CertificateDer<'_>) -> i64 {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(i64::MIN)
}

/// A Unix time as RFC 3339 (the number itself if out of range).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// The ring provider, the one pingora installs as the process default.
fn provider() -> &'static CryptoProvider {
    provider_arc_ref()
}

fn provider_arc() -> Arc<CryptoProvider> {
    provider_arc_ref().clone()
}

fn provider_arc_ref() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
