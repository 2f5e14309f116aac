//! Authentication: from a bearer token to a verified [`Principal`].
//!
//! ```text
//!  Authorization: Bearer <token>
//!    │ bearer::extract            where the token is (RFC 6750 §2.1; query tokens refused)
//!    ▼
//!  Authenticator::authenticate
//!    │ revocation list: SHA-256(token) revoked? ──▶ Revoked
//!    │ cache: SHA-256(token) ──hit──▶ Arc<Principal>      (no verification, no allocation)
//!    │ miss:
//!    │   negative cache (recent inactive opaque tokens) ──hit──▶ the remembered refusal
//!    │   b64token syntax, JWS shape
//!    │   opaque: RFC 7662 introspection at the opaque-token issuer (introspect.rs), circuit
//!    │           breaker; active → Principal (cached ≤ cache_max_ttl), else negative-cached
//!    │   jwt::inspect   alg (never none/HS*), kid, iss   — unverified, only to route
//!    │   issuer by exact iss; alg allowed for the issuer
//!    │   jwks: key by kid, alg fixed by the key          — unknown kid: one rate-limited refresh
//!    │   jwt::verify    signature, then exp/nbf/iss/aud with the issuer's leeway
//!    │   jwt::principal claims -> Principal (scopes parsed once)
//!    ▼
//!    ▼
//!  revocation list: jti / client_id / sub revoked? ──▶ Revoked   (checked on hits too)
//!    ▼
//!  Arc<Principal> (cached until min(exp, now + max_ttl)) or AuthError
//! ```
//!
//! Opaque tokens carry no issuer: they go to the single issuer that configures
//! `introspection`, or, with several, to the one marked `default` (the configuration
//! refuses anything else). [`Authenticator::revoke`] applies a revocation at once.
//!
//! [`Authenticator::run_refresh`] keeps every issuer's keys fresh in the background;
//! [`Authenticator::is_ready`] says whether every issuer's keys were loaded at least once.

pub mod bearer;
mod cache;
mod error;
mod introspect;
mod jwks;
mod jwt;
mod principal;
mod propagate;
mod revocation;
#[cfg(test)]
pub(crate) mod test_support;

pub use error::AuthError;
pub use introspect::{IntrospectionStatus, SetupError};
pub use jwks::IssuerStatus;
pub use principal::Principal;
pub use propagate::{PropagationError, RedisPropagation};
pub use revocation::{Revocation, Target};

pub(crate) use introspect::read_secret;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, Validation};

use crate::config::{IssuerConfig, RevocationConfig, TokenCacheConfig};
use crate::metrics::Metrics;
use cache::{TokenCache, TokenKey};
use introspect::Introspector;
use jwks::{IssuerKeys, KeySet, Lookup};
use jwt::Shape;
use revocation::RevocationList;

/// Validates bearer tokens against the configured issuers, with a verified-token cache.
///
/// Built once per configuration and shared (`Arc`). `authenticate` takes no lock: keys are
/// read through an `ArcSwap`, the cache is lock-free on reads.
pub struct Authenticator {
    issuers: Box<[Issuer]>,
    cache: TokenCache,
    /// Recent refusals of opaque tokens by the provider, so junk does not reach it again.
    negative: moka::sync::Cache<TokenKey, (AuthError, Duration)>,
    /// Where opaque tokens are introspected (`None`: they are refused).
    opaque: Option<Arc<Introspector>>,
    /// Every issuer's introspector, for revocation pass-through and status.
    introspectors: Box<[Arc<Introspector>]>,
    revocations: RevocationList,
    /// Key withdrawals (summed over issuers) the cache has been flushed for.
    seen_withdrawals: AtomicU64,
    metrics: Arc<Metrics>,
    /// The first issuer's authorization server metadata, when last fetched (for the SMART
    /// configuration fhirwall publishes when the backend has none); the async lock makes
    /// the fetch single-flight.
    server_metadata: tokio::sync::Mutex<MetadataState>,
}

/// What [`Authenticator::server_metadata`] remembers between calls.
#[derive(Default)]
struct MetadataState {
    /// The last document fetched, and when.
    doc: Option<(Instant, ServerMetadata)>,
    /// When the last fetch failed: no new attempt for [`SERVER_METADATA_RETRY`], so
    /// discovery requests during a provider outage do not each wait for the fetch timeout.
    failed_at: Option<Instant>,
}

/// An authorization server's metadata document (RFC 8414 / OpenID Connect Discovery).
pub type ServerMetadata = Arc<serde_json::Map<String, serde_json::Value>>;

/// How long fetched server metadata is used before it is fetched again.
const SERVER_METADATA_TTL: Duration = Duration::from_secs(300);
/// How long stale server metadata is still used while the provider cannot be reached.
const SERVER_METADATA_STALE: Duration = Duration::from_secs(3600);
/// How long after a failed metadata fetch the next one is tried.
const SERVER_METADATA_RETRY: Duration = Duration::from_secs(30);

/// Per-entry lifetime of the negative cache: the duration stored with the entry.
struct NegativeTtl;

impl moka::Expiry<TokenKey, (AuthError, Duration)> for NegativeTtl {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        value: &(AuthError, Duration),
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

/// One trusted issuer, compiled from its [`IssuerConfig`].
struct Issuer {
    /// The exact `iss` value; shared with every [`Principal`] of this issuer.
    name: Arc<str>,
    /// One [`Validation`] per accepted algorithm (`HS*` never among them).
    validations: Box<[(Algorithm, Validation)]>,
    /// The claim carrying the SMART patient context.
    patient_claim: Box<str>,
    keys: Arc<IssuerKeys>,
    /// RFC 7662 introspection, when configured.
    introspector: Option<Arc<Introspector>>,
    /// Marked as the issuer of opaque tokens.
    opaque_default: bool,
}

// === impl Authenticator ===

impl Authenticator {
    /// Builds the authenticator; fetches nothing yet (see [`Authenticator::load_all`] and
    /// [`Authenticator::run_refresh`]).
    ///
    /// `HS*` algorithms in an issuer's `algorithms` are ignored: a JWKS holds public keys, and
    /// shared-secret verification with a public key is the key-confusion attack.
    ///
    /// # Panics
    ///
    /// If an issuer configures introspection whose secret or key cannot be read (use
    /// [`Authenticator::build`] to get that as an error), or if the HTTP client for key
    /// fetches cannot be built (the TLS backend failed to initialise).
    pub fn new(issuers: &[IssuerConfig], cache: &TokenCacheConfig, metrics: Arc<Metrics>) -> Self {
        Self::build(issuers, cache, &RevocationConfig::default(), metrics)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Authenticator::new`], with the revocation list sized by `revocation`; reads
    /// introspection secrets and keys now and returns what cannot be read.
    pub fn build(
        issuers: &[IssuerConfig],
        cache: &TokenCacheConfig,
        revocation: &RevocationConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SetupError> {
        // One client for every issuer: connections to an identity provider are reused across
        // refreshes while they stay in the pool.
        let http = reqwest::Client::builder()
            .user_agent(concat!("fhirwall/", env!("CARGO_PKG_VERSION")))
            // Keys come from the configured or discovered URL, not from wherever a redirect
            // points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client for JWKS fetches can be built");
        let issuers: Box<[Issuer]> = issuers
            .iter()
            .map(|cfg| Issuer::new(cfg, http.clone(), &metrics))
            .collect::<Result<_, _>>()?;
        let introspectors: Box<[Arc<Introspector>]> = issuers
            .iter()
            .filter_map(|i| i.introspector.clone())
            .collect();
        // The configuration guarantees one introspector, or exactly one marked `default`.
        let opaque = match &*introspectors {
            [] => None,
            [only] => Some(Arc::clone(only)),
            _ => issuers
                .iter()
                .find(|i| i.opaque_default)
                .and_then(|i| i.introspector.clone()),
        };
        Ok(Authenticator {
            issuers,
            cache: TokenCache::new(cache, metrics.token_cache_evictions.clone()),
            negative: moka::sync::Cache::builder()
                .max_capacity(cache.max_entries)
                .expire_after(NegativeTtl)
                .build(),
            opaque,
            introspectors,
            revocations: RevocationList::new(revocation.max_entries),
            seen_withdrawals: AtomicU64::new(0),
            metrics,
            server_metadata: tokio::sync::Mutex::new(MetadataState::default()),
        })
    }

    /// The authorization server metadata of the first configured issuer (the one a SMART
    /// app is sent to), fetched from its discovery document and kept for 5 minutes; while
    /// the provider cannot be reached, the last document is used for up to an hour, and a
    /// failed fetch is not tried again for 30 s. `None` when there is none (logged).
    pub async fn server_metadata(&self) -> Option<ServerMetadata> {
        let issuer = self.issuers.first()?;
        let mut held = self.server_metadata.lock().await;
        let stale = held
            .doc
            .as_ref()
            .filter(|(at, _)| at.elapsed() < SERVER_METADATA_STALE)
            .map(|(_, doc)| doc.clone());
        if held
            .doc
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < SERVER_METADATA_TTL)
            || held
                .failed_at
                .is_some_and(|at| at.elapsed() < SERVER_METADATA_RETRY)
        {
            return stale;
        }
        match issuer.keys.server_metadata().await {
            Ok(doc) => {
                let doc = Arc::new(doc);
                *held = MetadataState {
                    doc: Some((Instant::now(), doc.clone())),
                    failed_at: None,
                };
                Some(doc)
            }
            Err(e) => {
                held.failed_at = Some(Instant::now());
                tracing::warn!(
                    issuer = %issuer.name,
                    error = %e,
                    using_stale = stale.is_some(),
                    retry_in_s = SERVER_METADATA_RETRY.as_secs(),
                    "authorization server metadata unavailable for the SMART configuration"
                );
                stale
            }
        }
    }

    /// Verifies `token` (from the cache when possible).
    ///
    /// `token` is what [`bearer::extract`] returned: it may be empty or malformed, which is
    /// refused here as [`AuthError::Malformed`]. Every error but
    /// [`AuthError::KeysUnavailable`] means 401 `invalid_token`; see [`AuthError`].
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        // A refresh that withdrew a signing key ends the cached trust in every token: they are
        // verified again (those signed by the withdrawn key then fail). Key withdrawal is rare,
        // so flushing the whole cache is cheaper than tracking keys per entry.
        let withdrawals: u64 = self.issuers.iter().map(|i| i.keys.withdrawals()).sum();
        if self.seen_withdrawals.load(Ordering::Acquire) != withdrawals {
            self.seen_withdrawals.store(withdrawals, Ordering::Release);
            self.cache.invalidate_all();
        }
        let key = cache::key(token);
        if self.revocations.is_token_revoked(&key) {
            return Err(self.count_revoked());
        }
        let principal = match self.cache.get(&key).await {
            Some(principal) => {
                self.metrics.token_cache_hits.inc();
                principal
            }
            None => {
                self.metrics.token_cache_misses.inc();
                if let Some((refusal, _)) = self.negative.get(&key) {
                    self.metrics.introspection_negative_hits.inc();
                    return Err(refusal);
                }
                self.cache
                    .get_or_verify(key, self.verify_counted(token, key))
                    .await?
            }
        };
        if self.revocations.is_revoked(&key, &principal) {
            return Err(self.count_revoked());
        }
        Ok(principal)
    }

    fn count_revoked(&self) -> AuthError {
        self.metrics
            .token_validations
            .with_label_values(&[AuthError::Revoked.code()])
            .inc();
        AuthError::Revoked
    }

    /// Applies `revocation` in this instance at once: the token (or every token of the
    /// `jti`, client or subject) is refused from the next request on, cached or not.
    /// `source` (`admin`, `redis`) labels the metric.
    pub async fn revoke(&self, revocation: &Revocation, source: &'static str) {
        let ttl = Duration::from_secs(revocation.ttl_secs.max(1));
        self.revocations.insert(&revocation.target, ttl);
        if let Target::Token(key) = &revocation.target {
            // The list alone already blocks it; dropping the entry frees it sooner.
            self.cache.remove(key).await;
        }
        self.metrics
            .revocations
            .with_label_values(&[revocation.target.kind(), source])
            .inc();
        self.metrics
            .revocation_entries
            .set(i64::try_from(self.revocations.len()).unwrap_or(i64::MAX));
    }

    /// RFC 7009 pass-through: asks the provider that issued `token` to revoke it, with the
    /// introspection client's credentials. `None` when that issuer has no introspection
    /// client; `Ok(false)` when it has no revocation endpoint.
    pub async fn revoke_at_provider(&self, token: &str) -> Option<Result<bool, String>> {
        let introspector = match jwt::shape(token) {
            Shape::Opaque => self.opaque.clone(),
            Shape::Jws => {
                let iss = jwt::inspect(token).ok()?.iss;
                self.issuers
                    .iter()
                    .find(|i| *i.name == iss)
                    .and_then(|i| i.introspector.clone())
            }
        }?;
        Some(introspector.revoke_at_provider(token).await)
    }

    /// Introspection state per introspecting issuer, for `/readyz`.
    pub fn introspection_status(&self) -> Vec<IntrospectionStatus> {
        self.introspectors.iter().map(|i| i.status()).collect()
    }

    /// True when every issuer's keys were loaded at least once (keys are kept across failed
    /// refreshes, so this never goes back to false).
    pub fn is_ready(&self) -> bool {
        self.issuers.iter().all(|i| i.keys.is_loaded())
    }

    /// Per-issuer key state for `/readyz` detail, in configuration order.
    pub fn issuer_status(&self) -> Vec<IssuerStatus> {
        self.issuers.iter().map(|i| i.keys.status()).collect()
    }

    /// Fetches every issuer's keys once, concurrently, and returns [`is_ready`]. Optional:
    /// [`Authenticator::run_refresh`] starts with the same fetch; call this first to hold
    /// back serving until keys are there. Respects the per-issuer rate limit.
    ///
    /// [`is_ready`]: Authenticator::is_ready
    pub async fn load_all(&self) -> bool {
        let mut fetches = tokio::task::JoinSet::new();
        for issuer in self.issuers.iter() {
            let keys = Arc::clone(&issuer.keys);
            fetches.spawn(async move { keys.refresh().await });
        }
        while fetches.join_next().await.is_some() {}
        self.is_ready()
    }

    /// Background task: initial key load, then scheduled refreshes (every
    /// `jwks_refresh_interval`; after a failure every `jwks_min_refresh_interval`, at least
    /// 1 s). Never returns; dropping the future stops every issuer's loop.
    pub async fn run_refresh(self: Arc<Self>) {
        let mut loops = tokio::task::JoinSet::new();
        for issuer in self.issuers.iter() {
            loops.spawn(Arc::clone(&issuer.keys).run_schedule());
        }
        while let Some(ended) = loops.join_next().await {
            // The loops never return; only a panic ends one.
            if let Err(e) = ended {
                tracing::error!(error = %e, "a JWKS refresh loop ended");
            }
        }
        std::future::pending::<()>().await;
    }

    /// [`Authenticator::verify`], counted in `token_validations{result}`.
    async fn verify_counted(
        &self,
        token: &str,
        key: TokenKey,
    ) -> Result<(Arc<Principal>, Duration), AuthError> {
        let result = self.verify(token, key).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => {
                // The client's problem, logged at debug; never the token.
                tracing::debug!(error = e.code(), "bearer token refused");
                e.code()
            }
        };
        self.metrics
            .token_validations
            .with_label_values(&[label])
            .inc();
        result
    }

    /// Full verification of an uncached token: the principal and how long it may be
    /// cached at most (beyond the cache's own `max_ttl` and the token's `exp`).
    async fn verify(
        &self,
        token: &str,
        key: TokenKey,
    ) -> Result<(Arc<Principal>, Duration), AuthError> {
        // RFC 6750 §2.1: anything else in the credentials is not a token at all.
        if token.len() > jwt::MAX_TOKEN_LEN || !bearer::is_b64token(token) {
            return Err(AuthError::Malformed);
        }
        match jwt::shape(token) {
            Shape::Jws => {}
            Shape::Opaque => {
                let introspector = self.opaque.as_ref().ok_or(AuthError::Opaque)?;
                return match introspector.introspect(token).await {
                    Ok(principal) => {
                        self.count_invalid_scopes(&principal);
                        Ok((Arc::new(principal), introspector.cache_max_ttl))
                    }
                    // An outage is never remembered: the next request asks again (the
                    // circuit breaker keeps that cheap).
                    Err(e) if e.is_unavailable() => Err(e),
                    Err(e) => {
                        self.negative.insert(key, (e, introspector.negative_ttl));
                        Err(e)
                    }
                };
            }
        }

        let unverified = jwt::inspect(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| *i.name == unverified.iss)
            .ok_or(AuthError::UntrustedIssuer)?;
        // Checked before any key lookup, so a disallowed algorithm never triggers a refresh.
        let validation = issuer
            .validation(unverified.alg)
            .ok_or(AuthError::UnsupportedAlgorithm)?;
        let (keys, index) = issuer
            .key_for(unverified.kid.as_deref(), unverified.alg)
            .await?;

        let claims = jwt::verify(token, &keys.get(index).decoding, validation)?;
        let principal = jwt::principal(&issuer.name, &issuer.patient_claim, &claims)?;
        self.count_invalid_scopes(&principal);
        Ok((Arc::new(principal), Duration::MAX))
    }

    fn count_invalid_scopes(&self, principal: &Principal) {
        let invalid = principal.scopes.invalid_count();
        if invalid > 0 {
            self.metrics.invalid_scopes.inc_by(u64::from(invalid));
        }
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &*i.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

// === impl Issuer ===

impl Issuer {
    fn new(
        cfg: &IssuerConfig,
        http: reqwest::Client,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, SetupError> {
        let mut validations: Vec<(Algorithm, Validation)> = Vec::new();
        for &alg in &cfg.algorithms {
            if jwt::is_asymmetric(alg) && !validations.iter().any(|(a, _)| *a == alg) {
                validations.push((alg, jwt::validation(cfg, alg)));
            }
        }
        let introspector = match &cfg.introspection {
            Some(i) => Some(Arc::new(Introspector::new(cfg, i, Arc::clone(metrics))?)),
            None => None,
        };
        Ok(Issuer {
            name: cfg.issuer.as_str().into(),
            validations: validations.into_boxed_slice(),
            patient_claim: cfg.patient_claim.as_str().into(),
            keys: Arc::new(IssuerKeys::new(cfg, http, metrics)),
            opaque_default: cfg
                .introspection
                .as_ref()
                .is_some_and(|i| i.default_for_opaque),
            introspector,
        })
    }

    /// The validation for `alg`, if the issuer accepts `alg`.
    fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find_map(|(a, v)| (*a == alg).then_some(v))
    }

    /// The key that verifies a token with header `kid` and `alg`.
    ///
    /// An unknown `kid` (or no keys yet) triggers one refresh, which is rate-limited and
    /// single-flight (see [`IssuerKeys::refresh`]); a token without `kid` never does, since
    /// new keys would not make it less ambiguous.
    async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(Arc<KeySet>, usize), AuthError> {
        let mut refreshed = false;
        loop {
            match self.keys.current() {
                None if refreshed => return Err(AuthError::KeysUnavailable),
                None => {}
                Some(set) => match set.lookup(kid, alg) {
                    Lookup::Found(index) => return Ok((set, index)),
                    Lookup::WrongAlgorithm => return Err(AuthError::UnsupportedAlgorithm),
                    Lookup::NotFound if refreshed || kid.is_none() => {
                        return Err(AuthError::UnknownKey)
                    }
                    Lookup::NotFound => {}
                },
            }
            self.keys.refresh().await;
            refreshed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::{claims, issuer_config, now, Idp, TestKey, AUDIENCE};
    use jsonwebtoken::EncodingKey;
    use serde_json::{json, Value};
    use std::time::Duration;

    const ISS: &str = "https://idp.test";

    const CACHE: TokenCacheConfig = TokenCacheConfig {
        max_entries: 1000,
        max_ttl: Duration::from_secs(300),
    };

    struct Fixture {
        idp: Idp,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
    }

    impl Fixture {
        /// An IdP serving rsa1 + ec1 and an authenticator trusting it as [`ISS`], keys loaded.
        async fn new(tweak: impl FnOnce(&mut IssuerConfig)) -> Fixture {
            let idp = Idp::start().await;
            let mut cfg = issuer_config(ISS, Some(idp.jwks_url()));
            tweak(&mut cfg);
            let fixture = Fixture::with(idp, cfg);
            assert!(fixture.auth.load_all().await);
            fixture
        }

        /// An authenticator for `cfg`, nothing loaded.
        fn with(idp: Idp, cfg: IssuerConfig) -> Fixture {
            let metrics = Arc::new(Metrics::new());
            let auth = Arc::new(Authenticator::new(&[cfg], &CACHE, Arc::clone(&metrics)));
            Fixture { idp, auth, metrics }
        }

        async fn auth(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
            self.auth.authenticate(token).await
        }

        fn validations(&self, result: &str) -> u64 {
            self.metrics
                .token_validations
                .with_label_values(&[result])
                .get()
        }

        fn hits(&self) -> u64 {
            self.metrics.token_cache_hits.get()
        }
    }

    fn with(mut claims: Value, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        f(claims.as_object_mut().unwrap());
        claims
    }

    fn closed_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}/jwks")
    }

    #[test]
    fn the_authenticator_can_be_shared_across_pingora_tasks() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let auth = Authenticator::new(&[issuer_config(ISS, None)], &CACHE, Arc::default());
        send_sync(&auth);
        // pingora's phases are `async_trait` methods: every future they await must be Send.
        send(auth.authenticate("token"));
        send(auth.load_all());
        send(Arc::new(auth).run_refresh());
    }

    #[tokio::test]
    async fn valid_rs256_and_es256_tokens_are_accepted() {
        let f = Fixture::new(|_| {}).await;
        let exp = now() + 600;
        let c = with(claims(ISS), |c| {
            c.insert("exp".into(), json!(exp));
            c.insert("client_id".into(), json!("app-1"));
            c.insert("jti".into(), json!("jti-1"));
            c.insert("fhirUser".into(), json!("Practitioner/7"));
            c.insert("patient".into(), json!("123"));
        });

        let p = f.auth(&TestKey::rsa1().sign(&c)).await.unwrap();
        assert_eq!(&*p.issuer, ISS);
        assert_eq!(p.subject.as_deref(), Some("user-1"));
        assert_eq!(p.client_id.as_deref(), Some("app-1"));
        assert_eq!(p.jti.as_deref(), Some("jti-1"));
        assert_eq!(p.fhir_user.as_deref(), Some("Practitioner/7"));
        assert_eq!(p.patient.as_deref(), Some("123"));
        assert_eq!(p.expires_at, exp);
        assert_eq!(
            p.scopes.iter().count() + p.scopes.invalid_count() as usize,
            1
        );

        let p = f.auth(&TestKey::ec1().sign(&c)).await.unwrap();
        assert_eq!(p.subject.as_deref(), Some("user-1"));
        assert_eq!(f.validations("ok"), 2);
        assert_eq!(f.idp.jwks_fetches(), 1);
    }

    #[tokio::test]
    async fn expiry_and_not_before_are_checked_with_the_leeway() {
        // Leeway 30 s.
        let f = Fixture::new(|_| {}).await;
        let key = TestKey::rsa1();
        let at = |field: &str, t: u64| {
            with(claims(ISS), |c| {
                c.insert(field.into(), json!(t));
            })
        };

        assert_eq!(
            f.auth(&key.sign(&at("exp", now() - 100)))
                .await
                .unwrap_err(),
            AuthError::Expired
        );
        assert!(
            f.auth(&key.sign(&at("exp", now() - 10))).await.is_ok(),
            "within leeway"
        );
        assert_eq!(
            f.auth(&key.sign(&at("nbf", now() + 100)))
                .await
                .unwrap_err(),
            AuthError::NotYetValid
        );
        assert!(
            f.auth(&key.sign(&at("nbf", now() + 10))).await.is_ok(),
            "within leeway"
        );
        assert!(f.auth(&key.sign(&at("nbf", now() - 10))).await.is_ok());
        assert_eq!(f.validations("expired"), 1);
        assert_eq!(f.validations("not_yet_valid"), 1);
    }

    #[tokio::test]
    async fn a_zero_leeway_is_strict() {
        let f = Fixture::new(|c| c.leeway = Duration::ZERO).await;
        let c = with(claims(ISS), |c| {
            c.insert("exp".into(), json!(now() - 2));
        });
        assert_eq!(
            f.auth(&TestKey::rsa1().sign(&c)).await.unwrap_err(),
            AuthError::Expired
        );
    }

    #[tokio::test]
    async fn issuer_audience_and_required_claims_are_checked() {
        let f = Fixture::new(|_| {}).await;
        let key = TestKey::rsa1();
        let case = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            key.sign(&with(claims(ISS), |c| edit(c)))
        };

        let t = case(&|c| {
            c.insert("iss".into(), json!("https://evil.test"));
        });
        assert_eq!(f.auth(&t).await.unwrap_err(), AuthError::UntrustedIssuer);
        let t = case(&|c| {
            c.insert("iss".into(), json!("https://idp.test/"));
        });
        assert_eq!(
            f.auth(&t).await.unwrap_err(),
            AuthError::UntrustedIssuer,
            "exact match"
        );
        let t = case(&|c| {
            c.remove("iss");
        });
        assert_eq!(
            f.auth(&t).await.unwrap_err(),
            AuthError::MissingClaim("iss")
        );

        let t = case(&|c| {
            c.insert("aud".into(), json!("https://someone-else"));
        });
        assert_eq!(f.auth(&t).await.unwrap_err(), AuthError::WrongAudience);
        let t = case(&|c| {
            c.insert("aud".into(), json!([]));
        });
        assert_eq!(f.auth(&t).await.unwrap_err(), AuthError::WrongAudience);
        let t = case(&|c| {
            c.insert("aud".into(), json!(["https://someone-else", AUDIENCE]));
        });
        assert!(
            f.auth(&t).await.is_ok(),
            "one of several audiences is enough"
        );
        let t = case(&|c| {
            c.insert("aud".into(), json!("other-audience"));
        });
        assert!(f.auth(&t).await.is_ok(), "any configured audience");
        let t = case(&|c| {
            c.remove("aud");
        });
        assert_eq!(
            f.auth(&t).await.unwrap_err(),
            AuthError::MissingClaim("aud")
        );
        let t = case(&|c| {
            c.remove("exp");
        });
        assert_eq!(
            f.auth(&t).await.unwrap_err(),
            AuthError::MissingClaim("exp")
        );
        let t = case(&|c| {
            c.insert("exp".into(), json!("tomorrow"));
        });
        assert_eq!(
            f.auth(&t).await.unwrap_err(),
            AuthError::MissingClaim("exp")
        );
    }

    #[tokio::test]
    async fn a_bad_signature_is_refused() {
        let f = Fixture::new(|_| {}).await;
        // Signed by rsa2, claims rsa1's kid.
        let forged = TestKey::rsa2().sign_with(Algorithm::RS256, Some("rsa1"), &claims(ISS));
        assert_eq!(f.auth(&forged).await.unwrap_err(), AuthError::BadSignature);

        // A valid token with its payload swapped for another.
        let good = TestKey::rsa1().sign(&claims(ISS));
        let other = TestKey::rsa1().sign(&with(claims(ISS), |c| {
            c.insert("sub".into(), json!("admin"));
        }));
        let g: Vec<_> = good.split('.').collect();
        let o: Vec<_> = other.split('.').collect();
        let spliced = format!("{}.{}.{}", g[0], o[1], g[2]);
        assert_eq!(f.auth(&spliced).await.unwrap_err(), AuthError::BadSignature);
        assert_eq!(f.validations("bad_signature"), 2);
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let f = Fixture::new(|_| {}).await;
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(ISS)).unwrap());
        for header in [
            json!({"alg": "none", "typ": "JWT"}),
            json!({"alg": "none", "kid": "rsa1"}),
            json!({"alg": "NONE", "kid": "rsa1"}),
        ] {
            let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
            for sig in ["", "c2ln"] {
                let token = format!("{header}.{payload}.{sig}");
                assert_eq!(
                    f.auth(&token).await.unwrap_err(),
                    AuthError::UnsupportedAlgorithm
                );
            }
        }
    }

    #[tokio::test]
    async fn hs256_signed_with_the_rsa_public_key_is_refused() {
        // Even with HS256 (wrongly) in the issuer's algorithms.
        let f = Fixture::new(|c| c.algorithms.push(Algorithm::HS256)).await;
        let confused = TestKey {
            kid: "rsa1",
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(test_support::RSA1_PUB.as_bytes()),
        };
        let token = confused.sign(&claims(ISS));
        assert_eq!(
            f.auth(&token).await.unwrap_err(),
            AuthError::UnsupportedAlgorithm
        );
        assert_eq!(
            f.idp.jwks_fetches(),
            1,
            "no refresh for a refused algorithm"
        );
    }

    #[tokio::test]
    async fn the_algorithm_must_fit_the_key_and_the_issuer() {
        let f = Fixture::new(|_| {}).await;
        let c = claims(ISS);
        // rsa1's JWK pins RS256: PS256 with the same key is refused.
        let ps = TestKey::rsa1().sign_with(Algorithm::PS256, Some("rsa1"), &c);
        assert_eq!(
            f.auth(&ps).await.unwrap_err(),
            AuthError::UnsupportedAlgorithm
        );
        // An EC algorithm against the RSA key's kid.
        let es = TestKey::ec1().sign_with(Algorithm::ES256, Some("rsa1"), &c);
        assert_eq!(
            f.auth(&es).await.unwrap_err(),
            AuthError::UnsupportedAlgorithm
        );

        // Without `alg` in the JWK, the key type's family decides: PS256 is fine for RSA.
        let idp = Idp::start().await;
        let mut rsa2 = TestKey::rsa2().jwk();
        rsa2.as_object_mut().unwrap().remove("alg");
        idp.set_jwks(json!({ "keys": [TestKey::rsa1().jwk(), rsa2] }));
        let cfg = issuer_config(ISS, Some(idp.jwks_url()));
        let f2 = Fixture::with(idp, cfg);
        assert!(f2.auth.load_all().await);
        let ps = TestKey::rsa2().sign_with(Algorithm::PS256, Some("rsa2"), &c);
        assert!(f2.auth(&ps).await.is_ok());

        // An algorithm the issuer does not allow is refused before any key lookup.
        let f3 = Fixture::new(|c| c.algorithms = vec![Algorithm::RS256]).await;
        let es = TestKey::ec1().sign(&c);
        assert_eq!(
            f3.auth(&es).await.unwrap_err(),
            AuthError::UnsupportedAlgorithm
        );
        assert_eq!(f3.idp.jwks_fetches(), 1);
    }

    #[tokio::test]
    async fn a_token_without_kid_needs_a_single_key_issuer() {
        let f = Fixture::new(|_| {}).await;
        let t = TestKey::rsa1().sign_with(Algorithm::RS256, None, &claims(ISS));
        assert_eq!(
            f.auth(&t).await.unwrap_err(),
            AuthError::UnknownKey,
            "two keys: ambiguous"
        );
        assert_eq!(f.idp.jwks_fetches(), 1, "no refresh for a kid-less token");

        let idp = Idp::start().await;
        idp.set_keys(&[TestKey::rsa1()]);
        let cfg = issuer_config(ISS, Some(idp.jwks_url()));
        let single = Fixture::with(idp, cfg);
        assert!(single.auth.load_all().await);
        assert!(single.auth(&t).await.is_ok());
    }

    #[tokio::test]
    async fn an_unknown_kid_refreshes_once_then_fails_fast() {
        let interval = Duration::from_millis(1000);
        let f = Fixture::new(|c| c.jwks_min_refresh_interval = interval).await;
        // Signed up front, so the rate-limit window is not spent signing.
        let [ghost1, ghost2, ghost3] = ["ghost-1", "ghost-2", "ghost-3"]
            .map(|kid| TestKey::rsa2().sign_with(Algorithm::RS256, Some(kid), &claims(ISS)));
        tokio::time::sleep(interval + Duration::from_millis(100)).await;

        assert_eq!(f.auth(&ghost1).await.unwrap_err(), AuthError::UnknownKey);
        assert_eq!(f.idp.jwks_fetches(), 2, "one refresh for the unknown kid");
        assert_eq!(f.auth(&ghost2).await.unwrap_err(), AuthError::UnknownKey);
        assert_eq!(f.idp.jwks_fetches(), 2, "rate-limited within the interval");

        tokio::time::sleep(interval + Duration::from_millis(100)).await;
        assert_eq!(f.auth(&ghost3).await.unwrap_err(), AuthError::UnknownKey);
        assert_eq!(f.idp.jwks_fetches(), 3, "allowed again after the interval");
    }

    #[tokio::test]
    async fn a_flood_of_unknown_kids_causes_at_most_one_fetch() {
        let interval = Duration::from_millis(1000);
        let f = Fixture::new(|c| c.jwks_min_refresh_interval = interval).await;
        tokio::time::sleep(interval + Duration::from_millis(100)).await;
        // A slow IdP, so the flood arrives while the fetch is in flight.
        *f.idp.state.delay.lock() = Duration::from_millis(200);

        // Two waves: the first arrives while the refresh is in flight and waits for it (single
        // flight); the second arrives after it, within the interval, and fails fast (rate limit).
        // The kid is read before any signature check, so one signature serves all the tokens
        // (and the test does not spend its interval signing).
        let signed = TestKey::rsa2().sign(&claims(ISS));
        let (_, body) = signed.split_once('.').unwrap();
        let with_kid = |kid: &str| {
            use base64::Engine;
            let header = json!({"alg": "RS256", "kid": kid});
            let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&header).unwrap());
            format!("{header}.{body}")
        };
        for wave in 0..2 {
            let mut flood = tokio::task::JoinSet::new();
            for i in 0..50 {
                let auth = Arc::clone(&f.auth);
                let token = with_kid(&format!("fake-{wave}-{i}"));
                flood.spawn(async move { auth.authenticate(&token).await });
            }
            while let Some(result) = flood.join_next().await {
                assert_eq!(result.unwrap().unwrap_err(), AuthError::UnknownKey);
            }
        }
        assert_eq!(f.idp.jwks_fetches(), 2, "the initial load and one refresh");
        assert_eq!(f.validations("unknown_key"), 100);
    }

    #[tokio::test]
    async fn rotated_keys_are_picked_up_without_restart() {
        let f = Fixture::new(|c| c.jwks_min_refresh_interval = Duration::ZERO).await;
        let new_key = TestKey::rsa2().sign(&claims(ISS));
        f.idp.set_keys(&[TestKey::rsa1(), TestKey::rsa2()]);

        assert!(f.auth(&new_key).await.is_ok());
        assert_eq!(f.idp.jwks_fetches(), 2);

        // The old key retires. Its tokens keep verifying until the next fetch (scheduled, or
        // here caused by another unknown kid) drops it; then its kid is unknown.
        f.idp.set_keys(&[TestKey::rsa2()]);
        let old_key = TestKey::rsa1().sign(&claims(ISS));
        let ghost = TestKey::rsa2().sign_with(Algorithm::RS256, Some("ghost"), &claims(ISS));
        assert_eq!(f.auth(&ghost).await.unwrap_err(), AuthError::UnknownKey);
        assert_eq!(f.idp.jwks_fetches(), 3);
        assert_eq!(f.auth(&old_key).await.unwrap_err(), AuthError::UnknownKey);
        assert_eq!(f.idp.jwks_fetches(), 4, "one more refresh, still unknown");
    }

    #[tokio::test]
    async fn discovery_finds_the_jwks_uri() {
        let idp = Idp::start().await;
        let iss = idp.base_url();
        let f = Fixture::with(idp, issuer_config(&iss, None));
        assert!(f.auth.load_all().await);
        assert_eq!(
            f.idp
                .state
                .discovery_fetches
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        assert_eq!(f.idp.jwks_fetches(), 1);
        assert!(f.auth(&TestKey::ec1().sign(&claims(&iss))).await.is_ok());
    }

    #[tokio::test]
    async fn discovery_falls_back_to_rfc_8414_metadata() {
        let idp = Idp::start().await;
        idp.state
            .oidc
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let iss = idp.base_url();
        let f = Fixture::with(idp, issuer_config(&iss, None));
        assert!(f.auth.load_all().await);
        assert!(f.auth(&TestKey::rsa1().sign(&claims(&iss))).await.is_ok());
    }

    #[tokio::test]
    async fn discovery_refuses_metadata_for_another_issuer() {
        let idp = Idp::start().await;
        *idp.state.metadata_issuer.lock() = Some("https://impostor.test".into());
        let iss = idp.base_url();
        let f = Fixture::with(idp, issuer_config(&iss, None));
        assert!(!f.auth.load_all().await);
        assert_eq!(f.idp.jwks_fetches(), 0);
        let status = f.auth.issuer_status();
        assert!(status[0]
            .last_error
            .as_ref()
            .unwrap()
            .contains("metadata is for issuer"));
        let err = f
            .auth(&TestKey::rsa1().sign(&claims(&iss)))
            .await
            .unwrap_err();
        assert_eq!(err, AuthError::KeysUnavailable);
    }

    #[tokio::test]
    async fn cached_tokens_are_verified_once() {
        let f = Fixture::new(|_| {}).await;
        let token = TestKey::rsa1().sign(&claims(ISS));
        let first = f.auth(&token).await.unwrap();
        for _ in 0..3 {
            let again = f.auth(&token).await.unwrap();
            assert!(Arc::ptr_eq(&first, &again));
        }
        assert_eq!(f.validations("ok"), 1);
        assert_eq!(f.hits(), 3);
        assert_eq!(f.metrics.token_cache_misses.get(), 1);

        // Concurrent first sightings of one token share a single verification.
        let token = TestKey::ec1().sign(&claims(ISS));
        let mut herd = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (auth, token) = (Arc::clone(&f.auth), token.clone());
            herd.spawn(async move { auth.authenticate(&token).await });
        }
        while let Some(r) = herd.join_next().await {
            assert!(r.unwrap().is_ok());
        }
        assert_eq!(f.validations("ok"), 2);

        // Failures are not cached.
        let expired = TestKey::rsa1().sign(&with(claims(ISS), |c| {
            c.insert("exp".into(), json!(now() - 3600));
        }));
        for _ in 0..2 {
            assert_eq!(f.auth(&expired).await.unwrap_err(), AuthError::Expired);
        }
        assert_eq!(f.validations("expired"), 2);
    }

    #[tokio::test]
    async fn a_cache_entry_is_not_used_after_exp() {
        let f = Fixture::new(|c| c.leeway = Duration::ZERO).await;
        let exp = now() + 1;
        let token = TestKey::rsa1().sign(&with(claims(ISS), |c| {
            c.insert("exp".into(), json!(exp));
        }));
        assert!(f.auth(&token).await.is_ok());
        while now() <= exp {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(f.auth(&token).await.unwrap_err(), AuthError::Expired);
        assert_eq!(f.hits(), 0);
        assert_eq!(f.validations("ok"), 1);
    }

    #[tokio::test]
    async fn scp_azp_and_the_patient_claim_are_read() {
        let f = Fixture::new(|c| c.patient_claim = "launch_patient".into()).await;
        let c = with(claims(ISS), |c| {
            c.remove("scope");
            c.insert(
                "scp".into(),
                json!(["patient/Observation.rs", "patient/Condition.rs"]),
            );
            c.insert("azp".into(), json!("spa-client"));
            c.insert("patient".into(), json!("not-this-one"));
            c.insert("launch_patient".into(), json!("p-42"));
        });
        let p = f.auth(&TestKey::rsa1().sign(&c)).await.unwrap();
        assert_eq!(p.client_id.as_deref(), Some("spa-client"));
        assert_eq!(p.patient.as_deref(), Some("p-42"));
        assert_eq!(
            p.scopes.iter().count() + p.scopes.invalid_count() as usize,
            2
        );

        let both = with(c.clone(), |c| {
            c.insert("client_id".into(), json!("confidential-client"));
        });
        let p = f.auth(&TestKey::rsa1().sign(&both)).await.unwrap();
        assert_eq!(p.client_id.as_deref(), Some("confidential-client"));

        // A patient claim that is not a string is refused, not read as "no patient".
        let odd = with(c, |c| {
            c.insert("launch_patient".into(), json!({"reference": "Patient/1"}));
        });
        assert_eq!(
            f.auth(&TestKey::rsa1().sign(&odd)).await.unwrap_err(),
            AuthError::Malformed
        );
    }

    #[tokio::test]
    async fn invalid_scopes_are_counted() {
        let f = Fixture::new(|_| {}).await;
        let c = with(claims(ISS), |c| {
            c.insert(
                "scope".into(),
                json!("patient/Observation.rs patient/Observation.sr user/Nonsense.rs patient/*.*"),
            );
        });
        let p = f.auth(&TestKey::rsa1().sign(&c)).await.unwrap();
        assert_eq!(
            f.metrics.invalid_scopes.get(),
            u64::from(p.scopes.invalid_count())
        );
        assert_eq!(
            p.scopes.iter().count() + p.scopes.invalid_count() as usize,
            4
        );
    }

    #[tokio::test]
    async fn keys_unavailable_when_the_idp_is_down_and_nothing_is_loaded() {
        let f = Fixture::with(
            Idp::start().await,
            issuer_config(ISS, Some(closed_port_url())),
        );
        assert!(!f.auth.load_all().await);
        assert!(!f.auth.is_ready());

        let err = f
            .auth(&TestKey::rsa1().sign(&claims(ISS)))
            .await
            .unwrap_err();
        assert_eq!(err, AuthError::KeysUnavailable);
        assert!(err.is_unavailable());
        let refreshes = |r| f.metrics.jwks_refreshes.with_label_values(&[ISS, r]).get();
        assert_eq!(
            refreshes("error"),
            1,
            "rate limit: no second attempt within the interval"
        );

        let status = f.auth.issuer_status();
        assert_eq!(status.len(), 1);
        assert_eq!(&*status[0].issuer, ISS);
        assert!(!status[0].loaded);
        assert_eq!(status[0].keys, 0);
        assert!(status[0].last_error.is_some());
    }

    #[tokio::test]
    async fn keys_unavailable_is_not_cached_and_recovers() {
        let idp = Idp::start().await;
        idp.state
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut cfg = issuer_config(ISS, Some(idp.jwks_url()));
        cfg.jwks_min_refresh_interval = Duration::ZERO;
        let f = Fixture::with(idp, cfg);
        let token = TestKey::rsa1().sign(&claims(ISS));

        assert_eq!(
            f.auth(&token).await.unwrap_err(),
            AuthError::KeysUnavailable
        );
        f.idp
            .state
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(
            f.auth(&token).await.is_ok(),
            "fetched on demand once the IdP is back"
        );
        assert!(f.auth.is_ready());
    }

    #[tokio::test]
    async fn run_refresh_loads_the_keys_in_the_background() {
        let idp = Idp::start().await;
        let cfg = issuer_config(ISS, Some(idp.jwks_url()));
        let f = Fixture::with(idp, cfg);
        assert!(!f.auth.is_ready());
        let task = tokio::spawn(Arc::clone(&f.auth).run_refresh());
        tokio::time::timeout(Duration::from_secs(5), async {
            while !f.auth.is_ready() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("keys loaded");
        task.abort();
        assert_eq!(f.auth.issuer_status()[0].keys, 2);
        assert!(f.auth.issuer_status()[0].last_success.is_some());
    }

    #[tokio::test]
    async fn malformed_and_opaque_tokens_are_refused() {
        let f = Fixture::new(|_| {}).await;
        for t in ["", "a b", "\tabc", "ab\"c", "a.b.c", "..", "é.b.c"] {
            assert_eq!(f.auth(t).await.unwrap_err(), AuthError::Malformed, "{t:?}");
        }
        let huge = format!("{}.{}.c2ln", "a".repeat(jwt::MAX_TOKEN_LEN), "b");
        assert_eq!(f.auth(&huge).await.unwrap_err(), AuthError::Malformed);
        for t in ["2YotnFZFEjr1zCsicMWpAA", "a.b", "a.b.c.d.e"] {
            assert_eq!(f.auth(t).await.unwrap_err(), AuthError::Opaque, "{t:?}");
        }
    }

    #[tokio::test]
    async fn tokens_are_routed_to_their_issuer() {
        let idp_a = Idp::start().await;
        let idp_b = Idp::start().await;
        idp_b.set_keys(&[TestKey::rsa2()]);
        let metrics = Arc::new(Metrics::new());
        let auth = Authenticator::new(
            &[
                issuer_config("https://a.test", Some(idp_a.jwks_url())),
                issuer_config("https://b.test", Some(idp_b.jwks_url())),
            ],
            &CACHE,
            metrics,
        );
        assert!(auth.load_all().await);
        let p = auth
            .authenticate(&TestKey::rsa2().sign(&claims("https://b.test")))
            .await
            .unwrap();
        assert_eq!(&*p.issuer, "https://b.test");
        // rsa1 belongs to issuer a: a token claiming issuer b cannot use it.
        let cross = TestKey::rsa1().sign(&claims("https://b.test"));
        assert_eq!(
            auth.authenticate(&cross).await.unwrap_err(),
            AuthError::UnknownKey
        );
        assert!(auth
            .authenticate(&TestKey::rsa1().sign(&claims("https://a.test")))
            .await
            .is_ok());
    }
}
