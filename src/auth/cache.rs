//! The verified-token cache: a token whose signature and claims checked out is not verified
//! again until it expires (or `max_ttl` passes, whichever comes first).
//!
//! Entries are keyed by the SHA-256 of the token, so the cache never holds a usable token,
//! and live no longer than `min(exp - now, max_ttl)` (and the verifier's own cap: an
//! introspection result lives at most `cache_max_ttl`): never past `exp` (the verification
//! leeway is *not* added here: leeway forgives clock skew once, it does not extend a token's
//! life). Only successful verifications are cached. Concurrent requests presenting the same
//! uncached token share one verification.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry;
use prometheus::IntCounter;
use sha2::{Digest, Sha256};

use super::{AuthError, Principal};
use crate::config::TokenCacheConfig;

/// The cache key of a token: its SHA-256.
pub(crate) type TokenKey = [u8; 32];

/// The cache key of `token`.
pub(crate) fn key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

/// Verified principals by token hash.
pub(crate) struct TokenCache {
    entries: Cache<TokenKey, Cached>,
    max_ttl: Duration,
}

/// A cache entry: the principal and how long it may live from its creation.
#[derive(Clone)]
struct Cached {
    principal: Arc<Principal>,
    ttl: Duration,
}

/// Per-entry lifetime: the `ttl` computed when the entry was made.
struct UntilExpiry;

/// Why a verification result is handed back without being cached.
enum NotCached {
    /// Verification failed; failures are never cached.
    Failed(AuthError),
    /// Verified, but already at its `exp` (accepted only thanks to the leeway): good for this
    /// request, not worth an entry that would be dead on arrival.
    Expiring(Arc<Principal>),
}

// === impl TokenCache ===

impl TokenCache {
    /// An empty cache sized by `cfg`; entries evicted for capacity are counted in
    /// `evictions`.
    pub(crate) fn new(cfg: &TokenCacheConfig, evictions: IntCounter) -> Self {
        TokenCache {
            entries: Cache::builder()
                .name("fhirwall-verified-tokens")
                .max_capacity(cfg.max_entries)
                .expire_after(UntilExpiry)
                .eviction_listener(move |_key, _value, cause| {
                    if cause == RemovalCause::Size {
                        evictions.inc();
                    }
                })
                .build(),
            max_ttl: cfg.max_ttl,
        }
    }

    /// The cached principal of `key`, if any and not past its `exp`.
    pub(crate) async fn get(&self, key: &TokenKey) -> Option<Arc<Principal>> {
        let principal = self.entries.get(key).await?.principal;
        // Belt and braces: the entry's expiry already ends at `exp`, but moka's clock is not
        // the wall clock `exp` is measured against.
        if is_live(&principal, SystemTime::now()) {
            Some(principal)
        } else {
            // Drop it so that `get_or_verify` cannot hand the same entry back.
            self.entries.invalidate(key).await;
            None
        }
    }

    /// The principal of `key`, from `verify` on a miss. Concurrent callers with the same key
    /// share one `verify`; a success is cached, a failure is not.
    ///
    /// `verify` returns the principal and its own cap on the entry's life (the cache's
    /// `max_ttl` applies too).
    pub(crate) async fn get_or_verify(
        &self,
        key: TokenKey,
        verify: impl Future<Output = Result<(Arc<Principal>, Duration), AuthError>>,
    ) -> Result<Arc<Principal>, AuthError> {
        let max_ttl = self.max_ttl;
        let init = async move {
            let (principal, cap) = verify.await.map_err(NotCached::Failed)?;
            let ttl = ttl(&principal, max_ttl.min(cap), SystemTime::now());
            if ttl.is_zero() {
                Err(NotCached::Expiring(principal))
            } else {
                Ok(Cached { principal, ttl })
            }
        };
        match self.entries.try_get_with(key, init).await {
            Ok(cached) => Ok(cached.principal),
            Err(not_cached) => match &*not_cached {
                NotCached::Failed(e) => Err(*e),
                NotCached::Expiring(principal) => Ok(Arc::clone(principal)),
            },
        }
    }

    /// Drops every entry (after a signing key was withdrawn).
    pub(crate) fn invalidate_all(&self) {
        self.entries.invalidate_all();
    }

    /// Drops the entry of `key` (a revoked token), returning its principal if there was one.
    pub(crate) async fn remove(&self, key: &TokenKey) -> Option<Arc<Principal>> {
        self.entries.remove(key).await.map(|c| c.principal)
    }

    /// Number of entries (approximate; moka counts lazily).
    #[cfg(test)]
    pub(crate) async fn len(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.entry_count()
    }
}

// === impl UntilExpiry ===

impl Expiry<TokenKey, Cached> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        cached: &Cached,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(cached.ttl)
    }
}

/// How long `principal` may stay cached from `now`: `min(exp - now, max_ttl)`, zero once
/// `exp` is reached.
fn ttl(principal: &Principal, max_ttl: Duration, now: SystemTime) -> Duration {
    let exp = Duration::from_secs(principal.expires_at);
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    exp.saturating_sub(now).min(max_ttl)
}

/// Whether `principal`'s token is before its `exp` at `now`.
fn is_live(principal: &Principal, now: SystemTime) -> bool {
    now.duration_since(UNIX_EPOCH)
        .is_ok_and(|now| now < Duration::from_secs(principal.expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::scope::GrantedScopes;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn principal(expires_at: u64) -> Arc<Principal> {
        Arc::new(Principal {
            issuer: "https://idp".into(),
            subject: None,
            client_id: None,
            fhir_user: None,
            patient: None,
            jti: None,
            expires_at,
            scopes: GrantedScopes::parse(std::iter::empty()),
        })
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn cache() -> TokenCache {
        TokenCache::new(
            &TokenCacheConfig {
                max_entries: 100,
                max_ttl: Duration::from_secs(300),
            },
            IntCounter::new("evictions", "test").unwrap(),
        )
    }

    #[test]
    fn ttl_never_passes_exp_nor_max_ttl() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000) + Duration::from_millis(500);
        let max = Duration::from_secs(300);
        assert_eq!(
            ttl(&principal(1_000_000_060), max, now),
            Duration::from_millis(59_500)
        );
        assert_eq!(ttl(&principal(1_000_900_000), max, now), max);
        assert_eq!(ttl(&principal(1_000_000_000), max, now), Duration::ZERO);
        assert_eq!(
            ttl(&principal(1_000_000_001), max, now),
            Duration::from_millis(500)
        );
        assert_eq!(ttl(&principal(10), max, now), Duration::ZERO);
    }

    #[test]
    fn liveness_ends_at_exp() {
        let exp = 1_000_000_000;
        assert!(is_live(
            &principal(exp),
            UNIX_EPOCH + Duration::from_millis(999_999_999_999)
        ));
        assert!(!is_live(
            &principal(exp),
            UNIX_EPOCH + Duration::from_secs(exp)
        ));
    }

    #[test]
    fn keys_are_sha256_of_the_token() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(key("abc")[..4], [0xba, 0x78, 0x16, 0xbf],);
        assert_ne!(key("abc"), key("abd"));
    }

    #[tokio::test]
    async fn successes_are_cached_and_failures_are_not() {
        let cache = cache();
        let calls = AtomicUsize::new(0);
        let live = principal(unix_now() + 600);

        for _ in 0..3 {
            let got = match cache.get(&key("good")).await {
                Some(p) => p,
                None => cache
                    .get_or_verify(key("good"), async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Ok((Arc::clone(&live), Duration::MAX))
                    })
                    .await
                    .unwrap(),
            };
            assert!(Arc::ptr_eq(&got, &live));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        for _ in 0..3 {
            assert!(cache.get(&key("bad")).await.is_none());
            let got = cache
                .get_or_verify(key("bad"), async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(AuthError::Expired)
                })
                .await;
            assert_eq!(got.unwrap_err(), AuthError::Expired);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(cache.len().await, 1);
    }

    #[tokio::test]
    async fn tokens_at_their_exp_are_returned_but_not_cached() {
        let cache = cache();
        let expiring = principal(unix_now());
        let got = cache
            .get_or_verify(key("leeway"), async {
                Ok((Arc::clone(&expiring), Duration::MAX))
            })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&got, &expiring));
        assert!(cache.get(&key("leeway")).await.is_none());
        assert_eq!(cache.len().await, 0);
    }
}
