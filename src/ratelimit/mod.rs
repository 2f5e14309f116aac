//! Rate limits: per-client, per-subject and per-address quotas from the policy, the
//! distinct-patients guard against bulk scraping, and sharing both across instances through
//! Redis.
//!
//! ```text
//!  request_filter: route matched
//!     │ Limiter::check_before_auth   `key: address` quotas (bad and missing tokens count)
//!     │ token verified, policy allowed
//!     │ Limiter::check_after_auth    `key: client|subject` quotas, then the guard
//!     ▼
//!  Ok(Admitted)      ─▶ forwarded (RateLimit headers on the response, when configured)
//!  Err(RateLimited)  ─▶ 429 + Retry-After + RateLimit headers + OperationOutcome `throttled`
//! ```
//!
//! Quotas are GCRA ([`local`]: governor, in process; [`shared`]: one Lua script per check in
//! Redis). Of the quotas that apply to a request, the strictest (lowest sustained rate) is
//! checked first, and the first refusal answers; the quotas checked before it keep the
//! charge. Each quota's state is keyed by a fingerprint of its partition (client, subject or
//! address), never the identifier itself. With Redis configured, each quota also has a local
//! copy scaled to the instance's `local_share`: that is what answers while Redis is
//! unreachable (logged, counted in `fhirwall_ratelimit_mode`, shown in `/readyz`), until
//! Redis is back.
//!
//! The `RateLimit-Policy` and `RateLimit` fields follow draft-ietf-httpapi-ratelimit-headers-10
//! (§3, §4): one item per quota, named by its id; `q` and `w` are the quota's count and
//! period, `r` the units left in the burst, `t` an upper bound on the seconds until one more
//! unit is available (the emission interval; the wait itself on a refusal).

pub mod interaction;
pub mod local;
pub mod patients;
pub mod shared;
pub mod spec;

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};

use crate::admin::Check;
use crate::audit::RateLimitNote;
use crate::auth::Principal;
use crate::config::RateLimitConfig;
use crate::metrics::Metrics;
use crate::policy::scope::Context;
use crate::policy::{Denial, DenyReason};

use self::interaction::Interaction;
use self::local::{ceil_secs, LocalOutcome, LocalQuota};
use self::patients::{GuardOutcome, GuardStore};
use self::shared::{GcraArgs, GcraReply, Shared};
use self::spec::{
    GuardAction, GuardSpec, KeyKind, QuotaSpec, RateLimitPolicy, DISTINCT_PATIENTS_ID,
};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-10 §3).
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10 §4).
pub const RATELIMIT: &str = "ratelimit";

/// The rate limiter of a gateway: compiled quotas, their state, and the guard.
pub struct Limiter<C: Clock + Clone = DefaultClock> {
    /// Strictest first.
    quotas: Box<[Compiled<C>]>,
    guard: Option<CompiledGuard>,
    base_path: Box<str>,
    headers_on_allowed: bool,
    trust_forwarded_for: bool,
    prune_interval: Duration,
    shared: Option<Arc<Shared>>,
    metrics: Option<Arc<Metrics>>,
    hasher: std::hash::RandomState,
    clock: C,
    start: C::Instant,
    /// Trip logs are themselves rate limited (one per second, bursts of ten): every trip is
    /// in the audit trail and the metrics, the log only needs to say it is happening.
    log_budget: governor::DefaultDirectRateLimiter,
}

struct Compiled<C: Clock> {
    spec: QuotaSpec,
    /// The whole quota without Redis; this instance's share of it with Redis.
    local: LocalQuota<C>,
    local_count: u32,
    local_burst: u32,
    evictions_seen: AtomicU64,
}

struct CompiledGuard {
    spec: GuardSpec,
    store: GuardStore,
    /// The limit this instance applies on its own (the share of it with Redis).
    local_limit: u32,
}

/// What the limiter needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestKeys<'a> {
    /// The request method.
    pub method: &'a http::Method,
    /// The raw request path (no query).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The matched route's id.
    pub route: &'a str,
    /// The client's address ([`Limiter::client_address`]).
    pub address: Option<IpAddr>,
    /// The verified token, after authentication.
    pub principal: Option<&'a Principal>,
}

/// The state of one quota for one request: what the `RateLimit` fields report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLimit {
    /// The quota's id.
    pub quota: Arc<str>,
    /// Units per window (`q`).
    pub count: u32,
    /// The window in seconds (`w`).
    pub window: u64,
    /// Units available at once.
    pub burst: u32,
    /// Units left (`r`).
    pub remaining: u32,
    /// Upper bound on the seconds until another unit is available (`t`); `None` when the
    /// burst is full.
    pub reset: Option<u64>,
}

/// A request the quotas let through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admitted {
    /// The quotas that counted it, strictest first.
    pub limits: Vec<ServiceLimit>,
    /// The distinct-patients guard is over its limit in `alert` mode: served, but reported.
    pub alert: bool,
}

/// A request a quota or the guard refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// The quota id, or [`DISTINCT_PATIENTS_ID`].
    pub quota: Arc<str>,
    /// When the same request would be admitted.
    pub retry_after: Duration,
    /// The refusing quota's state, for the `RateLimit` fields (`None` for the guard, whose
    /// limit is not advertised).
    pub limit: Option<ServiceLimit>,
    /// The client-facing explanation.
    pub detail: String,
}

/// Why a limiter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// The Redis URL was refused by the client library.
    #[error("invalid redis configuration: {0}")]
    Redis(#[from] ::redis::RedisError),
}

/// What the rate limiter did with one request, kept in the request context for the
/// response headers and the audit record.
#[derive(Debug, Clone, Default)]
pub struct RequestLimits {
    limits: Vec<ServiceLimit>,
    refused: Option<RateLimited>,
    alert: bool,
}

/// Which side of authentication a check runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    BeforeAuth,
    AfterAuth,
}

/// The partition a quota counts a request in.
#[derive(Debug, Clone, Copy)]
enum Partition<'a> {
    Principal {
        kind: KeyKind,
        issuer: &'a str,
        id: &'a str,
    },
    /// IPv4 address, or IPv6 /64 prefix.
    Address([u8; 16], u8),
}

// === impl Limiter ===

impl Limiter<DefaultClock> {
    /// Compiles `policy`'s rate limits. `base_path` is the policy's FHIR base (for the
    /// interaction classification); `trust_forwarded_for` takes the client address from the
    /// last `X-Forwarded-For` entry (set only behind a trusted proxy).
    pub fn new(
        policy: &RateLimitPolicy,
        base_path: &str,
        cfg: &RateLimitConfig,
        trust_forwarded_for: bool,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, LimiterError> {
        Limiter::with_clock(
            policy,
            base_path,
            cfg,
            trust_forwarded_for,
            metrics,
            DefaultClock::default(),
        )
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// [`Limiter::new`] on another clock (tests use governor's `FakeRelativeClock`).
    pub fn with_clock(
        policy: &RateLimitPolicy,
        base_path: &str,
        cfg: &RateLimitConfig,
        trust_forwarded_for: bool,
        metrics: Option<Arc<Metrics>>,
        clock: C,
    ) -> Result<Self, LimiterError> {
        let share = cfg.redis.as_ref().map_or(1.0, |r| r.local_share);
        let scaled = |n: u32| ((f64::from(n) * share).floor() as u32).max(1);
        let mut quotas: Vec<Compiled<C>> = policy
            .quotas
            .iter()
            .map(|q| {
                let (local_count, local_burst) = (scaled(q.count), scaled(q.burst));
                Compiled {
                    local: LocalQuota::new(
                        local_count,
                        q.period,
                        local_burst,
                        cfg.max_keys,
                        clock.clone(),
                    ),
                    local_count,
                    local_burst,
                    spec: q.clone(),
                    evictions_seen: AtomicU64::new(0),
                }
            })
            .collect();
        // Strictest first: a request refused by a tight quota is not charged to the loose
        // ones. The sort is stable, so equal rates keep the policy's order.
        quotas.sort_by(|a, b| {
            a.spec
                .per_second()
                .total_cmp(&b.spec.per_second())
                .then(a.spec.burst.cmp(&b.spec.burst))
        });
        let guard = policy.distinct_patients.as_ref().map(|g| CompiledGuard {
            spec: g.clone(),
            store: GuardStore::new(patients::MAX_GUARD_KEYS),
            local_limit: scaled(g.limit),
        });
        let shared = match &cfg.redis {
            None => None,
            Some(r) => {
                let m = metrics.clone();
                Some(Arc::new(Shared::new(r.clone(), move |up| {
                    if let Some(m) = &m {
                        set_mode(m, if up { "shared" } else { "fallback" });
                    }
                })?))
            }
        };
        if let Some(m) = &metrics {
            set_mode(
                m,
                if shared.is_some() {
                    "fallback"
                } else {
                    "local"
                },
            );
            // Pre-register one series per quota, so dashboards see zeros before refusals.
            for q in &quotas {
                m.rate_limited.with_label_values(&[&q.spec.id]).inc_by(0);
                m.ratelimit_keys.with_label_values(&[&q.spec.id]).set(0);
            }
            if guard.is_some() {
                m.rate_limited
                    .with_label_values(&[DISTINCT_PATIENTS_ID])
                    .inc_by(0);
                for action in ["deny", "alert"] {
                    m.distinct_patients_exceeded
                        .with_label_values(&[action])
                        .inc_by(0);
                }
            }
        }
        let start = clock.now();
        Ok(Limiter {
            quotas: quotas.into_boxed_slice(),
            guard,
            base_path: base_path.into(),
            headers_on_allowed: cfg.headers_on_allowed,
            trust_forwarded_for,
            prune_interval: cfg.prune_interval,
            shared,
            metrics,
            hasher: std::hash::RandomState::new(),
            clock,
            start,
            log_budget: governor::RateLimiter::direct(
                governor::Quota::per_second(std::num::NonZeroU32::MIN)
                    .allow_burst(std::num::NonZeroU32::new(10).expect("10 > 0")),
            ),
        })
    }

    /// True when the policy has no quota and no guard (every check admits at once).
    pub fn is_empty(&self) -> bool {
        self.quotas.is_empty() && self.guard.is_none()
    }

    /// Whether allowed responses carry the `RateLimit` fields too.
    pub fn headers_on_allowed(&self) -> bool {
        self.headers_on_allowed
    }

    /// The shared backend, when Redis is configured.
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// The address a request is counted under: the TCP peer, or, with
    /// `forwarding.trust_forwarded_for`, the last address of `X-Forwarded-For` (the one the
    /// trusted proxy in front appended; earlier entries are the client's to forge).
    pub fn client_address(
        &self,
        peer: Option<IpAddr>,
        headers: &http::HeaderMap,
    ) -> Option<IpAddr> {
        if self.trust_forwarded_for {
            // Only the last entry was written by the trusted proxy; if it is not an address,
            // nothing earlier is trustworthy either.
            let last = headers
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|s| s.trim().parse::<IpAddr>().ok());
            if last.is_some() {
                return last;
            }
        }
        peer
    }

    /// The `key: address` quotas. Runs before the token is looked at, so requests with bad or
    /// missing tokens count too.
    pub async fn check_before_auth(&self, req: &RequestKeys<'_>) -> Result<Admitted, RateLimited> {
        if self.quotas.is_empty() {
            return Ok(Admitted::default());
        }
        self.check_quotas(req, Stage::BeforeAuth, self.interaction(req))
            .await
    }

    /// The `key: client|subject` quotas, then the distinct-patients guard. For requests the
    /// policy allowed, with a verified token.
    pub async fn check_after_auth(&self, req: &RequestKeys<'_>) -> Result<Admitted, RateLimited> {
        if self.is_empty() || req.principal.is_none() {
            return Ok(Admitted::default());
        }
        let interaction = self.interaction(req);
        let mut admitted = self
            .check_quotas(req, Stage::AfterAuth, interaction)
            .await?;
        if let Some(guard) = &self.guard {
            admitted.alert = self.check_guard(guard, req).await?;
        }
        Ok(admitted)
    }

    fn interaction(&self, req: &RequestKeys<'_>) -> Interaction {
        let below = interaction::below_base(req.path, &self.base_path).unwrap_or(req.path);
        interaction::classify(req.method, below)
    }

    async fn check_quotas(
        &self,
        req: &RequestKeys<'_>,
        stage: Stage,
        interaction: Interaction,
    ) -> Result<Admitted, RateLimited> {
        // The quotas that apply to this request at this stage, strictest first, with their
        // cost and partition. An iterator, not a Vec: the local path (every request without
        // Redis) walks it once and allocates nothing but the admitted limits.
        let picked = self.quotas.iter().filter_map(|q| {
            let for_stage = match q.spec.key {
                KeyKind::Address => Stage::BeforeAuth,
                KeyKind::Client | KeyKind::Subject => Stage::AfterAuth,
            };
            if for_stage != stage || !q.spec.applies(req.route, interaction) {
                return None;
            }
            let cost = q.spec.cost.of(interaction);
            if cost == 0 {
                return None;
            }
            Some((q, cost, Partition::of(q.spec.key, req)?))
        });
        if let Some(shared) = self.shared.as_ref().filter(|s| s.is_up()) {
            let picked: Vec<(&Compiled<C>, u32, Partition<'_>)> = picked.collect();
            if picked.is_empty() {
                return Ok(Admitted::default());
            }
            let keys: Vec<String> = picked
                .iter()
                .map(|(q, _, p)| shared.quota_key(&q.spec.id, &p.bytes()))
                .collect();
            let args: Vec<GcraArgs> = picked
                .iter()
                .map(|(q, cost, _)| GcraArgs {
                    interval: q.spec.interval(),
                    burst: q.spec.burst,
                    cost: *cost,
                })
                .collect();
            match shared.gcra(&keys, &args).await {
                Ok(GcraReply::Admitted(remaining)) => {
                    let mut limits: Vec<ServiceLimit> = picked
                        .iter()
                        .zip(remaining)
                        .map(|((q, _, _), r)| q.limit(r, q.spec.count, q.spec.burst))
                        .collect();
                    limits.sort_by_key(|l| l.remaining);
                    return Ok(Admitted {
                        limits,
                        alert: false,
                    });
                }
                Ok(GcraReply::Refused { index, wait }) => {
                    let q = picked[index].0;
                    return Err(self.refused(q, wait, q.spec.count, q.spec.burst));
                }
                Err(e) => {
                    self.redis_failed(&e);
                    return self.check_local(picked);
                }
            }
        }
        self.check_local(picked)
    }

    /// The local quotas (no Redis, or Redis just failed), in the order given.
    fn check_local<'p>(
        &self,
        picked: impl IntoIterator<Item = (&'p Compiled<C>, u32, Partition<'p>)>,
    ) -> Result<Admitted, RateLimited>
    where
        C: 'p,
    {
        let mut limits = Vec::new();
        for (q, cost, partition) in picked {
            match q.local.check(partition.fingerprint(&self.hasher), cost) {
                LocalOutcome::Admitted { remaining } => {
                    limits.push(q.limit(remaining, q.local_count, q.local_burst))
                }
                LocalOutcome::Refused { wait } => {
                    return Err(self.refused(q, wait, q.local_count, q.local_burst))
                }
            }
        }
        limits.sort_by_key(|l| l.remaining);
        Ok(Admitted {
            limits,
            alert: false,
        })
    }

    /// The guard, for `user/` and `system/` tokens: `Ok(true)` when over the limit in alert
    /// mode.
    async fn check_guard(
        &self,
        guard: &CompiledGuard,
        req: &RequestKeys<'_>,
    ) -> Result<bool, RateLimited> {
        let Some(principal) = req.principal else {
            return Ok(false);
        };
        // patient/ scopes are confined to their one patient by the policy already.
        if !(principal.scopes.uses_context(Context::User)
            || principal.scopes.uses_context(Context::System))
        {
            return Ok(false);
        }
        let below = interaction::below_base(req.path, &self.base_path).unwrap_or(req.path);
        let touched = patients::touched(below, req.query);
        if touched.is_empty() {
            return Ok(false);
        }
        let Some(partition) = Partition::of(guard.spec.key, req) else {
            return Ok(false);
        };
        let spec = &guard.spec;
        let deny = spec.action == GuardAction::Deny;
        let mut outcome = None;
        if let Some(shared) = self.shared.as_ref().filter(|s| s.is_up()) {
            let mut prints: Vec<String> = touched
                .ids
                .iter()
                .map(|id| shared.patient_fingerprint(id))
                .collect();
            prints.sort_unstable();
            prints.dedup();
            let key = shared.guard_key(&partition.bytes());
            match shared
                .guard(
                    &key,
                    &prints,
                    touched.overflow,
                    spec.limit,
                    spec.window,
                    deny,
                )
                .await
            {
                Ok(r) if r.over => {
                    outcome = Some(GuardOutcome::Over {
                        distinct: r.distinct,
                        retry_after: r.retry_after,
                    })
                }
                Ok(r) => {
                    outcome = Some(GuardOutcome::Within {
                        distinct: r.distinct,
                    })
                }
                Err(e) => self.redis_failed(&e),
            }
        }
        let outcome = outcome.unwrap_or_else(|| {
            let mut prints: Vec<u64> = touched
                .ids
                .iter()
                .map(|id| guard.store.fingerprint(id))
                .collect();
            prints.sort_unstable();
            prints.dedup();
            guard.store.check(
                partition.fingerprint(&self.hasher),
                &prints,
                touched.overflow,
                self.elapsed_nanos(),
                patients::GuardRule {
                    limit: guard.local_limit,
                    window: spec.window,
                    action: spec.action,
                },
            )
        });
        let GuardOutcome::Over {
            distinct,
            retry_after,
        } = outcome
        else {
            return Ok(false);
        };
        let action = if deny { "deny" } else { "alert" };
        if let Some(m) = &self.metrics {
            m.distinct_patients_exceeded
                .with_label_values(&[action])
                .inc();
        }
        if self.log_budget.check().is_ok() {
            tracing::warn!(
                action,
                key = spec.key.as_str(),
                client.id = principal.client_id.as_deref().unwrap_or("-"),
                distinct,
                limit = spec.limit,
                window_s = spec.window.as_secs(),
                "distinct-patients limit exceeded"
            );
        }
        if !deny {
            return Ok(true);
        }
        if let Some(m) = &self.metrics {
            m.rate_limited
                .with_label_values(&[DISTINCT_PATIENTS_ID])
                .inc();
        }
        let secs = ceil_secs(retry_after).max(1);
        Err(RateLimited {
            quota: Arc::from(DISTINCT_PATIENTS_ID),
            retry_after,
            limit: None,
            detail: format!(
                "this {} has reached its limit of distinct patients for now; retry in {secs} s",
                spec.key.as_str()
            ),
        })
    }

    fn refused(&self, q: &Compiled<C>, wait: Duration, count: u32, burst: u32) -> RateLimited {
        if let Some(m) = &self.metrics {
            m.rate_limited.with_label_values(&[&q.spec.id]).inc();
        }
        let secs = ceil_secs(wait).max(1);
        let mut limit = q.limit(0, count, burst);
        limit.reset = Some(secs);
        RateLimited {
            quota: q.spec.id.clone(),
            retry_after: wait,
            detail: format!(
                "rate limit `{}` exceeded ({count} requests per {} s per {}); retry in {secs} s",
                q.spec.id,
                q.spec.period.as_secs(),
                q.spec.key.as_str()
            ),
            limit: Some(limit),
        }
    }

    fn redis_failed(&self, e: &shared::SharedError) {
        // `Down`: Redis was lost between the check and the call; nothing was attempted.
        if let (Some(m), false) = (&self.metrics, matches!(e, shared::SharedError::Down)) {
            m.ratelimit_redis_errors.inc();
        }
        tracing::debug!(error = %e, "rate-limit check answered locally");
    }

    fn elapsed_nanos(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    /// Drops state that is back to fresh (every quota's keys, the guard's idle keys) and
    /// updates the key gauges.
    pub fn prune(&self) {
        for q in self.quotas.iter() {
            q.local.prune();
            if let Some(m) = &self.metrics {
                m.ratelimit_keys
                    .with_label_values(&[&q.spec.id])
                    .set(q.local.len() as i64);
                let total = q.local.evictions();
                let before = q.evictions_seen.swap(total, Ordering::Relaxed);
                if total > before {
                    m.ratelimit_evictions
                        .with_label_values(&[&q.spec.id])
                        .inc_by(total - before);
                }
            }
        }
        if let Some(g) = &self.guard {
            g.store.prune(self.elapsed_nanos(), g.spec.window);
        }
    }

    /// Keys currently held by each quota, strictest first (for tests and benches).
    pub fn key_counts(&self) -> Vec<(Arc<str>, usize)> {
        self.quotas
            .iter()
            .map(|q| (q.spec.id.clone(), q.local.len()))
            .collect()
    }

    /// The `/readyz` check of the shared backend (`None` without Redis).
    pub fn readiness(&self) -> Option<Check> {
        self.shared.as_ref().map(|s| s.readiness())
    }

    /// Background work, until the process ends: pruning every `prune_interval`, and the
    /// Redis connection and probe when configured.
    pub async fn run(self: Arc<Self>) {
        let shared = self.shared.clone();
        let probe = async move {
            match shared {
                Some(s) => s.run().await,
                None => std::future::pending().await,
            }
        };
        let prune = async {
            let mut tick = tokio::time::interval(self.prune_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.prune();
            }
        };
        tokio::join!(probe, prune);
    }
}

fn set_mode(m: &Metrics, mode: &str) {
    for candidate in ["local", "shared", "fallback"] {
        m.ratelimit_mode
            .with_label_values(&[candidate])
            .set(i64::from(candidate == mode));
    }
}

// === impl Compiled ===

impl<C: Clock> Compiled<C> {
    fn limit(&self, remaining: u32, count: u32, burst: u32) -> ServiceLimit {
        ServiceLimit {
            quota: self.spec.id.clone(),
            count,
            window: self.spec.period.as_secs(),
            burst,
            remaining,
            reset: (remaining < burst).then(|| ceil_secs(self.spec.period / count).max(1)),
        }
    }
}

// === impl Partition ===

impl<'a> Partition<'a> {
    /// The partition of `req` for `kind`; `None` when the request has none (no token for a
    /// client quota).
    fn of(kind: KeyKind, req: &RequestKeys<'a>) -> Option<Partition<'a>> {
        match kind {
            KeyKind::Address => Some(match req.address {
                Some(ip) => address_key(ip),
                // Not reachable over TCP; any address-less requests share one bucket.
                None => Partition::Address([0; 16], 0),
            }),
            KeyKind::Client | KeyKind::Subject => {
                let p = req.principal?;
                let (first, second) = match kind {
                    KeyKind::Client => (p.client_id.as_deref(), p.subject.as_deref()),
                    _ => (p.subject.as_deref(), p.client_id.as_deref()),
                };
                // A token naming neither shares one bucket with every such token: never
                // unlimited.
                let id = first.or(second).unwrap_or("");
                Some(Partition::Principal {
                    kind,
                    issuer: &p.issuer,
                    id,
                })
            }
        }
    }

    /// A per-process keyed 64-bit fingerprint, the local stores' key.
    fn fingerprint(&self, hasher: &std::hash::RandomState) -> u64 {
        let mut h = hasher.build_hasher();
        match self {
            Partition::Principal { kind, issuer, id } => {
                (*kind as u8).hash(&mut h);
                issuer.hash(&mut h);
                id.hash(&mut h);
            }
            Partition::Address(bytes, len) => {
                3u8.hash(&mut h);
                bytes[..*len as usize].hash(&mut h);
            }
        }
        h.finish()
    }

    /// An unambiguous byte encoding, hashed into the Redis key.
    fn bytes(&self) -> Vec<u8> {
        match self {
            Partition::Principal { kind, issuer, id } => {
                let mut b = Vec::with_capacity(issuer.len() + id.len() + 16);
                b.extend_from_slice(kind.as_str().as_bytes());
                b.push(0);
                b.extend_from_slice(&(issuer.len() as u32).to_be_bytes());
                b.extend_from_slice(issuer.as_bytes());
                b.extend_from_slice(id.as_bytes());
                b
            }
            Partition::Address(bytes, len) => {
                let mut b = b"address\0".to_vec();
                b.extend_from_slice(&bytes[..*len as usize]);
                b
            }
        }
    }
}

/// IPv4 addresses as themselves, IPv6 by /64 (one host usually holds a whole /64, so single
/// IPv6 addresses would let it rotate through 2^64 buckets).
fn address_key(ip: IpAddr) -> Partition<'static> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            Partition::Address(b, 4)
        }
        IpAddr::V6(v6) => {
            b[..8].copy_from_slice(&v6.octets()[..8]);
            Partition::Address(b, 8)
        }
    }
}

// === impl RateLimited ===

impl RateLimited {
    /// The denial the proxy answers with (429, `Retry-After`, OperationOutcome `throttled`).
    pub fn denial(&self) -> Denial {
        Denial::new(
            DenyReason::RateLimited {
                retry_after: self.retry_after,
            },
            self.detail.clone(),
        )
    }
}

// === impl RequestLimits ===

impl RequestLimits {
    /// Records an admission.
    pub fn admit(&mut self, admitted: Admitted) {
        self.alert |= admitted.alert;
        if self.limits.is_empty() {
            // The common case (one admission per stage): take the Vec, no copy.
            self.limits = admitted.limits;
        } else {
            self.limits.extend(admitted.limits);
        }
    }

    /// Records a refusal and returns the denial to answer with.
    pub fn refuse(&mut self, limited: RateLimited) -> Denial {
        let denial = limited.denial();
        self.refused = Some(limited);
        denial
    }

    /// The quota that refused the request, if one did.
    pub fn refused_quota(&self) -> Option<&str> {
        self.refused.as_ref().map(|r| &*r.quota)
    }

    /// The `RateLimit-Policy` and `RateLimit` field values: for a refusal, the refusing
    /// quota; otherwise every quota that counted the request, least remaining first. `None`
    /// when there is nothing to report (no quota applied, or the guard refused).
    pub fn header_values(&self) -> Option<(String, String)> {
        let limits: &[ServiceLimit] = match &self.refused {
            Some(r) => std::slice::from_ref(r.limit.as_ref()?),
            None => &self.limits,
        };
        if limits.is_empty() {
            return None;
        }
        let mut policy = String::with_capacity(48 * limits.len());
        let mut state = String::with_capacity(32 * limits.len());
        for (i, l) in limits.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            // Quota ids are `[A-Za-z0-9_.-]`, safe inside an sf-string.
            let _ = write!(policy, "{sep}\"{}\";q={};w={}", l.quota, l.count, l.window);
            if l.burst != l.count {
                // A vendor parameter (§3.1): the GCRA burst differs from the window's count.
                let _ = write!(policy, ";fhirwall-burst={}", l.burst);
            }
            let _ = write!(state, "{sep}\"{}\";r={}", l.quota, l.remaining);
            if let Some(t) = l.reset {
                let _ = write!(state, ";t={t}");
            }
        }
        Some((policy, state))
    }

    /// What the audit record says: the refusing quota, or the guard's alert.
    pub fn audit_note(&self) -> Option<RateLimitNote> {
        if let Some(r) = &self.refused {
            return Some(RateLimitNote {
                quota: r.quota.to_string(),
                action: "deny",
                retry_after_s: Some(ceil_secs(r.retry_after).max(1)),
            });
        }
        self.alert.then(|| RateLimitNote {
            quota: DISTINCT_PATIENTS_ID.to_owned(),
            action: "alert",
            retry_after_s: None,
        })
    }
}

#[cfg(test)]
mod tests;
