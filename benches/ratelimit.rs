//! Cost and memory of the rate limiter.
//!
//! - `local/quota_check`: one governor check on the bounded store (one key, always admitted).
//! - `local/limiter_after_auth`: what the proxy pays per authenticated request with two
//!   quotas (classification, partition fingerprint, two checks, the headers' data).
//! - `local/quota_check_1M_keys`: one check against a store holding a million keys (cache
//!   misses instead of a hot key).
//! - `redis/limiter_after_auth`: the same request with the quotas shared through Redis (one
//!   `EVALSHA` round trip on loopback). Runs when a `redis-server` can be started (set
//!   `REDIS_SERVER` to its path, or have it on `PATH`); skipped otherwise.
//!
//! Before the timings, a memory measurement: RSS and bytes per key of one quota holding
//! 1,000,000 keys, then after 1,000,000 more distinct keys (the store is capped at
//! `max_keys`, so it must not grow), then after a prune.
//!
//! Run: `cargo bench --bench ratelimit` (`-- --quick` for a short run).

use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use governor::clock::{DefaultClock, FakeRelativeClock};
use http::Method;

use fhirwall::auth::Principal;
use fhirwall::config::{RateLimitConfig, RedisConfig};
use fhirwall::policy::scope::GrantedScopes;
use fhirwall::policy::Policy;
use fhirwall::ratelimit::local::LocalQuota;
use fhirwall::ratelimit::{Limiter, RequestKeys};

const POLICY: &str = r#"version: 1
base_path: /fhir
routes:
  - id: patient-read
    methods: [GET]
    path: /Patient/{id}
    scopes: { any_of: [user/Patient.r] }
quotas:
  - { id: per-client, key: client, rate: 1000000/1s, burst: 1000000000 }
  - { id: per-user, key: subject, rate: 1000000/1s, burst: 1000000000, cost: { read: 2 } }
"#;

/// Polls a future that never waits (the local limiter's) to completion.
fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the local limiter never waits"),
    }
}

fn principal() -> Principal {
    Principal {
        issuer: "https://idp.example".into(),
        subject: Some("user-1".into()),
        client_id: Some("app-1".into()),
        fhir_user: None,
        patient: None,
        jti: None,
        expires_at: 0,
        scopes: GrantedScopes::parse(["user/Patient.r"]),
    }
}

/// Resident set size in bytes (Linux `/proc/self/statm`).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Prints RSS and bytes per key for one quota with a million keys, then shows that a quota
/// capped at a million keys does not grow past it under three million distinct keys.
fn memory_report() {
    const N: usize = 1_000_000;
    let clock = FakeRelativeClock::default();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;

    // 1 unit per hour, clock stopped: every key stays limited, nothing is prunable.
    let before = rss();
    let quota = LocalQuota::new(1, Duration::from_secs(3600), 1, 2 * N, clock.clone());
    for _ in 0..N {
        let _ = quota.check(xorshift(&mut x), 1);
    }
    let full = rss();
    println!(
        "memory: {} keys in one quota (max_keys {}): RSS {:.1} MiB -> {:.1} MiB, {:.1} bytes per key",
        quota.len(),
        2 * N,
        before as f64 / 1048576.0,
        full as f64 / 1048576.0,
        (full - before) as f64 / quota.len() as f64
    );

    let capped = LocalQuota::new(1, Duration::from_secs(3600), 1, N, clock.clone());
    for _ in 0..N {
        let _ = capped.check(xorshift(&mut x), 1);
    }
    let at_cap = rss();
    for _ in 0..2 * N {
        let _ = capped.check(xorshift(&mut x), 1);
    }
    let after = rss();
    println!(
        "memory: max_keys {N}, {} distinct keys: {} held, {} evicted; RSS +{:.1} MiB for the first {N}, +{:.1} MiB for the next {}",
        3 * N,
        capped.len(),
        capped.evictions(),
        (at_cap - full) as f64 / 1048576.0,
        (after as f64 - at_cap as f64) / 1048576.0,
        2 * N
    );
    clock.advance(Duration::from_secs(3 * 3600));
    quota.prune();
    capped.prune();
    println!(
        "memory: after prune: {} + {} keys held",
        quota.len(),
        capped.len()
    );
}

fn local(c: &mut Criterion) {
    memory_report();

    let mut group = c.benchmark_group("local");
    let quota = LocalQuota::new(
        1_000_000_000,
        Duration::from_secs(1),
        1_000_000_000,
        1_000_000,
        DefaultClock::default(),
    );
    group.bench_function("quota_check", |b| b.iter(|| quota.check(black_box(42), 1)));

    let policy = Policy::parse(POLICY, Path::new("bench.yaml")).expect("policy");
    let limiter = Limiter::new(
        policy.rate_limits(),
        policy.base_path(),
        &RateLimitConfig::default(),
        false,
        None,
    )
    .expect("limiter");
    let p = principal();
    let keys = RequestKeys {
        method: &Method::GET,
        path: "/fhir/Patient/123",
        query: None,
        route: "patient-read",
        address: Some("192.0.2.1".parse().unwrap()),
        principal: Some(&p),
    };
    group.bench_function("limiter_after_auth", |b| {
        b.iter(|| now_or_never(limiter.check_after_auth(black_box(&keys))).expect("admitted"))
    });

    let big = LocalQuota::new(
        1_000_000_000,
        Duration::from_secs(1),
        1_000_000_000,
        2_000_000,
        DefaultClock::default(),
    );
    let mut x = 0x1234_5678_9ABC_DEF1u64;
    let keys_1m: Vec<u64> = (0..1_000_000).map(|_| xorshift(&mut x)).collect();
    for k in &keys_1m {
        let _ = big.check(*k, 1);
    }
    let mut i = 0usize;
    group.bench_function("quota_check_1M_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys_1m.len();
            big.check(black_box(keys_1m[i]), 1)
        })
    });
    group.finish();
}

struct RedisChild(Child);

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(c: &mut Criterion) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let child = match Command::new(&bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => RedisChild(child),
        Err(e) => {
            println!("redis: skipped (cannot start `{bin}`: {e})");
            return;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let policy = Policy::parse(POLICY, Path::new("bench.yaml")).expect("policy");
    let cfg = RateLimitConfig {
        redis: Some(RedisConfig {
            url: format!("redis://127.0.0.1:{port}/0"),
            key_prefix: "bench:".into(),
            timeout: Duration::from_secs(1),
            local_share: 0.5,
            retry_interval: Duration::from_millis(50),
        }),
        ..RateLimitConfig::default()
    };
    let limiter = Arc::new(
        Limiter::new(policy.rate_limits(), policy.base_path(), &cfg, false, None).expect("limiter"),
    );
    rt.spawn(limiter.clone().run());
    let shared = limiter.shared().expect("redis configured").clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !shared.is_up() {
        if std::time::Instant::now() > deadline {
            println!("redis: skipped (redis-server did not come up)");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let p = principal();
    let keys = RequestKeys {
        method: &Method::GET,
        path: "/fhir/Patient/123",
        query: None,
        route: "patient-read",
        address: Some("192.0.2.1".parse().unwrap()),
        principal: Some(&p),
    };
    let mut group = c.benchmark_group("redis");
    group.bench_function("limiter_after_auth", |b| {
        b.iter(|| {
            rt.block_on(limiter.check_after_auth(black_box(&keys)))
                .expect("admitted")
        })
    });
    group.finish();
    assert!(shared.is_up(), "every timed check went to Redis");
    drop(child);
}

criterion_group!(benches, local, redis);
criterion_main!(benches);
