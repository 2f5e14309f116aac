//! Signing keys of one trusted issuer: where they come from (`jwks_uri`, or OpenID Connect /
//! RFC 8414 discovery), which JWKS entries are usable, and when they are fetched again.
//!
//! The verify path reads the current [`KeySet`] through an `ArcSwap`: no lock, and the
//! [`DecodingKey`]s are built when the set is fetched, not per request. Fetches happen on
//! schedule ([`IssuerKeys::run_schedule`]) and when a token names an unknown `kid`. Every
//! fetch goes through [`IssuerKeys::refresh`], which is
//!
//! - single-flight: concurrent callers wait for the fetch in progress (at most
//!   `fetch_timeout`) instead of starting their own;
//! - rate-limited: at most one fetch per `jwks_min_refresh_interval`, so a flood of tokens
//!   with made-up `kid`s cannot make fhirwall hammer the identity provider; until the
//!   interval passes, an unknown `kid` fails fast;
//! - cancellation-proof: the fetch runs in its own task, so a client hanging up does not
//!   abort a fetch others are waiting for;
//! - conservative: a failed fetch keeps the previous keys.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus::{IntCounter, IntGauge};
use serde::Deserialize;
use serde_json::Value;

use crate::config::IssuerConfig;
use crate::metrics::Metrics;

/// Largest discovery document or JWKS accepted (bytes). Real ones are a few KiB.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// RSA moduli outside this range (bits) are skipped: below is too weak to trust, above is
/// more than the RustCrypto verifier accepts.
const RSA_MODULUS_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// base64url as found in the wild in JWKS: RFC 7518 says unpadded, some servers pad.
const B64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The kind of a usable public key, which fixes the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// `kty: RSA`.
    Rsa,
    /// `kty: EC`, `crv: P-256`.
    EcP256,
    /// `kty: EC`, `crv: P-384`.
    EcP384,
    /// `kty: OKP`, `crv: Ed25519`.
    Ed25519,
}

/// One usable signing key.
pub(crate) struct Key {
    /// `kid`.
    pub(crate) kid: Option<Box<str>>,
    /// The JWK's `alg`, when it pins one.
    pub(crate) alg: Option<Algorithm>,
    /// What the key is.
    pub(crate) kind: KeyKind,
    /// Ready for `jsonwebtoken::decode`.
    pub(crate) decoding: DecodingKey,
}

/// The usable signing keys of an issuer, as of one fetch.
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

/// The outcome of looking a token's key up in a [`KeySet`].
#[derive(Debug)]
pub(crate) enum Lookup {
    /// This key (index) verifies the token's algorithm.
    Found(usize),
    /// A key matches the `kid`, but not for the token's algorithm.
    WrongAlgorithm,
    /// No key matches.
    NotFound,
}

/// Why a JWKS could not be had. `Display` goes to operators (logs, `/readyz`), never to
/// clients; it names URLs and statuses, never tokens.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// Connection, TLS or protocol failure.
    #[error("GET {url}: {source}")]
    Http {
        /// What was fetched.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// A non-200 answer.
    #[error("GET {url}: HTTP status {status}")]
    Status {
        /// What was fetched.
        url: String,
        /// The status received.
        status: u16,
    },
    /// The document exceeds [`MAX_DOCUMENT_BYTES`].
    #[error("GET {url}: document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge {
        /// What was fetched.
        url: String,
    },
    /// Not the JSON expected.
    #[error("GET {url}: invalid document: {source}")]
    Json {
        /// What was fetched.
        url: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// RFC 8414 §3.3 / OpenID Connect Discovery §4.3: the metadata must name the issuer it
    /// was fetched for.
    #[error("GET {url}: metadata is for issuer {found:?}, not the configured one")]
    IssuerMismatch {
        /// What was fetched.
        url: String,
        /// The `issuer` the document named.
        found: String,
    },
    /// The metadata has no `jwks_uri`.
    #[error("GET {url}: metadata has no jwks_uri")]
    NoJwksUri {
        /// What was fetched.
        url: String,
    },
    /// No discovery location worked.
    #[error("discovery failed: {0}")]
    Discovery(String),
    /// The JWKS has no key fhirwall can use; the previous keys (if any) are kept.
    #[error("GET {url}: no usable signing key ({skipped} skipped)")]
    NoUsableKeys {
        /// What was fetched.
        url: String,
        /// Keys present but unusable.
        skipped: usize,
    },
    /// Discovery and JWKS did not complete within `fetch_timeout`.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The fetch task died.
    #[error("fetch task failed: {0}")]
    Task(String),
}

/// The signing keys of one issuer, and how to get them.
pub(crate) struct IssuerKeys {
    issuer: Arc<str>,
    /// The configured `jwks_uri`; `None` means discovery.
    jwks_uri: Option<String>,
    /// The `jwks_uri` found by discovery, kept until a JWKS fetch from it fails.
    discovered: parking_lot::Mutex<Option<String>>,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    fetch_timeout: Duration,
    http: reqwest::Client,

    keys: ArcSwapOption<KeySet>,
    /// Held for the whole of a fetch; what makes fetches single-flight.
    fetch_lock: Arc<tokio::sync::Mutex<()>>,
    /// Completed fetch attempts; tells a waiter that the fetch it waited for is done.
    generation: AtomicU64,
    /// Refreshes that withdrew a key that was there before: tokens verified with a withdrawn
    /// key must not keep being served from the verified-token cache.
    withdrawals: AtomicU64,
    /// Start of the last fetch attempt (rate limit).
    last_attempt: parking_lot::Mutex<Option<Instant>>,
    /// Outcome of the last fetch attempt, for `/readyz`.
    last_error: ArcSwapOption<String>,
    last_success: parking_lot::Mutex<Option<SystemTime>>,

    refreshes_ok: IntCounter,
    refreshes_error: IntCounter,
    key_count: IntGauge,
}

/// One issuer's key state, for `/readyz` detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerStatus {
    /// The configured issuer URL.
    pub issuer: Arc<str>,
    /// Whether a key set was ever loaded (the issuer's part of readiness).
    pub loaded: bool,
    /// Usable keys currently loaded.
    pub keys: usize,
    /// When keys were last fetched successfully.
    pub last_success: Option<SystemTime>,
    /// Why the last fetch failed, if it did (operator-facing).
    pub last_error: Option<String>,
}

/// The JWKS document (RFC 7517 §5).
#[derive(Deserialize)]
struct JwkSetDocument {
    keys: Vec<Value>,
}

/// The JWK members fhirwall reads (RFC 7517 §4, RFC 7518 §6).
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// The discovery document members fhirwall reads.
#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    #[serde(default)]
    jwks_uri: Option<String>,
}

// === impl KeyKind ===

impl KeyKind {
    /// The algorithms a key of this kind can verify.
    pub(crate) fn algorithms(self) -> &'static [Algorithm] {
        match self {
            KeyKind::Rsa => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            KeyKind::EcP256 => &[Algorithm::ES256],
            KeyKind::EcP384 => &[Algorithm::ES384],
            KeyKind::Ed25519 => &[Algorithm::EdDSA],
        }
    }
}

// === impl Key ===

impl Key {
    /// Whether this key verifies `alg`: the JWK's own `alg` when it has one, else any
    /// algorithm of its kind. The token header never chooses on its own.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        match self.alg {
            Some(pinned) => pinned == alg,
            None => self.kind.algorithms().contains(&alg),
        }
    }

    /// One JWKS entry as a usable key; `Err` says why it is skipped (for debug logs).
    fn from_jwk(value: Value) -> Result<Key, &'static str> {
        let jwk: RawJwk = serde_json::from_value(value).map_err(|_| "not a JWK")?;

        // RFC 7517 §4.2/§4.3: only signature keys; an encryption key is never a
        // verification key, even if its material would fit.
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err("use is not sig");
        }
        if jwk
            .key_ops
            .as_ref()
            .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
        {
            return Err("key_ops lacks verify");
        }

        let b64 = |field: &Option<String>, name: &'static str| -> Result<Vec<u8>, &'static str> {
            let s = field.as_deref().ok_or(name)?;
            B64URL_LENIENT.decode(s).map_err(|_| name)
        };
        let (kind, decoding) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => {
                let n = b64(&jwk.n, "bad n")?;
                let e = b64(&jwk.e, "bad e")?;
                let n = strip_leading_zeros(&n);
                let e = strip_leading_zeros(&e);
                if !RSA_MODULUS_BITS.contains(&bit_len(n)) {
                    return Err("unsupported RSA modulus size");
                }
                // A public exponent is odd and at least 3; 8 bytes is far beyond real ones.
                if e.is_empty() || e.len() > 8 || e[e.len() - 1] & 1 == 0 || e == [1] {
                    return Err("bad RSA exponent");
                }
                (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(n, e))
            }
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (kind, len) = if crv == "P-256" {
                    (KeyKind::EcP256, 32)
                } else {
                    (KeyKind::EcP384, 48)
                };
                let x = b64(&jwk.x, "bad x")?;
                let y = b64(&jwk.y, "bad y")?;
                if x.len() != len || y.len() != len {
                    return Err("bad EC coordinate length");
                }
                // SEC1 uncompressed point, the form jsonwebtoken's EC verifier reads.
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                if kind == KeyKind::EcP256 && p256::PublicKey::from_sec1_bytes(&point).is_err() {
                    return Err("EC point not on P-256");
                }
                (kind, DecodingKey::from_ec_der(&point))
            }
            ("OKP", Some("Ed25519")) => {
                let x = b64(&jwk.x, "bad x")?;
                if x.len() != 32 {
                    return Err("bad Ed25519 key length");
                }
                (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
            }
            // `oct` (shared secrets) never verify anything here; other curves are unsupported.
            ("oct", _) => return Err("symmetric key"),
            _ => return Err("unsupported key type or curve"),
        };

        let alg = match jwk.alg.as_deref() {
            None => None,
            Some(name) => {
                let alg: Algorithm = name.parse().map_err(|_| "unsupported alg")?;
                if !kind.algorithms().contains(&alg) {
                    return Err("alg does not fit the key type");
                }
                Some(alg)
            }
        };

        Ok(Key {
            kid: jwk.kid.map(String::into_boxed_str),
            alg,
            kind,
            decoding,
        })
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn bit_len(be: &[u8]) -> usize {
    match be.first() {
        None => 0,
        Some(&top) => be.len() * 8 - top.leading_zeros() as usize,
    }
}

// === impl KeySet ===

impl KeySet {
    /// The usable keys of a JWKS document, and how many entries were skipped.
    pub(crate) fn parse(document: &[u8]) -> Result<(KeySet, usize), serde_json::Error> {
        let doc: JwkSetDocument = serde_json::from_slice(document)?;
        let mut keys = Vec::with_capacity(doc.keys.len());
        let mut skipped = 0;
        for value in doc.keys {
            match Key::from_jwk(value) {
                Ok(key) => keys.push(key),
                Err(why) => {
                    skipped += 1;
                    tracing::debug!(reason = why, "JWKS entry skipped");
                }
            }
        }
        Ok((KeySet { keys }, skipped))
    }

    /// Number of usable keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether `newer` lacks a key of this set: a `kid` that is gone, or fewer keys without
    /// a `kid` (those cannot be told apart, so any change counts).
    pub(crate) fn withdrawn_in(&self, newer: &KeySet) -> bool {
        let unnamed = |set: &KeySet| set.keys.iter().filter(|k| k.kid.is_none()).count();
        self.keys.iter().any(|k| match &k.kid {
            Some(kid) => !newer.keys.iter().any(|n| n.kid.as_deref() == Some(&**kid)),
            None => false,
        }) || unnamed(self) != unnamed(newer)
    }

    /// The key at `index` (from [`Lookup::Found`]).
    pub(crate) fn get(&self, index: usize) -> &Key {
        &self.keys[index]
    }

    /// The key for a token with header `kid` and `alg`.
    ///
    /// With a `kid`, the keys with that `kid` are tried; without one, the token is only
    /// accepted when the set has exactly one key (anything else would mean trying keys until
    /// one fits).
    pub(crate) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let mut kid_matched = false;
        for (i, key) in self.keys.iter().enumerate() {
            let matches = match kid {
                Some(kid) => key.kid.as_deref() == Some(kid),
                None => self.keys.len() == 1,
            };
            if matches {
                if key.accepts(alg) {
                    return Lookup::Found(i);
                }
                kid_matched = true;
            }
        }
        if kid_matched {
            Lookup::WrongAlgorithm
        } else {
            Lookup::NotFound
        }
    }
}

// === impl IssuerKeys ===

impl IssuerKeys {
    /// The key state of `cfg`'s issuer; nothing is fetched yet.
    pub(crate) fn new(cfg: &IssuerConfig, http: reqwest::Client, metrics: &Metrics) -> Self {
        let issuer: Arc<str> = cfg.issuer.as_str().into();
        IssuerKeys {
            jwks_uri: cfg.jwks_uri.clone(),
            discovered: parking_lot::Mutex::new(None),
            refresh_interval: cfg.jwks_refresh_interval,
            min_refresh_interval: cfg.jwks_min_refresh_interval,
            fetch_timeout: cfg.fetch_timeout,
            http,
            keys: ArcSwapOption::empty(),
            fetch_lock: Arc::new(tokio::sync::Mutex::new(())),
            generation: AtomicU64::new(0),
            withdrawals: AtomicU64::new(0),
            last_attempt: parking_lot::Mutex::new(None),
            last_error: ArcSwapOption::empty(),
            last_success: parking_lot::Mutex::new(None),
            refreshes_ok: metrics.jwks_refreshes.with_label_values(&[&*issuer, "ok"]),
            refreshes_error: metrics
                .jwks_refreshes
                .with_label_values(&[&*issuer, "error"]),
            key_count: metrics.jwks_keys.with_label_values(&[&*issuer]),
            issuer,
        }
    }

    /// How many refreshes so far withdrew a key (see [`KeySet::withdrawn_in`]).
    pub(crate) fn withdrawals(&self) -> u64 {
        self.withdrawals.load(Ordering::Acquire)
    }

    /// The current key set; `None` until one was loaded.
    pub(crate) fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Whether a key set was ever loaded.
    pub(crate) fn is_loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// The state of this issuer's keys.
    pub(crate) fn status(&self) -> IssuerStatus {
        IssuerStatus {
            issuer: Arc::clone(&self.issuer),
            loaded: self.is_loaded(),
            keys: self.keys.load().as_ref().map_or(0, |k| k.len()),
            last_success: *self.last_success.lock(),
            last_error: self.last_error.load().as_ref().map(|e| String::clone(e)),
        }
    }

    /// Fetches the key set now, unless a fetch is in progress (then waits for it, at most
    /// `fetch_timeout`) or the last one started less than `jwks_min_refresh_interval` ago
    /// (then returns at once). Afterwards, [`IssuerKeys::current`] has the freshest keys
    /// there are.
    pub(crate) async fn refresh(self: &Arc<Self>) {
        let seen = self.generation.load(Ordering::Acquire);
        let Ok(guard) = tokio::time::timeout(
            self.fetch_timeout,
            Arc::clone(&self.fetch_lock).lock_owned(),
        )
        .await
        else {
            // The fetch in progress is taking too long; go on with the keys there are.
            return;
        };
        if self.generation.load(Ordering::Acquire) != seen {
            // A fetch completed while we waited for the lock: that was our refresh.
            return;
        }
        {
            let mut last = self.last_attempt.lock();
            if last.is_some_and(|at| at.elapsed() < self.min_refresh_interval) {
                return;
            }
            *last = Some(Instant::now());
        }

        // The fetch owns the lock guard: if this caller goes away, the fetch still completes
        // and the callers waiting on the lock still get its result.
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            this.fetch_and_install().await;
            this.generation.fetch_add(1, Ordering::AcqRel);
            drop(guard);
        });
        if let Err(e) = task.await {
            if e.is_panic() {
                tracing::error!(issuer = %self.issuer, "JWKS fetch task panicked");
                self.record_failure(&FetchError::Task(e.to_string()));
            }
        }
    }

    /// The scheduled refresh loop of this issuer: fetch now, then every
    /// `jwks_refresh_interval`; after a failure, retry every `jwks_min_refresh_interval`
    /// (at least 1 s, at most the refresh interval). Never returns.
    pub(crate) async fn run_schedule(self: Arc<Self>) {
        // Floors of 1 s: a zero interval must not turn this loop into a busy one.
        let interval = self.refresh_interval.max(Duration::from_secs(1));
        let retry = self
            .min_refresh_interval
            .max(Duration::from_secs(1))
            .min(interval);
        loop {
            self.refresh().await;
            let failing = self.last_error.load().is_some() || !self.is_loaded();
            tokio::time::sleep(if failing { retry } else { interval }).await;
        }
    }

    /// One fetch, bounded by `fetch_timeout`, and its outcome recorded.
    async fn fetch_and_install(&self) {
        let result = match tokio::time::timeout(self.fetch_timeout, self.fetch()).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::TimedOut(self.fetch_timeout)),
        };
        match result {
            Ok((set, skipped)) => {
                let count = set.len();
                let previous = self.keys.swap(Some(Arc::new(set)));
                let first = previous.is_none();
                if let (Some(old), Some(new)) = (previous, self.keys.load_full()) {
                    if old.withdrawn_in(&new) {
                        self.withdrawals.fetch_add(1, Ordering::AcqRel);
                        tracing::info!(issuer = %self.issuer, "JWKS refresh withdrew a signing key; cached tokens will be verified again");
                    }
                }
                self.last_error.store(None);
                *self.last_success.lock() = Some(SystemTime::now());
                self.refreshes_ok.inc();
                self.key_count.set(count as i64);
                if first {
                    tracing::info!(issuer = %self.issuer, keys = count, skipped, "JWKS loaded");
                } else {
                    tracing::debug!(issuer = %self.issuer, keys = count, skipped, "JWKS refreshed");
                }
            }
            Err(e) => self.record_failure(&e),
        }
    }

    fn record_failure(&self, e: &FetchError) {
        tracing::warn!(
            issuer = %self.issuer,
            error = %e,
            keeping_previous_keys = self.is_loaded(),
            "JWKS fetch failed"
        );
        self.last_error.store(Some(Arc::new(e.to_string())));
        self.refreshes_error.inc();
    }

    /// Discovery (when needed) and the JWKS.
    async fn fetch(&self) -> Result<(KeySet, usize), FetchError> {
        let (url, discovered) = match &self.jwks_uri {
            Some(url) => (url.clone(), false),
            None => {
                let cached = self.discovered.lock().clone();
                match cached {
                    Some(url) => (url, true),
                    None => {
                        let url = self.discover().await?;
                        *self.discovered.lock() = Some(url.clone());
                        (url, true)
                    }
                }
            }
        };
        let result = self.fetch_jwks(&url).await;
        if result.is_err() && discovered {
            // The metadata may have moved the JWKS; look again next time.
            *self.discovered.lock() = None;
        }
        result
    }

    async fn fetch_jwks(&self, url: &str) -> Result<(KeySet, usize), FetchError> {
        let body = self.get(url).await?;
        let (set, skipped) = KeySet::parse(&body).map_err(|source| FetchError::Json {
            url: url.to_owned(),
            source,
        })?;
        if set.len() == 0 {
            // Keep what we have rather than install nothing: an empty set is far more often a
            // broken answer than a real key rollover.
            return Err(FetchError::NoUsableKeys {
                url: url.to_owned(),
                skipped,
            });
        }
        Ok((set, skipped))
    }

    /// The `jwks_uri` from the issuer's metadata: OpenID Connect Discovery 1.0 §4, then
    /// RFC 8414 §3.
    async fn discover(&self) -> Result<String, FetchError> {
        let mut failures = String::new();
        for url in discovery_urls(&self.issuer) {
            match self.metadata(&url).await {
                Ok(jwks_uri) => return Ok(jwks_uri),
                Err(e) => {
                    if !failures.is_empty() {
                        failures.push_str("; ");
                    }
                    let _ = write!(failures, "{e}");
                }
            }
        }
        Err(FetchError::Discovery(failures))
    }

    /// The issuer's whole authorization server metadata (OpenID Connect Discovery 1.0 §4,
    /// then RFC 8414 §3), its `issuer` checked; for the SMART configuration fhirwall
    /// publishes when the backend has none ([`crate::proxy::discovery`]).
    pub(crate) async fn server_metadata(
        &self,
    ) -> Result<serde_json::Map<String, serde_json::Value>, FetchError> {
        let mut failures = String::new();
        for url in discovery_urls(&self.issuer) {
            let fetched = tokio::time::timeout(self.fetch_timeout, self.get(&url))
                .await
                .unwrap_or(Err(FetchError::TimedOut(self.fetch_timeout)));
            let doc = fetched.and_then(|body| {
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body).map_err(
                    |source| FetchError::Json {
                        url: url.clone(),
                        source,
                    },
                )
            });
            match doc {
                Ok(doc) if doc.get("issuer").and_then(|v| v.as_str()) == Some(&*self.issuer) => {
                    return Ok(doc)
                }
                Ok(doc) => {
                    let found = doc.get("issuer").map(|v| v.to_string()).unwrap_or_default();
                    if !failures.is_empty() {
                        failures.push_str("; ");
                    }
                    let _ = write!(failures, "{}", FetchError::IssuerMismatch { url, found });
                }
                Err(e) => {
                    if !failures.is_empty() {
                        failures.push_str("; ");
                    }
                    let _ = write!(failures, "{e}");
                }
            }
        }
        Err(FetchError::Discovery(failures))
    }

    async fn metadata(&self, url: &str) -> Result<String, FetchError> {
        let body = self.get(url).await?;
        let meta: Metadata = serde_json::from_slice(&body).map_err(|source| FetchError::Json {
            url: url.to_owned(),
            source,
        })?;
        if meta.issuer != *self.issuer {
            return Err(FetchError::IssuerMismatch {
                url: url.to_owned(),
                found: meta.issuer,
            });
        }
        meta.jwks_uri.ok_or_else(|| FetchError::NoJwksUri {
            url: url.to_owned(),
        })
    }

    /// GET `url`, expecting 200 and at most [`MAX_DOCUMENT_BYTES`].
    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let http_err = |source| FetchError::Http {
            url: url.to_owned(),
            source,
        };
        let mut response = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .timeout(self.fetch_timeout)
            .send()
            .await
            .map_err(http_err)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
        };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_err)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Where an issuer's metadata may be, in order: OpenID Connect Discovery 1.0 §4
/// (`{issuer}/.well-known/openid-configuration`), RFC 8414 §3.1 (the well-known segment
/// inserted before the issuer's path), and the appended form of RFC 8414 that some servers
/// use when the issuer has a path.
pub(crate) fn discovery_urls(issuer: &str) -> Vec<String> {
    let base = issuer.trim_end_matches('/');
    let mut urls = vec![format!("{base}/.well-known/openid-configuration")];
    let appended = format!("{base}/.well-known/oauth-authorization-server");
    if let Ok(url) = reqwest::Url::parse(issuer) {
        let path = url.path().trim_end_matches('/');
        if !path.is_empty() {
            let origin = url.origin().ascii_serialization();
            urls.push(format!(
                "{origin}/.well-known/oauth-authorization-server{path}"
            ));
        }
    }
    if !urls.contains(&appended) {
        urls.push(appended);
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::{self, TestKey};
    use serde_json::json;

    fn parse(keys: Value) -> (KeySet, usize) {
        KeySet::parse(&serde_json::to_vec(&json!({ "keys": keys })).unwrap()).unwrap()
    }

    #[test]
    fn usable_keys_are_kept_and_the_rest_skipped() {
        let rsa1 = TestKey::rsa1().jwk();
        let ec1 = TestKey::ec1().jwk();
        let mut enc = rsa1.clone();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc");
        let mut wrap = rsa1.clone();
        wrap["key_ops"] = json!(["wrapKey"]);
        let mut mismatched = ec1.clone();
        mismatched["alg"] = json!("RS256");
        let mut oaep = rsa1.clone();
        oaep["alg"] = json!("RSA-OAEP");
        let mut off_curve = ec1.clone();
        off_curve["y"] = off_curve["x"].clone();
        let mut short = rsa1.clone();
        short["n"] = json!("AQAB");
        let (set, skipped) = parse(json!([
            rsa1,
            ec1,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "X25519", "x": "AA"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
            enc, wrap, mismatched, oaep, off_curve, short,
            "not an object",
        ]));
        let kinds: Vec<_> = set
            .keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (Some("rsa1"), KeyKind::Rsa),
                (Some("ec1"), KeyKind::EcP256),
                (Some("ed"), KeyKind::Ed25519)
            ]
        );
        assert_eq!(skipped, 10);
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        let mut rsa2 = TestKey::rsa2().jwk();
        rsa2.as_object_mut().unwrap().remove("alg");
        let (set, _) = parse(json!([TestKey::rsa1().jwk(), rsa2, TestKey::ec1().jwk()]));

        // Pinned `alg: RS256`.
        assert!(matches!(
            set.lookup(Some("rsa1"), Algorithm::RS256),
            Lookup::Found(0)
        ));
        assert!(matches!(
            set.lookup(Some("rsa1"), Algorithm::PS256),
            Lookup::WrongAlgorithm
        ));
        // No `alg`: the RSA family.
        assert!(matches!(
            set.lookup(Some("rsa2"), Algorithm::PS384),
            Lookup::Found(1)
        ));
        assert!(matches!(
            set.lookup(Some("rsa2"), Algorithm::ES256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            set.lookup(Some("rsa2"), Algorithm::EdDSA),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            set.lookup(Some("ec1"), Algorithm::ES256),
            Lookup::Found(2)
        ));
        assert!(matches!(
            set.lookup(Some("ec1"), Algorithm::ES384),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            set.lookup(Some("nope"), Algorithm::RS256),
            Lookup::NotFound
        ));
        // Without a kid, only a single-key set will do.
        assert!(matches!(
            set.lookup(None, Algorithm::RS256),
            Lookup::NotFound
        ));
        let (single, _) = parse(json!([TestKey::ec1().jwk()]));
        assert!(matches!(
            single.lookup(None, Algorithm::ES256),
            Lookup::Found(0)
        ));
        assert!(matches!(
            single.lookup(None, Algorithm::RS256),
            Lookup::WrongAlgorithm
        ));
    }

    #[test]
    fn discovery_tries_oidc_then_rfc_8414() {
        assert_eq!(
            discovery_urls("https://idp.example"),
            [
                "https://idp.example/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server",
            ]
        );
        assert_eq!(
            discovery_urls("https://idp.example/realms/fhir/"),
            [
                "https://idp.example/realms/fhir/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server/realms/fhir",
                "https://idp.example/realms/fhir/.well-known/oauth-authorization-server",
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_previous_keys() {
        let idp = test_support::Idp::start().await;
        let mut cfg = test_support::issuer_config("https://idp.test", Some(idp.jwks_url()));
        cfg.jwks_min_refresh_interval = Duration::ZERO;
        let metrics = Metrics::new();
        let keys = Arc::new(IssuerKeys::new(&cfg, reqwest::Client::new(), &metrics));

        keys.refresh().await;
        assert_eq!(keys.current().unwrap().len(), 2);
        assert_eq!(
            metrics
                .jwks_keys
                .with_label_values(&["https://idp.test"])
                .get(),
            2
        );

        idp.state.fail.store(true, Ordering::SeqCst);
        keys.refresh().await;
        assert_eq!(keys.current().unwrap().len(), 2, "previous keys kept");
        let status = keys.status();
        assert!(status.loaded);
        assert!(status.last_error.unwrap().contains("HTTP status 500"));

        idp.state.fail.store(false, Ordering::SeqCst);
        idp.set_keys(&[TestKey::ec1()]);
        keys.refresh().await;
        assert_eq!(keys.current().unwrap().len(), 1);
        assert_eq!(keys.status().last_error, None);
        let count = |r| {
            metrics
                .jwks_refreshes
                .with_label_values(&["https://idp.test", r])
                .get()
        };
        assert_eq!((count("ok"), count("error")), (2, 1));
        assert_eq!(idp.state.jwks_fetches.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_empty_or_oversized_jwks_is_a_failed_fetch() {
        let idp = test_support::Idp::start().await;
        let mut cfg = test_support::issuer_config("https://idp.test", Some(idp.jwks_url()));
        cfg.jwks_min_refresh_interval = Duration::ZERO;
        let keys = Arc::new(IssuerKeys::new(
            &cfg,
            reqwest::Client::new(),
            &Metrics::new(),
        ));

        idp.set_jwks(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}));
        keys.refresh().await;
        assert!(!keys.is_loaded());
        assert!(keys
            .status()
            .last_error
            .unwrap()
            .contains("no usable signing key"));

        idp.set_jwks(json!({"keys": [], "padding": "x".repeat(MAX_DOCUMENT_BYTES)}));
        keys.refresh().await;
        assert!(keys.status().last_error.unwrap().contains("larger than"));
    }
}
