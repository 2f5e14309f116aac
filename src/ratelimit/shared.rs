//! Quotas shared by several gateway instances through Redis.
//!
//! Each check is one Lua script, run atomically by Redis (`EVALSHA`, loaded again with
//! `SCRIPT LOAD` when Redis answers `NOSCRIPT`, e.g. after a restart): it reads the
//! theoretical arrival time of every quota that applies, decides, and writes the new times,
//! so two instances can never both admit the last unit of a quota. Time comes from Redis
//! (`TIME`), so the instances' clocks do not have to agree. A key expires when its state is
//! back to fresh, so Redis memory is bounded by the keys active within one burst period.
//!
//! The distinct-patients guard has its own script over a sorted set per key (member: patient
//! fingerprint; score: last seen), trimmed to the window on every call and never holding more
//! than the limit.
//!
//! Redis going away is expected, not fatal: a failed or slow call marks it down, and the
//! limiter answers from its local quotas (each instance admitting its configured share)
//! until [`Shared::run`], probing every `retry_interval`, finds it back. Requests never wait
//! for Redis longer than `timeout`, and not at all while it is down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use crate::admin::Check;
use crate::config::RedisConfig;

/// The GCRA check of one or more quotas, in order, stopping at the first refusal (the
/// quotas checked before it keep the charge, as the local limiter does).
///
/// KEYS: one state key per quota. ARGV: per quota, the emission interval T, the tolerance
/// tau (both microseconds) and the cost n. Returns `{0, remaining...}` when every quota
/// admits, `{i, wait_us}` when quota `i` (1-based) refuses.
const GCRA_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {0}
for i = 1, #KEYS do
  local T = tonumber(ARGV[3 * i - 2])
  local tau = tonumber(ARGV[3 * i - 1])
  local n = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new = tat + T * n
  local allow_at = new - tau - T
  if allow_at > now then
    return {i, allow_at - now}
  end
  redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
  out[#out + 1] = math.floor((now + tau + T - new) / T)
end
return out
"#;

/// The distinct-patients guard for one key.
///
/// KEYS[1]: the key's sorted set. ARGV: window (µs), limit, 1 = deny / 0 = alert,
/// 1 = the request names too many patients, then the (distinct) patient fingerprints.
/// Returns `{over, distinct, retry_us}`.
const GUARD_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local deny = ARGV[3] == '1'
local overflow = ARGV[4] == '1'
local nowstr = string.format('%.0f', now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', KEYS[1])
local new = 0
for i = 5, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then new = new + 1 end
end
local ttl = math.ceil(window / 1000) + 1
if overflow or count + new > limit then
  local excess = count + new - limit
  local retry = window
  if excess >= 1 and excess <= count then
    local e = redis.call('ZRANGE', KEYS[1], excess - 1, excess - 1, 'WITHSCORES')
    retry = tonumber(e[2]) + window - now
  end
  if not deny then
    for i = 5, #ARGV do
      if redis.call('ZSCORE', KEYS[1], ARGV[i]) or redis.call('ZCARD', KEYS[1]) < limit then
        redis.call('ZADD', KEYS[1], nowstr, ARGV[i])
      end
    end
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  return {1, count, retry}
end
for i = 5, #ARGV do
  redis.call('ZADD', KEYS[1], nowstr, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return {0, count + new, 0}
"#;

/// One quota's part of a shared check.
#[derive(Debug, Clone, Copy)]
pub struct GcraArgs {
    /// Emission interval.
    pub interval: Duration,
    /// Burst, in units.
    pub burst: u32,
    /// Units this request costs.
    pub cost: u32,
}

/// What Redis decided for a shared check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcraReply {
    /// Every quota admitted; remaining units per quota, in order.
    Admitted(Vec<u32>),
    /// Quota `index` (0-based) refused; the request conforms after `wait`.
    Refused {
        /// Position of the refusing quota in the request.
        index: usize,
        /// Time until the request conforms.
        wait: Duration,
    },
}

/// What Redis decided for the distinct-patients guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardReply {
    /// Over the limit.
    pub over: bool,
    /// Distinct patients in the window (before the request when over, after it otherwise).
    pub distinct: u32,
    /// When over: time until the request would fit.
    pub retry_after: Duration,
}

/// Why a shared call did not answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// Redis is marked down (no call was made).
    #[error("redis is unavailable")]
    Down,
    /// The call took longer than the configured timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis or the connection failed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script answered something unexpected.
    #[error("unexpected redis reply: {0}")]
    Reply(String),
}

/// The shared backend: a Redis connection, its health, and the scripts.
pub struct Shared {
    cfg: RedisConfig,
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    up: AtomicBool,
    health: Mutex<Health>,
    gcra: redis::Script,
    guard: redis::Script,
    on_change: Box<dyn Fn(bool) + Send + Sync>,
}

#[derive(Debug, Clone)]
enum Health {
    Connecting,
    Up { since: Instant },
    Down { since: Instant, error: String },
}

// === impl Shared ===

impl Shared {
    /// A backend for `cfg`, not connected yet ([`Shared::run`] connects). `on_change` is told
    /// `true` when Redis becomes usable and `false` when it is lost.
    pub fn new(
        cfg: RedisConfig,
        on_change: impl Fn(bool) + Send + Sync + 'static,
    ) -> Result<Shared, redis::RedisError> {
        let client = redis::Client::open(cfg.url.as_str())?;
        Ok(Shared {
            cfg,
            client,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            health: Mutex::new(Health::Connecting),
            gcra: redis::Script::new(GCRA_SCRIPT),
            guard: redis::Script::new(GUARD_SCRIPT),
            on_change: Box::new(on_change),
        })
    }

    /// True when checks go to Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// The Redis key of a quota's partition: prefix, quota id, and a hash of the partition
    /// (client ids, subjects and addresses never appear in Redis in clear).
    pub fn quota_key(&self, quota: &str, partition: &[u8]) -> String {
        format!(
            "{}q:{quota}:{}",
            self.cfg.key_prefix,
            hash_hex(partition, 16)
        )
    }

    /// The Redis key of a guard partition.
    pub fn guard_key(&self, partition: &[u8]) -> String {
        format!("{}dp:{}", self.cfg.key_prefix, hash_hex(partition, 16))
    }

    /// A patient fingerprint stable across instances (salted by the key prefix).
    pub fn patient_fingerprint(&self, id: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.cfg.key_prefix.as_bytes());
        h.update([0]);
        h.update(id.as_bytes());
        hex(&h.finalize()[..8])
    }

    /// Runs the GCRA script for `quotas` (with their Redis keys).
    pub async fn gcra(
        &self,
        keys: &[String],
        quotas: &[GcraArgs],
    ) -> Result<GcraReply, SharedError> {
        let conn = self.connection()?;
        let mut call = self.gcra.prepare_invoke();
        for (key, q) in keys.iter().zip(quotas) {
            let t = q.interval.as_micros().max(1) as u64;
            call.key(key)
                .arg(t)
                .arg(t * u64::from(q.burst.saturating_sub(1)))
                .arg(q.cost);
        }
        let reply: Vec<i64> = self.invoke(conn, &call).await?;
        match reply.split_first() {
            Some((0, remaining)) if remaining.len() == quotas.len() => Ok(GcraReply::Admitted(
                remaining
                    .iter()
                    .map(|r| (*r).clamp(0, u32::MAX as i64) as u32)
                    .collect(),
            )),
            Some((i, [wait])) if *i >= 1 && (*i as usize) <= quotas.len() => {
                Ok(GcraReply::Refused {
                    index: *i as usize - 1,
                    wait: Duration::from_micros((*wait).max(0) as u64),
                })
            }
            _ => Err(SharedError::Reply(format!("{reply:?}"))),
        }
    }

    /// Runs the guard script for one key.
    pub async fn guard(
        &self,
        key: &str,
        fingerprints: &[String],
        overflow: bool,
        limit: u32,
        window: Duration,
        deny: bool,
    ) -> Result<GuardReply, SharedError> {
        let conn = self.connection()?;
        let mut call = self.guard.prepare_invoke();
        call.key(key)
            .arg(window.as_micros() as u64)
            .arg(limit)
            .arg(u8::from(deny))
            .arg(u8::from(overflow));
        for f in fingerprints {
            call.arg(f);
        }
        let reply: Vec<i64> = self.invoke(conn, &call).await?;
        match reply[..] {
            [over, distinct, retry] => Ok(GuardReply {
                over: over == 1,
                distinct: distinct.clamp(0, u32::MAX as i64) as u32,
                retry_after: Duration::from_micros(retry.max(0) as u64),
            }),
            _ => Err(SharedError::Reply(format!("{reply:?}"))),
        }
    }

    fn connection(&self) -> Result<Arc<ConnectionManager>, SharedError> {
        if !self.is_up() {
            return Err(SharedError::Down);
        }
        self.conn.load_full().ok_or(SharedError::Down)
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        conn: Arc<ConnectionManager>,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, SharedError> {
        let mut conn = (*conn).clone();
        let result =
            match tokio::time::timeout(self.cfg.timeout, call.invoke_async(&mut conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(SharedError::Redis(e)),
                Err(_) => Err(SharedError::Timeout(self.cfg.timeout)),
            };
        if let Err(e) = &result {
            // A script error (a bug, or a key of the wrong type) is not an outage, but it
            // cannot be answered from Redis either: every failure falls back the same way.
            self.mark_down(e.to_string());
        }
        result
    }

    fn mark_down(&self, error: String) {
        let was_up = self.up.swap(false, Ordering::AcqRel);
        let mut health = self.health.lock();
        if !matches!(*health, Health::Down { .. }) {
            *health = Health::Down {
                since: Instant::now(),
                error: error.clone(),
            };
        }
        drop(health);
        if was_up {
            tracing::warn!(
                error = %error,
                local_share = self.cfg.local_share,
                "redis unreachable: rate limits fall back to this instance's share of each quota"
            );
            (self.on_change)(false);
        }
    }

    fn mark_up(&self) {
        *self.health.lock() = Health::Up {
            since: Instant::now(),
        };
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(redis = %redacted_url(&self.cfg.url), "redis reachable: rate limits are shared");
            (self.on_change)(true);
        }
    }

    /// Connects, and keeps probing: while Redis is up, a `PING` every `retry_interval` notices
    /// an outage even without traffic; while it is down, the same probe (on a fresh connection
    /// when the old one is gone) notices it is back. Runs until the process ends.
    pub async fn run(&self) {
        let mut first = true;
        loop {
            let healthy = match self.probe().await {
                Ok(()) => true,
                Err(e) => {
                    if first || self.is_up() {
                        tracing::warn!(error = %e, redis = %redacted_url(&self.cfg.url), "redis probe failed");
                    }
                    self.mark_down(e.to_string());
                    false
                }
            };
            if healthy {
                self.mark_up();
            }
            first = false;
            tokio::time::sleep(self.cfg.retry_interval).await;
        }
    }

    async fn probe(&self) -> Result<(), SharedError> {
        let conn = match self.conn.load_full() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let mut c = (*conn).clone();
        let ping = tokio::time::timeout(
            self.probe_timeout(),
            redis::cmd("PING").query_async::<String>(&mut c),
        )
        .await;
        match ping {
            Ok(Ok(_)) => {}
            failed => {
                // Start over on a fresh connection next time rather than trust the old one's
                // reconnection schedule.
                self.conn.store(None);
                return Err(match failed {
                    Ok(Err(e)) => SharedError::Redis(e),
                    _ => SharedError::Timeout(self.probe_timeout()),
                });
            }
        }
        // Loading the scripts up front spares the first checks a NOSCRIPT round trip.
        for script in [&self.gcra, &self.guard] {
            tokio::time::timeout(
                self.probe_timeout(),
                script.prepare_invoke().load_async(&mut c),
            )
            .await
            .map_err(|_| SharedError::Timeout(self.probe_timeout()))??;
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Arc<ConnectionManager>, SharedError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.probe_timeout())
            .set_response_timeout(self.cfg.timeout.max(Duration::from_millis(10)))
            .set_number_of_retries(1)
            .set_max_delay(self.cfg.retry_interval.as_millis() as u64);
        let conn = tokio::time::timeout(
            self.probe_timeout() * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| SharedError::Timeout(self.probe_timeout() * 2))??;
        let conn = Arc::new(conn);
        self.conn.store(Some(conn.clone()));
        Ok(conn)
    }

    fn probe_timeout(&self) -> Duration {
        self.cfg.timeout.max(Duration::from_secs(1))
    }

    /// The `/readyz` check: always passing (the gateway serves with local limits while Redis
    /// is down), with the state in the detail.
    pub fn readiness(&self) -> Check {
        let url = redacted_url(&self.cfg.url);
        let detail = match &*self.health.lock() {
            Health::Connecting => format!("connecting to redis at {url}; local limits meanwhile"),
            Health::Up { since } => format!(
                "shared through redis at {url} (up for {}s)",
                since.elapsed().as_secs()
            ),
            Health::Down { since, error } => format!(
                "degraded: redis at {url} unreachable for {}s ({error}); each instance admits {}% of every quota",
                since.elapsed().as_secs(),
                self.cfg.local_share * 100.0
            ),
        };
        Check {
            name: "rate_limit".into(),
            ok: true,
            detail,
        }
    }
}

/// The URL without its password, for logs and `/readyz`.
pub fn redacted_url(url: &str) -> String {
    match redis::parse_redis_url(url) {
        Some(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Some(u) => u.to_string(),
        None => "(invalid url)".into(),
    }
}

fn hash_hex(data: &[u8], bytes: usize) -> String {
    hex(&Sha256::digest(data)[..bytes])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared::new(
            RedisConfig {
                url: "redis://:secret@127.0.0.1:1/0".into(),
                key_prefix: "fw:".into(),
                timeout: Duration::from_millis(20),
                local_share: 0.5,
                retry_interval: Duration::from_secs(1),
            },
            |_| {},
        )
        .unwrap()
    }

    #[test]
    fn keys_carry_the_prefix_and_no_identifier_in_clear() {
        let s = shared();
        let k = s.quota_key("per-client", b"client\0https://idp\0app-1");
        assert!(k.starts_with("fw:q:per-client:"), "{k}");
        assert!(!k.contains("app-1"));
        assert_eq!(k.len(), "fw:q:per-client:".len() + 32);
        assert_eq!(k, s.quota_key("per-client", b"client\0https://idp\0app-1"));
        assert_ne!(s.patient_fingerprint("123"), s.patient_fingerprint("124"));
        assert_eq!(s.patient_fingerprint("123").len(), 16);
    }

    #[test]
    fn passwords_never_reach_logs_or_readiness() {
        assert_eq!(
            redacted_url("redis://:secret@127.0.0.1:6379/0"),
            "redis://:REDACTED@127.0.0.1:6379/0"
        );
        let c = shared().readiness();
        assert!(c.ok);
        assert!(!c.detail.contains("secret"), "{}", c.detail);
    }

    #[tokio::test]
    async fn a_backend_that_never_connected_refuses_without_calling() {
        let s = shared();
        assert!(!s.is_up());
        let r = s
            .gcra(
                &["k".into()],
                &[GcraArgs {
                    interval: Duration::from_secs(1),
                    burst: 1,
                    cost: 1,
                }],
            )
            .await;
        assert!(matches!(r, Err(SharedError::Down)));
    }
}
