//! What the operator wrote about rate limits, validated: the policy's `quotas:` and
//! `distinct_patients:` sections ([`RateLimitPolicy`]) and the configuration's `rate_limit:`
//! section ([`crate::config::RateLimitConfig`]).
//!
//! Both are read with the marked YAML [`Reader`], so every problem is a diagnostic with
//! `file:line:col` and its key path, and all of them are reported in one run. The format is
//! documented in `docs/reference.md` ("Rate limits").

use std::sync::Arc;
use std::time::Duration;

use super::interaction::Interaction;
use crate::config::yaml::{index, join, Kind, MapView, Node, Reader};
use crate::config::{RateLimitConfig, RedisConfig};

/// The id under which distinct-patient refusals and alerts are reported (metrics label, audit
/// `rate_limit.quota`); no quota may use it.
pub const DISTINCT_PATIENTS_ID: &str = "distinct_patients";

/// Largest count, burst or distinct-patient limit (keeps GCRA arithmetic far from overflow).
const MAX_COUNT: u64 = 1_000_000_000;
/// Longest quota period or guard window.
const MAX_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest distinct-patient limit: the guard keeps up to this many entries per key.
const MAX_PATIENT_LIMIT: u64 = 100_000;

const QUOTA_KEYS: &[&str] = &[
    "id",
    "description",
    "key",
    "rate",
    "burst",
    "routes",
    "interactions",
    "cost",
];
const GUARD_KEYS: &[&str] = &["key", "limit", "window", "action"];
const CONFIG_KEYS: &[&str] = &["headers_on_allowed", "max_keys", "prune_interval", "redis"];
const REDIS_KEYS: &[&str] = &[
    "url",
    "key_prefix",
    "timeout",
    "local_share",
    "retry_interval",
];

/// The rate limits of a policy: quotas, and the distinct-patients guard.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimitPolicy {
    /// Every quota, in file order.
    pub quotas: Vec<QuotaSpec>,
    /// The distinct-patients guard, when configured.
    pub distinct_patients: Option<GuardSpec>,
}

/// What a quota counts requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// The token's client (`client_id`, else `azp`; `sub` when neither), per issuer.
    Client,
    /// The token's subject (`sub`; the client when absent), per issuer.
    Subject,
    /// The client's IP address (an IPv6 address by its /64 prefix). Checked before
    /// authentication, so requests with bad or no tokens count too.
    Address,
}

/// One quota: `count` requests (cost units) per `period`, with bursts up to `burst`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaSpec {
    /// Unique id (metrics label, audit records, `RateLimit` headers).
    pub id: Arc<str>,
    /// What requests are counted by.
    pub key: KeyKind,
    /// Units per period (the sustained rate).
    pub count: u32,
    /// The period of the rate, whole seconds.
    pub period: Duration,
    /// Units that can be spent at once (GCRA tolerance); defaults to `count`.
    pub burst: u32,
    /// Route ids the quota applies to; `None` for every route.
    pub routes: Option<Vec<Arc<str>>>,
    /// Interactions the quota applies to; `None` for all.
    pub interactions: Option<Vec<Interaction>>,
    /// Units each interaction costs (default 1; 0 = not counted).
    pub cost: Costs,
}

/// Cost of each interaction, in quota units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Costs([u32; Interaction::ALL.len()]);

/// What the distinct-patients guard does when a key goes over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardAction {
    /// Refuse the request (429).
    Deny,
    /// Serve it, and record an alert (audit, metric, log).
    Alert,
}

/// The distinct-patients guard: at most `limit` different patients per key per `window`,
/// for tokens holding `user/` or `system/` scopes.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardSpec {
    /// What patients are counted by (`client` or `subject`).
    pub key: KeyKind,
    /// Distinct patients allowed per window.
    pub limit: u32,
    /// The sliding window.
    pub window: Duration,
    /// What happens past the limit.
    pub action: GuardAction,
}

// === impl KeyKind ===

impl KeyKind {
    /// The name as written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Client => "client",
            KeyKind::Subject => "subject",
            KeyKind::Address => "address",
        }
    }
}

// === impl QuotaSpec ===

impl QuotaSpec {
    /// Whether the quota counts a request on `route` with `interaction`.
    pub fn applies(&self, route: &str, interaction: Interaction) -> bool {
        self.routes
            .as_ref()
            .is_none_or(|r| r.iter().any(|id| &**id == route))
            && self
                .interactions
                .as_ref()
                .is_none_or(|i| i.contains(&interaction))
    }

    /// The sustained rate in units per second (for ordering quotas strictest first).
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.period.as_secs_f64()
    }

    /// The emission interval: time for one unit to be restored.
    pub fn interval(&self) -> Duration {
        self.period / self.count
    }
}

// === impl Costs ===

impl Costs {
    /// Every interaction costs one unit.
    pub const ONE: Costs = Costs([1; Interaction::ALL.len()]);

    /// Units `interaction` costs.
    pub fn of(&self, interaction: Interaction) -> u32 {
        self.0[interaction as usize]
    }

    /// The most expensive interaction's cost.
    pub fn max(&self) -> u32 {
        self.0.iter().copied().max().unwrap_or(1)
    }
}

impl Default for Costs {
    fn default() -> Self {
        Costs::ONE
    }
}

/// Parses `N/<duration>` (`100/1m`, `5/1s`, `1000/1h`) into a count and a whole-second
/// period.
pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let Some((n, period)) = s.split_once('/') else {
        return Err(format!(
            "invalid rate `{s}`; expected `<count>/<period>`, e.g. `100/1m`"
        ));
    };
    let count = match n.trim().parse::<u64>() {
        Ok(c) if (1..=MAX_COUNT).contains(&c) => c as u32,
        _ => {
            return Err(format!(
                "invalid rate `{s}`: the count must be an integer from 1 to {MAX_COUNT}"
            ))
        }
    };
    let Some(period) = crate::config::yaml::parse_duration(period.trim()) else {
        return Err(format!(
            "invalid rate `{s}`: the period needs a unit (`s`, `m`, `h`), e.g. `100/1m`"
        ));
    };
    // RateLimit-Policy's `w` is whole seconds (draft-ietf-httpapi-ratelimit-headers-10 §3.1.3).
    if period.is_zero() || period.subsec_nanos() != 0 {
        return Err(format!(
            "invalid rate `{s}`: the period must be a whole number of seconds, at least `1s`"
        ));
    }
    if period > MAX_PERIOD {
        return Err(format!(
            "invalid rate `{s}`: the period can be at most 168h (7 days)"
        ));
    }
    // Shared state keeps times in microseconds (Lua numbers are doubles).
    if u64::from(count) > period.as_secs() * 1_000_000 {
        return Err(format!("invalid rate `{s}`: at most 1000000 per second"));
    }
    Ok((count, period))
}

/// Reads the policy's `quotas:` and `distinct_patients:` keys (either may be absent).
/// `routes` are the policy's route ids, for checking `routes:` references.
pub(crate) fn read_policy(
    r: &mut Reader<'_>,
    top: &MapView<'_>,
    routes: &[Arc<str>],
) -> Option<RateLimitPolicy> {
    let mut ok = true;
    let mut quotas = Vec::new();
    // Every id seen, including those of quotas with other errors.
    let mut ids = Vec::new();
    if let Some(node) = top.get("quotas") {
        match r.seq(node, "quotas") {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    match quota(r, item, &index("quotas", i), routes, &mut ids) {
                        Some(q) => quotas.push(q),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    let distinct_patients = match top.get("distinct_patients") {
        None => None,
        Some(node) => match guard(r, node) {
            Some(g) => Some(g),
            None => {
                ok = false;
                None
            }
        },
    };
    ok.then_some(RateLimitPolicy {
        quotas,
        distinct_patients,
    })
}

fn quota(
    r: &mut Reader<'_>,
    node: &Node,
    key: &str,
    routes: &[Arc<str>],
    ids: &mut Vec<String>,
) -> Option<QuotaSpec> {
    let m = r.map(node, key, QUOTA_KEYS)?;
    let errors_before = r.diags.0.len();
    let id = r.required(&m, key, "id").and_then(|n| {
        let k = join(key, "id");
        let id = r.string(n, &k)?;
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            r.error(
                n.mark,
                &k,
                format!("invalid quota id `{id}`: use up to 64 letters, digits, `_`, `.` and `-`"),
            );
            return None;
        }
        if id == DISTINCT_PATIENTS_ID {
            r.error(
                n.mark,
                &k,
                format!("`{DISTINCT_PATIENTS_ID}` is reserved for the distinct-patients guard"),
            );
            return None;
        }
        if ids.iter().any(|seen| seen == id) {
            r.error(n.mark, &k, format!("duplicate quota id `{id}`"));
            return None;
        }
        ids.push(id.to_owned());
        Some(id)
    });
    if let Some(n) = m.get("description") {
        r.string(n, &join(key, "description"));
    }
    let kind = r
        .required(&m, key, "key")
        .and_then(|n| key_kind(r, n, &join(key, "key"), true));
    let rate = r.required(&m, key, "rate").and_then(|n| {
        let k = join(key, "rate");
        let s = r.string(n, &k)?;
        parse_rate(s).map_err(|e| r.error(n.mark, &k, e)).ok()
    });
    let burst = match m.get("burst") {
        None => Some(None),
        Some(n) => {
            let k = join(key, "burst");
            r.u64(n, &k).and_then(|b| {
                if (1..=MAX_COUNT).contains(&b) {
                    Some(Some(b as u32))
                } else {
                    r.error(n.mark, &k, format!("`burst` must be from 1 to {MAX_COUNT}"));
                    None
                }
            })
        }
    };
    let quota_routes = match m.get("routes") {
        None => Some(None),
        Some(n) => {
            let k = join(key, "routes");
            r.strings(n, &k).and_then(|items| {
                if items.is_empty() {
                    r.error(
                        n.mark,
                        &k,
                        "list at least one route id (or leave `routes` out for every route)",
                    );
                    return None;
                }
                let mut out: Vec<Arc<str>> = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, (s, item)) in items.iter().enumerate() {
                    match routes.iter().find(|id| &***id == *s) {
                        Some(id) if out.contains(id) => {
                            r.error(
                                item.mark,
                                &index(&k, i),
                                format!("route `{s}` is listed twice"),
                            );
                            ok = false;
                        }
                        Some(id) => out.push(id.clone()),
                        None => {
                            r.error(
                                item.mark,
                                &index(&k, i),
                                format!("no route has the id `{s}`"),
                            );
                            ok = false;
                        }
                    }
                }
                ok.then_some(Some(out))
            })
        }
    };
    let interactions = match m.get("interactions") {
        None => Some(None),
        Some(n) => {
            let k = join(key, "interactions");
            r.strings(n, &k).and_then(|items| {
                if items.is_empty() {
                    r.error(
                        n.mark,
                        &k,
                        "list at least one interaction (or leave `interactions` out for all)",
                    );
                    return None;
                }
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, (s, item)) in items.iter().enumerate() {
                    match interaction(s) {
                        Some(x) if out.contains(&x) => {
                            r.error(item.mark, &index(&k, i), format!("`{s}` is listed twice"));
                            ok = false;
                        }
                        Some(x) => out.push(x),
                        None => {
                            r.error(item.mark, &index(&k, i), unknown_interaction(s));
                            ok = false;
                        }
                    }
                }
                ok.then_some(Some(out))
            })
        }
    };
    let cost = match m.get("cost") {
        None => Some(Costs::ONE),
        Some(n) => costs(r, n, &join(key, "cost")),
    };
    if r.diags.0[errors_before..]
        .iter()
        .any(|d| d.severity == crate::config::Severity::Error)
    {
        return None;
    }
    let (id, kind, (count, period), burst, cost) = (id?, kind?, rate?, burst?, cost?);
    let burst = burst.unwrap_or(count);
    // GCRA admits a request costing n only if n units fit in the burst; a bigger cost could
    // never be served.
    if cost.max() > burst {
        r.error(
            m.key_mark("cost").unwrap_or(m.mark),
            &join(key, "cost"),
            format!(
                "a cost of {} exceeds the burst of {burst}: such requests could never be admitted",
                cost.max()
            ),
        );
        return None;
    }
    Some(QuotaSpec {
        id: Arc::from(id),
        key: kind,
        count,
        period,
        burst,
        routes: quota_routes?,
        interactions: interactions?,
        cost,
    })
}

fn key_kind(r: &mut Reader<'_>, n: &Node, k: &str, address: bool) -> Option<KeyKind> {
    match r.string(n, k)? {
        "client" => Some(KeyKind::Client),
        "subject" => Some(KeyKind::Subject),
        "address" if address => Some(KeyKind::Address),
        other => {
            let expected = if address {
                "`client`, `subject` or `address`"
            } else {
                "`client` or `subject`"
            };
            r.error(
                n.mark,
                k,
                format!("unknown key `{other}`; expected {expected}"),
            );
            None
        }
    }
}

fn interaction(s: &str) -> Option<Interaction> {
    Interaction::ALL.into_iter().find(|i| i.as_str() == s)
}

fn unknown_interaction(s: &str) -> String {
    let names: Vec<&str> = Interaction::ALL.iter().map(|i| i.as_str()).collect();
    format!(
        "unknown interaction `{s}`; expected one of: {}",
        names.join(", ")
    )
}

fn costs(r: &mut Reader<'_>, node: &Node, key: &str) -> Option<Costs> {
    let names: Vec<&str> = Interaction::ALL.iter().map(|i| i.as_str()).collect();
    let m = r.map(node, key, &names)?;
    let mut out = Costs::ONE;
    let mut ok = true;
    for i in Interaction::ALL {
        let Some(n) = m.get(i.as_str()) else { continue };
        let k = join(key, i.as_str());
        match r.u64(n, &k) {
            Some(c) if c <= MAX_COUNT => out.0[i as usize] = c as u32,
            Some(_) => {
                r.error(n.mark, &k, format!("a cost can be at most {MAX_COUNT}"));
                ok = false;
            }
            None => ok = false,
        }
    }
    // Reported by `Reader::map` already; nothing more to add for unknown names.
    ok.then_some(out)
}

fn guard(r: &mut Reader<'_>, node: &Node) -> Option<GuardSpec> {
    const K: &str = "distinct_patients";
    let m = r.map(node, K, GUARD_KEYS)?;
    let kind = match m.get("key") {
        None => Some(KeyKind::Client),
        Some(n) => key_kind(r, n, &join(K, "key"), false),
    };
    let limit = r.required(&m, K, "limit").and_then(|n| {
        let k = join(K, "limit");
        let v = r.u64(n, &k)?;
        if (1..=MAX_PATIENT_LIMIT).contains(&v) {
            Some(v as u32)
        } else {
            r.error(
                n.mark,
                &k,
                format!("`limit` must be from 1 to {MAX_PATIENT_LIMIT}"),
            );
            None
        }
    });
    let window = r.required(&m, K, "window").and_then(|n| {
        let k = join(K, "window");
        let d = r.duration(n, &k)?;
        if d < Duration::from_secs(1) || d > MAX_PERIOD {
            r.error(n.mark, &k, "`window` must be from 1s to 168h");
            return None;
        }
        Some(d)
    });
    let action = match m.get("action") {
        None => Some(GuardAction::Deny),
        Some(n) => {
            let k = join(K, "action");
            match r.string(n, &k)? {
                "deny" => Some(GuardAction::Deny),
                "alert" => Some(GuardAction::Alert),
                other => {
                    r.error(
                        n.mark,
                        &k,
                        format!("unknown action `{other}`; expected `deny` or `alert`"),
                    );
                    None
                }
            }
        }
    };
    Some(GuardSpec {
        key: kind?,
        limit: limit?,
        window: window?,
        action: action?,
    })
}

/// Reads the configuration's optional `rate_limit:` section; its defaults when absent.
pub(crate) fn read_config(r: &mut Reader<'_>, node: Option<&Node>) -> Option<RateLimitConfig> {
    const K: &str = "rate_limit";
    let defaults = RateLimitConfig::default();
    let Some(node) = node else {
        return Some(defaults);
    };
    let m = r.map(node, K, CONFIG_KEYS)?;
    let headers_on_allowed = match m.get("headers_on_allowed") {
        None => Some(defaults.headers_on_allowed),
        Some(n) => r.bool(n, &join(K, "headers_on_allowed")),
    };
    let max_keys = match m.get("max_keys") {
        None => Some(defaults.max_keys),
        Some(n) => {
            let k = join(K, "max_keys");
            r.u64(n, &k).and_then(|v| {
                if (1024..=1_000_000_000).contains(&v) {
                    Some(v as usize)
                } else {
                    r.error(n.mark, &k, "`max_keys` must be from 1024 to 1000000000");
                    None
                }
            })
        }
    };
    let prune_interval = match m.get("prune_interval") {
        None => Some(defaults.prune_interval),
        Some(n) => positive_duration(r, n, &join(K, "prune_interval")),
    };
    let redis = match m.get("redis") {
        None => Some(None),
        Some(n) => redis(r, n).map(Some),
    };
    Some(RateLimitConfig {
        headers_on_allowed: headers_on_allowed?,
        max_keys: max_keys?,
        prune_interval: prune_interval?,
        redis: redis?,
    })
}

fn positive_duration(r: &mut Reader<'_>, n: &Node, k: &str) -> Option<Duration> {
    let d = r.duration(n, k)?;
    if d.is_zero() {
        let name = k.rsplit('.').next().unwrap_or(k);
        r.error(n.mark, k, format!("`{name}` must be greater than zero"));
        return None;
    }
    Some(d)
}

fn redis(r: &mut Reader<'_>, node: &Node) -> Option<RedisConfig> {
    const K: &str = "rate_limit.redis";
    let m = r.map(node, K, REDIS_KEYS)?;
    let url = r.required(&m, K, "url").and_then(|n| {
        let k = join(K, "url");
        let s = r.string(n, &k)?;
        if s.starts_with("rediss://") {
            r.error(
                n.mark,
                &k,
                "TLS to Redis (`rediss://`) is not supported; reach Redis over a private network or a local TLS tunnel",
            );
            return None;
        }
        match redis::parse_redis_url(s) {
            Some(u) if u.scheme() == "redis" && u.host_str().is_some_and(|h| !h.is_empty()) => {
                Some(s.to_owned())
            }
            _ => {
                r.error(
                    n.mark,
                    &k,
                    format!("invalid Redis URL `{s}`; expected `redis://[user:password@]host[:port][/db]`"),
                );
                None
            }
        }
    });
    let key_prefix = match m.get("key_prefix") {
        None => Some("fhirwall:".to_owned()),
        Some(n) => {
            let k = join(K, "key_prefix");
            r.string(n, &k).and_then(|s| {
                if s.len() > 64 || s.bytes().any(|b| !b.is_ascii_graphic()) {
                    r.error(
                        n.mark,
                        &k,
                        "the key prefix must be at most 64 printable ASCII characters without spaces",
                    );
                    None
                } else {
                    Some(s.to_owned())
                }
            })
        }
    };
    let timeout = match m.get("timeout") {
        None => Some(Duration::from_millis(50)),
        Some(n) => positive_duration(r, n, &join(K, "timeout")),
    };
    let retry_interval = match m.get("retry_interval") {
        None => Some(Duration::from_secs(1)),
        Some(n) => positive_duration(r, n, &join(K, "retry_interval")),
    };
    // Required: what each instance may admit while Redis is down is a decision the operator
    // makes, never a silent default (and never "unlimited").
    let local_share = r.required(&m, K, "local_share").and_then(|n| {
        let k = join(K, "local_share");
        let parsed = match &n.kind {
            Kind::Scalar { value, plain: true } => value.parse::<f64>().ok(),
            _ => None,
        };
        match parsed {
            Some(v) if v > 0.0 && v <= 1.0 => Some(v),
            _ => {
                r.error(
                    n.mark,
                    &k,
                    "`local_share` must be a number greater than 0 and at most 1 (e.g. `0.5` for two instances)",
                );
                None
            }
        }
    });
    Some(RedisConfig {
        url: url?,
        key_prefix: key_prefix?,
        timeout: timeout?,
        local_share: local_share?,
        retry_interval: retry_interval?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;
    use std::path::Path;

    fn policy(src: &str) -> Result<RateLimitPolicy, Vec<String>> {
        let root = yaml::parse(src, Path::new("p.yaml")).expect("yaml");
        let mut r = Reader::new(Path::new("p.yaml"));
        let top = r
            .map(&root, "", &["quotas", "distinct_patients"])
            .expect("map");
        let routes: Vec<Arc<str>> = vec!["patient-read".into(), "export".into()];
        let out = read_policy(&mut r, &top, &routes);
        if r.has_errors() {
            return Err(r
                .diags
                .0
                .iter()
                .map(|d| format!("{}:{} {}: {}", d.line, d.col, d.key, d.message))
                .collect());
        }
        Ok(out.expect("no errors, so a value"))
    }

    #[test]
    fn rates_are_a_count_per_whole_seconds_period() {
        assert_eq!(parse_rate("100/1m"), Ok((100, Duration::from_secs(60))));
        assert_eq!(parse_rate("5/1s"), Ok((5, Duration::from_secs(1))));
        assert_eq!(
            parse_rate("1000/24h"),
            Ok((1000, Duration::from_secs(86_400)))
        );
        for bad in [
            "100", "0/1m", "x/1m", "10/1", "10/500ms", "10/0s", "10/200h", "-1/1s",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_quota_is_read_with_its_defaults_filled_in() {
        let p = policy(
            "quotas:\n  - id: per-client\n    key: client\n    rate: 100/1m\n  - id: exports\n    key: subject\n    rate: 2/1h\n    burst: 1\n    routes: [export]\n    interactions: [operation]\n    cost: { operation: 1, search: 0 }\ndistinct_patients: { limit: 500, window: 1h, action: alert }\n",
        )
        .unwrap();
        assert_eq!(p.quotas.len(), 2);
        let q = &p.quotas[0];
        assert_eq!(
            (&*q.id, q.key, q.count, q.period, q.burst),
            (
                "per-client",
                KeyKind::Client,
                100,
                Duration::from_secs(60),
                100
            )
        );
        assert!(q.routes.is_none() && q.interactions.is_none());
        let e = &p.quotas[1];
        assert_eq!(e.burst, 1);
        assert_eq!(e.routes.as_deref(), Some(&[Arc::from("export")][..]));
        assert_eq!(
            e.interactions.as_deref(),
            Some(&[Interaction::Operation][..])
        );
        assert_eq!(e.cost.of(Interaction::Search), 0);
        assert_eq!(e.cost.of(Interaction::Read), 1);
        assert!(e.applies("export", Interaction::Operation));
        assert!(!e.applies("export", Interaction::Read));
        assert!(!e.applies("patient-read", Interaction::Operation));
        assert_eq!(
            p.distinct_patients,
            Some(GuardSpec {
                key: KeyKind::Client,
                limit: 500,
                window: Duration::from_secs(3600),
                action: GuardAction::Alert
            })
        );
    }

    #[test]
    fn every_quota_problem_is_reported_with_its_position() {
        let errors = policy(
            "quotas:\n  - id: a\n    key: user\n    rate: 10\n  - id: a\n    key: client\n    rate: 1/1s\n    routes: [nope]\n    interactions: [browse]\n  - id: distinct_patients\n    key: address\n    rate: 1/1s\n  - id: b\n    key: client\n    rate: 2/1s\n    cost: { create: 5 }\ndistinct_patients: { key: address, window: 0s }\n",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "3:10 quotas[0].key: unknown key `user`; expected `client`, `subject` or `address`",
                "4:11 quotas[0].rate: invalid rate `10`; expected `<count>/<period>`, e.g. `100/1m`",
                "5:9 quotas[1].id: duplicate quota id `a`",
                "8:14 quotas[1].routes[0]: no route has the id `nope`",
                "9:20 quotas[1].interactions[0]: unknown interaction `browse`; expected one of: read, search, create, update, delete, operation",
                "10:9 quotas[2].id: `distinct_patients` is reserved for the distinct-patients guard",
                "16:5 quotas[3].cost: a cost of 5 exceeds the burst of 2: such requests could never be admitted",
                "17:27 distinct_patients.key: unknown key `address`; expected `client` or `subject`",
                "17:22 distinct_patients.limit: missing required key `limit`",
                "17:44 distinct_patients.window: `window` must be from 1s to 168h",
            ]
        );
    }

    fn config(src: &str) -> Result<RateLimitConfig, Vec<String>> {
        let root = yaml::parse(src, Path::new("c.yaml")).expect("yaml");
        let mut r = Reader::new(Path::new("c.yaml"));
        let top = r.map(&root, "", &["rate_limit"]).expect("map");
        let out = read_config(&mut r, top.get("rate_limit"));
        if r.has_errors() {
            return Err(r
                .diags
                .0
                .iter()
                .map(|d| format!("{}: {}", d.key, d.message))
                .collect());
        }
        Ok(out.expect("value"))
    }

    #[test]
    fn the_config_section_defaults_to_local_limits() {
        assert_eq!(config("rate_limit: {}\n"), Ok(RateLimitConfig::default()));
        let mut r = Reader::new(Path::new("c.yaml"));
        assert_eq!(read_config(&mut r, None), Some(RateLimitConfig::default()));
        let c = config("rate_limit:\n  headers_on_allowed: true\n  redis: { url: 'redis://127.0.0.1:6380/2', local_share: 0.5, timeout: 20ms }\n").unwrap();
        assert!(c.headers_on_allowed);
        let redis = c.redis.unwrap();
        assert_eq!(redis.url, "redis://127.0.0.1:6380/2");
        assert_eq!(redis.key_prefix, "fhirwall:");
        assert_eq!(redis.timeout, Duration::from_millis(20));
        assert_eq!(redis.local_share, 0.5);
    }

    #[test]
    fn redis_needs_an_explicit_local_share_and_a_plain_redis_url() {
        assert_eq!(
            config("rate_limit: { redis: { url: 'redis://h' } }\n").unwrap_err(),
            ["rate_limit.redis.local_share: missing required key `local_share`"]
        );
        let errors =
            config("rate_limit: { redis: { url: 'http://h', local_share: 0 }, max_keys: 5 }\n")
                .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("rate_limit.max_keys"), "{errors:?}");
        assert!(errors[1].contains("invalid Redis URL"), "{errors:?}");
        assert!(
            errors[2].contains("greater than 0 and at most 1"),
            "{errors:?}"
        );
        assert!(
            config("rate_limit: { redis: { url: 'rediss://h', local_share: 1 } }\n").unwrap_err()
                [0]
            .contains("not supported")
        );
    }
}
