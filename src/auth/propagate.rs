//! Revocations shared by every gateway instance through Redis: a publisher behind
//! `POST /admin/revoke` and a subscriber that applies what the other instances revoke.
//!
//! ```text
//!  instance A: POST /admin/revoke ─▶ applied in A ─▶ PUBLISH_SCRIPT (one atomic call):
//!                                                      ZADD <channel>:recent  (until = now + ttl)
//!                                                      PUBLISH <channel> {"origin":A,...}
//!  instance B: SUBSCRIBE <channel> ─▶ message ─▶ applied in B (source "redis")
//!              on every (re)connect: SUBSCRIBE first, then load <channel>:recent (RESYNC_SCRIPT)
//! ```
//!
//! Pub/sub alone is fire-and-forget: a message published while an instance is disconnected
//! never reaches it. So every revocation is also kept in a sorted set (`<channel>:recent`,
//! score: when the entry expires, Redis time) which a (re)connecting subscriber loads after
//! subscribing, so nothing falls between the two. A new instance learns the revocations
//! still in force the same way. Entries are trimmed as they expire; the set is bounded by
//! four times `max_entries` (the soonest to expire go first) and expires as a whole when
//! nothing is revoked for `ttl`.
//!
//! Messages never carry a token: a token revocation travels as its SHA-256, like the
//! revocation list holds it. Each message names its origin instance (a random id per
//! process) so the publisher does not count its own revocation twice.
//!
//! Redis going away is expected, not fatal: each instance keeps refusing what it already
//! knows, the subscriber reconnects with a doubling backoff (100 ms to 2 s) and re-syncs,
//! `/readyz` says so (degraded, still ready) and `fhirwall_revocation_pubsub_connected` drops
//! to 0. A revocation that cannot be published is kept (bounded) and published again once
//! Redis is back. Anyone who can publish on the channel can revoke (never grant) access.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde::{Deserialize, Serialize};

use super::{Authenticator, Revocation, Target};
use crate::admin::{Check, Propagate};
use crate::metrics::Metrics;
use crate::ratelimit::shared::redacted_url;

/// Writes the revocation into the re-sync set and publishes it, atomically.
///
/// KEYS[1]: the set. ARGV: member (the target as JSON), ttl (ms), channel, message, most
/// members kept. Returns the number of subscribers that received the message.
const PUBLISH_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local expires = now + ttl
local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or 0)
if expires > old then
  redis.call('ZADD', KEYS[1], string.format('%.0f', expires), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local n = redis.call('ZCARD', KEYS[1])
local cap = tonumber(ARGV[5])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
end
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return redis.call('PUBLISH', ARGV[3], ARGV[4])
"#;

/// Trims the re-sync set and returns `{now_ms, member, expires_ms, member, expires_ms, ...}`.
const RESYNC_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local out = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
table.insert(out, 1, string.format('%.0f', now))
return out
"#;

/// First reconnection delay; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts: propagation resumes at most this long after
/// Redis is back (plus the connection itself).
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest a connection, a subscription, a re-sync or a publish may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle subscription is checked with `PING`: a connection that died without
/// a FIN (a partition) is noticed within this plus [`CALL_TIMEOUT`].
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Largest message accepted from the channel.
const MAX_MESSAGE: usize = 16 * 1024;
/// Longest revocation accepted from another instance (30 days, as the admin endpoint).
const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
/// Revocations kept for publishing again while Redis cannot be reached.
const MAX_PENDING: usize = 10_000;

/// The message on the channel: a revocation and the instance that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Message {
    origin: String,
    #[serde(flatten)]
    revocation: Revocation,
}

/// Why a propagation could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PropagationError {
    /// The URL was refused by the Redis client.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
}

/// Where the subscription stands, for `/readyz`.
enum State {
    /// The first connection has not been tried yet.
    Connecting,
    /// Subscribed and re-synced.
    Up { since: Instant },
    /// Not subscribed; trying again.
    Down { since: Instant, error: String },
}

/// Publisher and subscriber of one gateway instance; see the module docs.
pub struct RedisPropagation {
    client: redis::Client,
    url: String,
    channel: String,
    /// `<channel>:recent`, the re-sync set.
    set_key: String,
    /// Most members of the re-sync set.
    max_members: u64,
    /// This process, in every message it publishes.
    instance_id: String,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    publish_script: redis::Script,
    resync_script: redis::Script,
    /// The command connection (publish and re-sync); replaced after a failure.
    conn: ArcSwapOption<MultiplexedConnection>,
    state: Mutex<State>,
    /// Revocations made here that could not be published, with when they lapse.
    pending: Mutex<VecDeque<(Revocation, Instant)>>,
}

// === impl RedisPropagation ===

impl RedisPropagation {
    /// Propagation through the Redis at `url`, on `channel`, applying what others revoke to
    /// `auth`. Connects nothing yet: [`RedisPropagation::run`] does.
    pub fn new(
        url: &str,
        channel: &str,
        max_entries: u64,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PropagationError> {
        let client = redis::Client::open(url).map_err(PropagationError::Url)?;
        let instance_id = {
            use rand::RngCore;
            let mut bytes = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut bytes);
            super::revocation::hex(&bytes)
        };
        metrics.revocation_pubsub_connected.set(0);
        // Every series exists from the start, so a rate() over it has a zero to start from.
        for via in ["message", "resync"] {
            metrics.revocation_pubsub_received.with_label_values(&[via]);
        }
        for op in ["publish", "subscribe", "message"] {
            metrics.revocation_pubsub_errors.with_label_values(&[op]);
        }
        Ok(RedisPropagation {
            client,
            url: url.to_owned(),
            channel: channel.to_owned(),
            set_key: format!("{channel}:recent"),
            max_members: max_entries.saturating_mul(4),
            instance_id,
            auth,
            metrics,
            publish_script: redis::Script::new(PUBLISH_SCRIPT),
            resync_script: redis::Script::new(RESYNC_SCRIPT),
            conn: ArcSwapOption::empty(),
            state: Mutex::new(State::Connecting),
            pending: Mutex::new(VecDeque::new()),
        })
    }

    /// This process's id in the messages it publishes.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Whether the subscription is up (subscribed and re-synced).
    pub fn is_connected(&self) -> bool {
        matches!(*self.state.lock(), State::Up { .. })
    }

    /// The subscriber: subscribes, re-syncs, applies every message from other instances,
    /// and starts over with a backoff whenever the connection fails. Runs until the process
    /// ends.
    pub async fn run(&self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let error = self.session(&mut backoff).await;
            self.mark_down(error);
            // A little jitter so that instances do not all come back at the same instant.
            let jitter = {
                use rand::Rng;
                rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 4)
            };
            tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One subscription, from connecting to its failure (the returned error).
    async fn session(&self, backoff: &mut Duration) -> String {
        let pubsub = match timeout(self.client.get_async_pubsub()).await {
            Ok(p) => p,
            Err(e) => return format!("connecting: {e}"),
        };
        let (mut sink, mut stream) = pubsub.split();
        if let Err(e) = timeout(sink.subscribe(&self.channel)).await {
            return format!("subscribing: {e}");
        }
        // Subscribed before loading the set: a revocation published in between is in both,
        // and applying it twice is harmless.
        let resynced = match self.resync().await {
            Ok(n) => n,
            Err(e) => return format!("re-syncing: {e}"),
        };
        self.mark_up(resynced);
        *backoff = MIN_BACKOFF;
        self.publish_pending().await;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.apply(message.get_payload_bytes()).await,
                    None => return "connection closed".to_owned(),
                },
                _ = heartbeat.tick() => {
                    if let Err(e) = timeout(sink.ping::<redis::Value>()).await {
                        return format!("heartbeat: {e}");
                    }
                    // Catches up on revocations that failed to publish while the
                    // subscription stayed up (the command connection failed alone).
                    self.publish_pending().await;
                }
            }
        }
    }

    /// Applies one message from the channel, unless it is ours or malformed.
    async fn apply(&self, payload: &[u8]) {
        let parsed = if payload.len() > MAX_MESSAGE {
            Err(format!("{} bytes, over the limit", payload.len()))
        } else {
            serde_json::from_slice::<Message>(payload)
                .map_err(|e| e.to_string())
                .and_then(|m| valid(m.revocation).map(|r| (m.origin, r)))
        };
        match parsed {
            Ok((origin, _)) if origin == self.instance_id => {}
            Ok((_, revocation)) => {
                self.auth.revoke(&revocation, "redis").await;
                self.metrics
                    .revocation_pubsub_received
                    .with_label_values(&["message"])
                    .inc();
                tracing::info!(
                    kind = revocation.target.kind(),
                    ttl_secs = revocation.ttl_secs,
                    "revocation from another instance applied"
                );
            }
            Err(e) => {
                self.metrics
                    .revocation_pubsub_errors
                    .with_label_values(&["message"])
                    .inc();
                tracing::warn!(error = %e, channel = %self.channel, "ignored a malformed revocation message");
            }
        }
    }

    /// Loads every revocation still in the set and applies it; how many were applied.
    async fn resync(&self) -> Result<usize, String> {
        let mut conn = self.connection().await?;
        let invocation = self.resync_script.key(&self.set_key);
        let reply: Vec<String> = match timeout(invocation.invoke_async(&mut conn)).await {
            Ok(r) => r,
            Err(e) => {
                self.conn.store(None);
                return Err(e);
            }
        };
        let mut items = reply.iter();
        let now: u64 = items
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or("the re-sync script returned no time")?;
        let mut applied = 0;
        let mut malformed = 0;
        while let (Some(member), Some(expires)) = (items.next(), items.next()) {
            let target = serde_json::from_str::<Target>(member).ok();
            let expires = expires.parse::<f64>().ok().map(|e| e as u64);
            let (Some(target), Some(expires)) = (target, expires) else {
                malformed += 1;
                continue;
            };
            let ttl_secs = expires.saturating_sub(now).div_ceil(1000);
            match valid(Revocation { target, ttl_secs }) {
                Ok(revocation) => {
                    self.auth.revoke(&revocation, "redis").await;
                    applied += 1;
                }
                Err(_) => malformed += 1,
            }
        }
        if malformed > 0 {
            self.metrics
                .revocation_pubsub_errors
                .with_label_values(&["message"])
                .inc_by(malformed);
            tracing::warn!(
                malformed,
                key = %self.set_key,
                "ignored malformed entries in the revocation set"
            );
        }
        self.metrics
            .revocation_pubsub_received
            .with_label_values(&["resync"])
            .inc_by(applied as u64);
        Ok(applied)
    }

    /// Publishes (and records in the set) one revocation; retried once on a fresh
    /// connection, since the first call after a Redis restart meets a dead one.
    async fn send(&self, revocation: &Revocation) -> Result<(), String> {
        let member = serde_json::to_string(&revocation.target).map_err(|e| e.to_string())?;
        let message = serde_json::to_string(&Message {
            origin: self.instance_id.clone(),
            revocation: revocation.clone(),
        })
        .map_err(|e| e.to_string())?;
        let ttl_ms = revocation.ttl_secs.max(1).saturating_mul(1000);
        let mut last = String::new();
        for _ in 0..2 {
            let mut conn = match self.connection().await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut invocation = self.publish_script.key(&self.set_key);
            invocation
                .arg(&member)
                .arg(ttl_ms)
                .arg(&self.channel)
                .arg(&message)
                .arg(self.max_members);
            match timeout(invocation.invoke_async::<u64>(&mut conn)).await {
                Ok(receivers) => {
                    self.metrics.revocation_pubsub_published.inc();
                    tracing::debug!(receivers, "revocation published");
                    return Ok(());
                }
                Err(e) => {
                    self.conn.store(None);
                    last = e;
                }
            }
        }
        self.metrics
            .revocation_pubsub_errors
            .with_label_values(&["publish"])
            .inc();
        Err(last)
    }

    /// Publishes again what could not be published, dropping what has lapsed meanwhile.
    async fn publish_pending(&self) {
        loop {
            let Some((mut revocation, until)) = self.pending.lock().pop_front() else {
                return;
            };
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                continue;
            }
            revocation.ttl_secs = left.as_secs().max(1);
            if let Err(e) = self.send(&revocation).await {
                tracing::warn!(error = %e, "revocation still not propagated; will retry");
                self.keep_pending(revocation);
                return;
            }
            tracing::info!(
                kind = revocation.target.kind(),
                "revocation propagated after Redis came back"
            );
        }
    }

    fn keep_pending(&self, revocation: Revocation) {
        let until = Instant::now() + Duration::from_secs(revocation.ttl_secs.max(1));
        let mut pending = self.pending.lock();
        if pending.len() >= MAX_PENDING {
            // The oldest is the most likely already applied by hand in every instance.
            pending.pop_front();
        }
        pending.push_back((revocation, until));
    }

    /// The command connection, connecting when there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT);
        let conn = timeout(
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        self.conn.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    fn mark_up(&self, resynced: usize) {
        let mut state = self.state.lock();
        let was = std::mem::replace(
            &mut *state,
            State::Up {
                since: Instant::now(),
            },
        );
        drop(state);
        self.metrics.revocation_pubsub_connected.set(1);
        let url = redacted_url(&self.url);
        match was {
            State::Down { since, .. } => tracing::info!(
                redis = %url,
                channel = %self.channel,
                resynced,
                down_for_ms = since.elapsed().as_millis() as u64,
                "revocation channel back: re-synced, revocations propagate again"
            ),
            _ => tracing::info!(
                redis = %url,
                channel = %self.channel,
                resynced,
                "revocations propagate through redis"
            ),
        }
    }

    fn mark_down(&self, error: String) {
        self.metrics.revocation_pubsub_connected.set(0);
        self.metrics
            .revocation_pubsub_errors
            .with_label_values(&["subscribe"])
            .inc();
        let mut state = self.state.lock();
        if let State::Down { error: e, .. } = &mut *state {
            *e = error;
            return;
        }
        tracing::warn!(
            error = %error,
            redis = %redacted_url(&self.url),
            "revocation channel lost: revocations made elsewhere are not seen here until it is back (then re-synced)"
        );
        *state = State::Down {
            since: Instant::now(),
            error,
        };
    }

    /// The `/readyz` check. Failing only until the first connection attempt ends, so a
    /// starting instance does not serve before it had a chance to load the revocations in
    /// force; after that always passing (each instance still enforces what it knows), with
    /// the state in the detail.
    pub fn readiness(&self) -> Check {
        let url = redacted_url(&self.url);
        let pending = self.pending.lock().len();
        let (ok, mut detail) = match &*self.state.lock() {
            State::Connecting => (false, format!("connecting to redis at {url}")),
            State::Up { since } => (
                true,
                format!(
                    "subscribed to `{}` at {url} (up for {}s)",
                    self.channel,
                    since.elapsed().as_secs()
                ),
            ),
            State::Down { since, error } => (
                true,
                format!(
                    "degraded: redis at {url} unreachable for {}s ({error}); revocations made in other instances are not seen until it is back",
                    since.elapsed().as_secs()
                ),
            ),
        };
        if pending > 0 {
            detail.push_str(&format!(
                "; {pending} revocations made here wait to be propagated"
            ));
        }
        Check {
            name: "revocation_pubsub".into(),
            ok,
            detail,
        }
    }
}

impl Propagate for RedisPropagation {
    fn publish<'a>(
        &'a self,
        revocation: &'a Revocation,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let sent = self.send(revocation).await;
            if let Err(e) = &sent {
                self.keep_pending(revocation.clone());
                tracing::warn!(
                    error = %e,
                    redis = %redacted_url(&self.url),
                    "revocation not published; kept to publish once redis is back"
                );
            }
            sent.map_err(|e| format!("{e} (kept; published again once Redis is back)"))
        })
    }
}

/// A revocation from the channel or the set, checked as the admin endpoint checks its input.
fn valid(revocation: Revocation) -> Result<Revocation, String> {
    let empty = match &revocation.target {
        Target::Token(_) => false,
        Target::Jti(v) | Target::Client(v) | Target::Subject(v) => v.is_empty(),
    };
    if empty {
        return Err("the revoked value is empty".into());
    }
    if revocation.ttl_secs == 0 {
        return Err("ttl_secs is 0".into());
    }
    Ok(Revocation {
        ttl_secs: revocation.ttl_secs.min(MAX_TTL_SECS),
        ..revocation
    })
}

/// `f`, failing after [`CALL_TIMEOUT`].
async fn timeout<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", CALL_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::cache::key;
    use crate::config::TokenCacheConfig;

    const CACHE: TokenCacheConfig = TokenCacheConfig {
        max_entries: 10,
        max_ttl: Duration::from_secs(60),
    };

    #[test]
    fn messages_carry_the_origin_and_never_the_token() {
        let m = Message {
            origin: "abc".into(),
            revocation: Revocation {
                target: Target::token("secret-token"),
                ttl_secs: 60,
            },
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("secret-token"), "{json}");
        assert_eq!(
            json,
            format!(
                r#"{{"origin":"abc","kind":"token","value":"{}","ttl_secs":60}}"#,
                super::super::revocation::hex(&key("secret-token"))
            )
        );
        assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), m);
        let jti: Message =
            serde_json::from_str(r#"{"origin":"x","kind":"jti","value":"j-1","ttl_secs":5}"#)
                .unwrap();
        assert_eq!(jti.revocation.target, Target::Jti("j-1".into()));
    }

    #[test]
    fn received_revocations_are_checked_like_admin_requests() {
        let r = |target, ttl_secs| Revocation { target, ttl_secs };
        assert!(valid(r(Target::Client(String::new()), 5)).is_err());
        assert!(valid(r(Target::Subject("s".into()), 0)).is_err());
        assert_eq!(
            valid(r(Target::Jti("j".into()), u64::MAX))
                .unwrap()
                .ttl_secs,
            MAX_TTL_SECS
        );
        assert!(serde_json::from_str::<Message>(
            r#"{"origin":"x","kind":"nope","value":"v","ttl_secs":5}"#
        )
        .is_err());
    }

    #[test]
    fn passwords_never_reach_readiness_and_a_fresh_instance_is_not_ready() {
        let metrics = Arc::new(Metrics::new());
        let auth = Arc::new(Authenticator::new(&[], &CACHE, metrics.clone()));
        let p = RedisPropagation::new(
            "redis://:hunter2@127.0.0.1:1/0",
            "fw:rev",
            10,
            auth,
            metrics.clone(),
        )
        .unwrap();
        assert_eq!(p.instance_id().len(), 32);
        let c = p.readiness();
        assert!(!c.ok);
        assert!(!c.detail.contains("hunter2"), "{}", c.detail);
        p.mark_down("refused".into());
        let c = p.readiness();
        assert!(c.ok, "{}", c.detail);
        assert!(c.detail.starts_with("degraded"), "{}", c.detail);
        assert!(!c.detail.contains("hunter2"), "{}", c.detail);
        assert_eq!(metrics.revocation_pubsub_connected.get(), 0);
        p.mark_up(0);
        assert!(p.is_connected());
        assert_eq!(metrics.revocation_pubsub_connected.get(), 1);
    }

    #[tokio::test]
    async fn a_revocation_that_cannot_be_published_is_kept_for_later() {
        let metrics = Arc::new(Metrics::new());
        let auth = Arc::new(Authenticator::new(&[], &CACHE, metrics.clone()));
        // Port 1 on loopback: refused at once.
        let p = RedisPropagation::new("redis://127.0.0.1:1/0", "fw:rev", 10, auth, metrics.clone())
            .unwrap();
        let r = Revocation {
            target: Target::Client("app".into()),
            ttl_secs: 60,
        };
        let e = p.publish(&r).await.unwrap_err();
        assert!(e.contains("kept"), "{e}");
        assert_eq!(p.pending.lock().len(), 1);
        assert_eq!(
            metrics
                .revocation_pubsub_errors
                .with_label_values(&["publish"])
                .get(),
            1
        );
        assert!(p
            .readiness()
            .detail
            .contains("1 revocations made here wait"));
    }
}
