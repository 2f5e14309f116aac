//! In-process quotas: governor's GCRA over a bounded, sharded key store.
//!
//! governor does the arithmetic (keyed [`RateLimiter`], generic over its [`Clock`], so tests
//! drive it with `FakeRelativeClock`); [`BoundedStore`] is the governor `StateStore` that keeps
//! the per-key state. Each key costs one `u64 -> u64` entry (a fingerprint of the partition
//! key -> its theoretical arrival time) in one of [`SHARDS`] hash maps:
//! 16 bytes of payload, 38 bytes of resident memory per key measured at 1,000,000 keys with
//! the tables' control bytes and load factor (`benches/ratelimit.rs`); no per-key heap
//! allocation. Memory is bounded twice:
//!
//! - keys whose state is back to fresh are dropped by [`LocalQuota::prune`] (governor's
//!   `retain_recent`), which the limiter runs on a timer;
//! - a shard never holds more than its share of `max_keys`: a new key arriving at a full
//!   shard first evicts the sixteenth of the shard closest to a fresh state (smallest
//!   arrival times), so one O(shard) pass pays for many inserts. An evicted key starts over with a
//!   full burst, which only ever favours a key that was nearly idle.
//!
//! A refused check of a key that has no state yet stores nothing, so a flood of refused new
//! keys cannot fill the store either.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;

/// Shards of a store (a power of two; the top bits of a key pick its shard).
pub const SHARDS: usize = 64;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
/// A full shard evicts this fraction of itself at once: one O(shard) pass per
/// `shard / EVICT_FRACTION` new keys.
const EVICT_FRACTION: usize = 16;

/// The answer of one local quota for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalOutcome {
    /// Admitted; `remaining` units are left in the burst.
    Admitted {
        /// Units that could still be spent at once.
        remaining: u32,
    },
    /// Refused; the same request would be admitted after `wait`.
    Refused {
        /// Time until the request conforms.
        wait: Duration,
    },
}

/// One quota's keyed GCRA state, in this process.
pub struct LocalQuota<C: Clock> {
    limiter: RateLimiter<u64, BoundedStore, C, StateInformationMiddleware>,
    burst: u32,
    period: Duration,
    /// Shared with the store, which governor keeps to itself.
    evictions: Arc<AtomicU64>,
}

/// A governor state store of at most `max_keys` keys, in [`SHARDS`] locked hash maps.
pub struct BoundedStore {
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
    evictions: Arc<AtomicU64>,
}

type Shard = HashMap<u64, u64, BuildHasherDefault<MixHasher>>;

/// Keys are already uniformly distributed fingerprints; the map only needs their bits mixed
/// so that the bits used for the shard do not also decide the table slot.
#[derive(Default)]
pub struct MixHasher(u64);

// === impl LocalQuota ===

impl<C: Clock> LocalQuota<C> {
    /// A quota of `count` units per `period` with bursts of `burst`, keeping at most
    /// `max_keys` keys.
    pub fn new(count: u32, period: Duration, burst: u32, max_keys: usize, clock: C) -> Self {
        let count = count.max(1);
        let burst = burst.max(1);
        let quota = Quota::with_period(period / count)
            .expect("the period is at least one second and the count at most 10^9")
            .allow_burst(NonZeroU32::new(burst).expect("burst is at least 1"));
        let store = BoundedStore::new(max_keys);
        let evictions = store.evictions.clone();
        LocalQuota {
            limiter: RateLimiter::new(quota, store, clock),
            burst,
            period,
            evictions,
        }
    }

    /// Charges `cost` units (at least 1) to `key`. A cost above the burst is charged as the
    /// whole burst: it can be admitted, but only from a full bucket.
    pub fn check(&self, key: u64, cost: u32) -> LocalOutcome {
        let n = NonZeroU32::new(cost.clamp(1, self.burst)).expect("clamped to at least 1");
        match self.limiter.check_key_n(&key, n) {
            Ok(Ok(snapshot)) => LocalOutcome::Admitted {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Ok(Err(not_until)) => LocalOutcome::Refused {
                wait: not_until.wait_time_from(self.limiter.clock().now()),
            },
            // Unreachable after the clamp; refuse for a whole period rather than admit.
            Err(_) => LocalOutcome::Refused { wait: self.period },
        }
    }

    /// Drops every key whose state is indistinguishable from a fresh one.
    pub fn prune(&self) {
        self.limiter.retain_recent();
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Keys evicted so far because the store was full.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The burst (units available at once from a fresh state).
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

// === impl BoundedStore ===

impl BoundedStore {
    /// An empty store for at most `max_keys` keys (rounded up to a multiple of [`SHARDS`]).
    pub fn new(max_keys: usize) -> Self {
        BoundedStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_cap: max_keys.div_ceil(SHARDS).max(4),
            evictions: Arc::new(AtomicU64::new(0)),
        }
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        &self.shards[(key >> (64 - SHARD_BITS)) as usize]
    }

    /// Evicts the sixteenth of `map` with the smallest arrival times (closest to fresh).
    fn make_room(&self, map: &mut Shard) {
        let mut tats: Vec<u64> = map.values().copied().collect();
        let k = (tats.len() / EVICT_FRACTION).max(1);
        let (below, threshold, _) = tats.select_nth_unstable(k - 1);
        let threshold = *threshold;
        // Everything below the threshold goes, and of the entries equal to it (many keys can
        // share an arrival time) only as many as make `k`.
        let mut equal_to_drop = k - below.iter().filter(|t| **t < threshold).count();
        map.retain(|_, tat| {
            if *tat < threshold {
                return false;
            }
            if *tat == threshold && equal_to_drop > 0 {
                equal_to_drop -= 1;
                return false;
            }
            true
        });
        self.evictions.fetch_add(k as u64, Ordering::Relaxed);
    }
}

impl StateStore for BoundedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // The closure is a few comparisons; holding the shard lock for it keeps the
        // read-decide-write atomic without a CAS loop.
        let mut map = self.shard(*key).lock();
        if let Some(tat) = map.get_mut(key) {
            let (out, next) = f(Some(Nanos::from(*tat)))?;
            *tat = next.as_u64();
            return Ok(out);
        }
        let (out, next) = f(None)?;
        if map.len() >= self.shard_cap {
            self.make_room(&mut map);
        }
        map.insert(*key, next.as_u64());
        Ok(out)
    }
}

impl ShrinkableKeyedStateStore<u64> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        for shard in self.shards.iter() {
            shard.lock().retain(|_, tat| *tat > drop_below);
        }
    }

    fn shrink_to_fit(&self) {
        for shard in self.shards.iter() {
            shard.lock().shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.lock().is_empty())
    }
}

// === impl MixHasher ===

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        // Fibonacci hashing: every input bit reaches the high bits hashbrown uses for its
        // control bytes.
        self.0 = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Seconds, rounded up, of a wait (what a client must wait to be admitted).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn quota(
        count: u32,
        period: u64,
        burst: u32,
        max_keys: usize,
    ) -> (LocalQuota<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            LocalQuota::new(
                count,
                Duration::from_secs(period),
                burst,
                max_keys,
                clock.clone(),
            ),
            clock,
        )
    }

    #[test]
    fn a_burst_drains_then_refills_one_unit_per_interval() {
        let (q, clock) = quota(60, 60, 2, 1024);
        assert_eq!(q.check(7, 1), LocalOutcome::Admitted { remaining: 1 });
        assert_eq!(q.check(7, 1), LocalOutcome::Admitted { remaining: 0 });
        assert_eq!(
            q.check(7, 1),
            LocalOutcome::Refused {
                wait: Duration::from_secs(1)
            }
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(
            q.check(7, 1),
            LocalOutcome::Refused {
                wait: Duration::from_millis(500)
            }
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(q.check(7, 1), LocalOutcome::Admitted { remaining: 0 });
        // Another key has its own bucket.
        assert_eq!(q.check(8, 1), LocalOutcome::Admitted { remaining: 1 });
    }

    #[test]
    fn costs_spend_several_units_and_are_capped_at_the_burst() {
        let (q, _) = quota(10, 10, 5, 1024);
        assert_eq!(q.check(1, 3), LocalOutcome::Admitted { remaining: 2 });
        assert_eq!(
            q.check(1, 3),
            LocalOutcome::Refused {
                wait: Duration::from_secs(1)
            }
        );
        // A cost above the burst is admitted from a full bucket only (never "never").
        assert_eq!(q.check(2, 50), LocalOutcome::Admitted { remaining: 0 });
    }

    #[test]
    fn refused_new_keys_store_nothing() {
        let (q, _) = quota(1, 60, 1, 1024);
        q.check(1, 1);
        assert_eq!(q.len(), 1);
        assert!(matches!(q.check(1, 1), LocalOutcome::Refused { .. }));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn the_store_never_holds_more_than_max_keys() {
        let max = SHARDS * 16;
        let (q, _) = quota(1, 3600, 1, max);
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..100_000 {
            // xorshift: spread keys over every shard, like fingerprints.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            q.check(x, 1);
            assert!(q.len() <= max);
        }
        assert!(q.evictions() >= 100_000 - max as u64);
    }

    #[test]
    fn eviction_drops_the_keys_closest_to_fresh_first() {
        let (q, clock) = quota(1, 3600, 1, SHARDS * 4);
        // Keys in one shard (same top bits): the first is the oldest, so the closest to fresh.
        let key = |i: u64| i;
        for i in 0..4 {
            q.check(key(i), 1);
            clock.advance(Duration::from_secs(60));
        }
        q.check(key(100), 1);
        // Key 0 was evicted: it is admitted again at once; key 3 (newest) is still limited.
        assert!(matches!(q.check(key(0), 1), LocalOutcome::Admitted { .. }));
        assert!(matches!(q.check(key(3), 1), LocalOutcome::Refused { .. }));
    }

    #[test]
    fn eviction_removes_a_fraction_even_when_every_key_arrived_together() {
        let max = SHARDS * 64;
        let (q, _) = quota(1, 3600, 1, max);
        // Same instant for every key: equal arrival times everywhere.
        for k in 0..64u64 {
            q.check(k, 1);
        }
        assert_eq!(q.len(), 64);
        q.check(64, 1);
        assert_eq!(q.len(), 65 - 64 / EVICT_FRACTION);
        assert_eq!(q.evictions(), (64 / EVICT_FRACTION) as u64);
    }

    #[test]
    fn prune_drops_keys_back_to_fresh_and_keeps_limited_ones() {
        let (q, clock) = quota(1, 10, 1, 1024);
        q.check(1, 1);
        clock.advance(Duration::from_secs(5));
        q.check(2, 1);
        // Key 1's state is fresh again from 10 s, key 2's from 15 s; governor keeps one
        // emission interval (10 s) of margin before dropping.
        clock.advance(Duration::from_secs(15));
        q.prune();
        assert_eq!(q.len(), 1);
        clock.advance(Duration::from_secs(5));
        q.prune();
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
