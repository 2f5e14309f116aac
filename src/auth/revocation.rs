//! The revocation list: tokens, `jti`s, clients and subjects revoked in the gateway, checked
//! on every authentication (cached or not).
//!
//! Bounded (moka, `max_entries` per kind) and self-cleaning: each entry expires on its own,
//! a token when its `exp` passes (when known), everything else after `entry_ttl`, which the
//! operator sets at least as long as the longest token lifetime. Revoked tokens are held by
//! SHA-256 only, like the token cache, so the list never holds a usable token.
//!
//! Hot path: while nothing was ever revoked, [`RevocationList::is_revoked`] is one relaxed
//! atomic load; after that, at most four lock-free hash lookups and no allocation.
//!
//! Identifiers are matched across issuers (`jti`, `client_id` and `sub` are not qualified by
//! the issuer): a revocation can block more than intended when two issuers share a value,
//! never less.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use serde::{Deserialize, Serialize};

use super::cache::TokenKey;
use super::Principal;

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Target {
    /// One token, by the SHA-256 of its value (hex when serialized).
    #[serde(with = "hex32")]
    Token(TokenKey),
    /// Every token with this `jti`.
    Jti(String),
    /// Every token issued to this `client_id` (or `azp`).
    Client(String),
    /// Every token of this `sub`.
    Subject(String),
}

/// One revocation: what, and for how long it is remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// What is revoked.
    #[serde(flatten)]
    pub target: Target,
    /// How long the entry is kept, in seconds.
    pub ttl_secs: u64,
}

/// The list; see the module docs.
pub(crate) struct RevocationList {
    /// Set by the first revocation: until then the hot path checks nothing else.
    any: AtomicBool,
    tokens: Cache<TokenKey, Duration>,
    jtis: Cache<Arc<str>, Duration>,
    clients: Cache<Arc<str>, Duration>,
    subjects: Cache<Arc<str>, Duration>,
}

/// Per-entry lifetime: the value is the entry's time to live.
struct ValueIsTtl;

// === impl Target ===

impl Target {
    /// The revocation of one token, by value (only its SHA-256 is kept).
    pub fn token(value: &str) -> Target {
        Target::Token(super::cache::key(value))
    }

    /// The revocation of one token by its SHA-256 in hex, as another instance or an
    /// operator who never saw the token gives it.
    pub fn token_sha256_hex(hex: &str) -> Option<Target> {
        hex32::decode(&hex.to_ascii_lowercase()).map(Target::Token)
    }

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Token(_) => "token",
            Target::Jti(_) => "jti",
            Target::Client(_) => "client",
            Target::Subject(_) => "subject",
        }
    }
}

// === impl RevocationList ===

impl RevocationList {
    /// An empty list holding at most `max_entries` entries of each kind.
    pub(crate) fn new(max_entries: u64) -> Self {
        fn cache<K>(max_entries: u64) -> Cache<K, Duration>
        where
            K: std::hash::Hash + Eq + Send + Sync + 'static,
        {
            Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ValueIsTtl)
                .build()
        }
        RevocationList {
            any: AtomicBool::new(false),
            tokens: cache(max_entries),
            jtis: cache(max_entries),
            clients: cache(max_entries),
            subjects: cache(max_entries),
        }
    }

    /// Records `target` as revoked for `ttl`.
    pub(crate) fn insert(&self, target: &Target, ttl: Duration) {
        // Set before the entry exists, so a reader that sees the entry also sees the flag.
        self.any.store(true, Ordering::Release);
        match target {
            Target::Token(key) => self.tokens.insert(*key, ttl),
            Target::Jti(v) => self.jtis.insert(v.as_str().into(), ttl),
            Target::Client(v) => self.clients.insert(v.as_str().into(), ttl),
            Target::Subject(v) => self.subjects.insert(v.as_str().into(), ttl),
        }
    }

    /// Whether the token `key` itself is revoked (checked before any verification).
    pub(crate) fn is_token_revoked(&self, key: &TokenKey) -> bool {
        self.any.load(Ordering::Acquire) && self.tokens.contains_key(key)
    }

    /// Whether the token `key` with `principal` is revoked by any entry.
    pub(crate) fn is_revoked(&self, key: &TokenKey, principal: &Principal) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let named = |cache: &Cache<Arc<str>, Duration>, v: &Option<Arc<str>>| {
            v.as_deref().is_some_and(|v| cache.contains_key(v))
        };
        self.tokens.contains_key(key)
            || named(&self.jtis, &principal.jti)
            || named(&self.clients, &principal.client_id)
            || named(&self.subjects, &principal.subject)
    }

    /// Number of entries (approximate: moka counts lazily).
    pub(crate) fn len(&self) -> u64 {
        [
            self.tokens.entry_count(),
            self.jtis.entry_count(),
            self.clients.entry_count(),
            self.subjects.entry_count(),
        ]
        .iter()
        .sum()
    }
}

impl<K> Expiry<K, Duration> for ValueIsTtl {
    fn expire_after_create(
        &self,
        _key: &K,
        ttl: &Duration,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(*ttl)
    }

    /// A second revocation of the same target keeps the longer of the two lives.
    fn expire_after_update(
        &self,
        _key: &K,
        ttl: &Duration,
        _updated_at: Instant,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(remaining.map_or(*ttl, |r| r.max(*ttl)))
    }
}

/// `bytes` as lowercase hex digits.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `[u8; 32]` as 64 lowercase hex digits.
mod hex32 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <&str>::deserialize(d)?;
        decode(s).ok_or_else(|| D::Error::custom("expected 64 hex digits (a SHA-256)"))
    }

    pub(crate) fn encode(v: &[u8; 32]) -> String {
        super::hex(v)
    }

    pub(crate) fn decode(s: &str) -> Option<[u8; 32]> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::cache::key;
    use crate::policy::scope::GrantedScopes;

    fn principal(jti: Option<&str>, client: Option<&str>, sub: Option<&str>) -> Principal {
        Principal {
            issuer: "https://idp".into(),
            subject: sub.map(Into::into),
            client_id: client.map(Into::into),
            fhir_user: None,
            patient: None,
            jti: jti.map(Into::into),
            expires_at: u64::MAX,
            scopes: GrantedScopes::parse(std::iter::empty()),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn an_empty_list_revokes_nothing() {
        let list = RevocationList::new(10);
        let p = principal(Some("j"), Some("c"), Some("s"));
        assert!(!list.is_revoked(&key("t"), &p));
        assert!(!list.is_token_revoked(&key("t")));
    }

    #[test]
    fn each_kind_of_entry_revokes_what_it_names_and_nothing_else() {
        let p = principal(Some("jti-1"), Some("client-1"), Some("alice"));
        let other = principal(Some("jti-2"), Some("client-2"), Some("bob"));
        for target in [
            Target::Token(key("t1")),
            Target::Jti("jti-1".into()),
            Target::Client("client-1".into()),
            Target::Subject("alice".into()),
        ] {
            let list = RevocationList::new(10);
            list.insert(&target, HOUR);
            assert!(list.is_revoked(&key("t1"), &p), "{target:?}");
            assert!(!list.is_revoked(&key("t2"), &other), "{target:?}");
            assert_eq!(
                list.is_token_revoked(&key("t1")),
                matches!(target, Target::Token(_))
            );
        }
    }

    #[test]
    fn entries_expire() {
        let list = RevocationList::new(10);
        list.insert(&Target::Client("c".into()), Duration::from_millis(50));
        let p = principal(None, Some("c"), None);
        assert!(list.is_revoked(&key("t"), &p));
        std::thread::sleep(Duration::from_millis(120));
        assert!(!list.is_revoked(&key("t"), &p));
    }

    #[test]
    fn revocations_serialize_without_the_token() {
        let r = Revocation {
            target: Target::Token(key("abc")),
            ttl_secs: 60,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"token","value":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","ttl_secs":60}"#
        );
        assert_eq!(serde_json::from_str::<Revocation>(&json).unwrap(), r);
        let client: Revocation =
            serde_json::from_str(r#"{"kind":"client","value":"app","ttl_secs":5}"#).unwrap();
        assert_eq!(client.target, Target::Client("app".into()));
        assert!(serde_json::from_str::<Revocation>(
            r#"{"kind":"token","value":"zz","ttl_secs":5}"#
        )
        .is_err());
    }
}
