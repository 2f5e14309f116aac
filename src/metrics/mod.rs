//! Prometheus metrics: every collector the gateway exports, registered once.
//!
//! Labels are bounded by configuration (route ids, issuer names, reason codes), never
//! request data: no ids, tokens or paths ever become a label value.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Latency buckets (seconds) from 100 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Every metric fhirwall exports. Cheap to share (`Arc<Metrics>`); collectors are lock-free
/// atomics once a label set has been resolved.
pub struct Metrics {
    registry: Registry,
    /// `fhirwall_requests_total{route,method,decision,status_class}`.
    pub requests: IntCounterVec,
    /// `fhirwall_denials_total{reason}`.
    pub denials: IntCounterVec,
    /// `fhirwall_request_duration_seconds{route,decision}`: whole request, as the client saw it.
    pub request_duration: HistogramVec,
    /// `fhirwall_upstream_duration_seconds{route}`: from sending upstream to the end of the response.
    pub upstream_duration: HistogramVec,
    /// `fhirwall_upstream_errors_total{kind}`: `connect`, `timeout`, `other`.
    pub upstream_errors: IntCounterVec,
    /// `fhirwall_token_cache_hits_total`.
    pub token_cache_hits: IntCounter,
    /// `fhirwall_token_cache_misses_total`.
    pub token_cache_misses: IntCounter,
    /// `fhirwall_token_validations_total{result}`: `ok` or an auth error code.
    pub token_validations: IntCounterVec,
    /// `fhirwall_token_invalid_scopes_total`: scope values in valid tokens that were ignored.
    pub invalid_scopes: IntCounter,
    /// `fhirwall_jwks_refreshes_total{issuer,result}`: `ok` or `error`.
    pub jwks_refreshes: IntCounterVec,
    /// `fhirwall_jwks_keys{issuer}`: keys currently loaded.
    pub jwks_keys: IntGaugeVec,
    /// `fhirwall_token_cache_evictions_total`: entries dropped to keep the cache in bounds.
    pub token_cache_evictions: IntCounter,
    /// `fhirwall_introspection_requests_total{issuer,result}`: `active`, `inactive`, `error`.
    pub introspection_requests: IntCounterVec,
    /// `fhirwall_introspection_duration_seconds{issuer}`: one call to the endpoint.
    pub introspection_duration: HistogramVec,
    /// `fhirwall_introspection_negative_hits_total`: opaque tokens refused from the
    /// negative cache without asking the provider.
    pub introspection_negative_hits: IntCounter,
    /// `fhirwall_introspection_circuit_rejections_total{issuer}`: calls not made because
    /// the circuit was open.
    pub introspection_circuit_rejections: IntCounterVec,
    /// `fhirwall_introspection_circuit_state{issuer}`: 0 closed, 1 open, 2 half-open.
    pub introspection_circuit_state: IntGaugeVec,
    /// `fhirwall_revocations_total{kind,source}`: revocations applied, by what they name
    /// (`token`, `jti`, `client`, `subject`) and where they came from (`admin`, `redis`).
    pub revocations: IntCounterVec,
    /// `fhirwall_revocation_list_entries`: entries in the revocation list.
    pub revocation_entries: IntGauge,
    /// `fhirwall_revocation_pubsub_published_total`: revocations sent to the other instances.
    pub revocation_pubsub_published: IntCounter,
    /// `fhirwall_revocation_pubsub_received_total{via}`: revocations from other instances
    /// applied here, from a pub/sub `message` or from the `resync` after (re)connecting.
    pub revocation_pubsub_received: IntCounterVec,
    /// `fhirwall_revocation_pubsub_errors_total{op}`: failures to `publish`, to stay
    /// `subscribed`, or to read a `message`.
    pub revocation_pubsub_errors: IntCounterVec,
    /// `fhirwall_revocation_pubsub_connected`: 1 while subscribed to the revocation channel.
    pub revocation_pubsub_connected: IntGauge,
    /// `fhirwall_audit_records_total`: records written.
    pub audit_records: IntCounter,
    /// `fhirwall_audit_write_errors_total`.
    pub audit_write_errors: IntCounter,
    /// `fhirwall_audit_dropped_total`: records that could not be queued.
    pub audit_dropped: IntCounter,
    /// `fhirwall_audit_queue_depth`.
    pub audit_queue_depth: IntGauge,
    /// `fhirwall_policy_info{version}`: 1 for the active policy; the previous version's
    /// series is removed when a reload swaps it.
    pub policy_info: IntGaugeVec,
    /// `fhirwall_shadow_policy_info{version}`: 1 for the shadow policy, when one is configured.
    pub shadow_policy_info: IntGaugeVec,
    /// `fhirwall_reloads_total{result}`: reload attempts, `success` or `failure`.
    pub reloads: IntCounterVec,
    /// `fhirwall_config_last_reload_successful`: 0 while the files on disk are refused (the
    /// last good version keeps serving), else 1.
    pub config_last_reload_successful: IntGauge,
    /// `fhirwall_last_reload_success_timestamp_seconds`: when the running configuration was
    /// applied (startup counts), Unix seconds.
    pub last_reload_success_timestamp: Gauge,
    /// `fhirwall_shadow_evaluations_total`: requests the shadow policy was compared on.
    pub shadow_evaluations: IntCounter,
    /// `fhirwall_shadow_decisions_total{active,shadow,rule}`: requests on which the shadow
    /// policy decided differently, by the active and the shadow outcome (`allow` or the deny
    /// reason code) and the shadow decision's route id.
    pub shadow_decisions: IntCounterVec,
    /// `fhirwall_ready`: 1 when `/readyz` answers 200.
    pub ready: IntGauge,
    /// `fhirwall_build_info{version}`.
    pub build_info: IntGaugeVec,
    /// `fhirwall_rate_limited_total{quota}`: requests refused by a quota (or
    /// `distinct_patients`).
    pub rate_limited: IntCounterVec,
    /// `fhirwall_distinct_patients_exceeded_total{action}`: requests over the distinct-patients
    /// limit, by `deny` or `alert`.
    pub distinct_patients_exceeded: IntCounterVec,
    /// `fhirwall_ratelimit_mode{mode}`: 1 for the mode in force (`local`, `shared` through
    /// Redis, or `fallback` to local shares while Redis is unreachable).
    pub ratelimit_mode: IntGaugeVec,
    /// `fhirwall_ratelimit_redis_errors_total`: shared checks answered locally after a Redis
    /// failure or timeout.
    pub ratelimit_redis_errors: IntCounter,
    /// `fhirwall_ratelimit_keys{quota}`: keys held in memory by a quota (after the last prune).
    pub ratelimit_keys: IntGaugeVec,
    /// `fhirwall_ratelimit_evictions_total{quota}`: keys evicted because a quota's store was full.
    pub ratelimit_evictions: IntCounterVec,
}

/// Metric names, one place for docs and dashboards.
pub mod names {
    /// Requests by route, method, decision and status class.
    pub const REQUESTS: &str = "fhirwall_requests_total";
    /// Denials by reason.
    pub const DENIALS: &str = "fhirwall_denials_total";
    /// Whole-request latency.
    pub const REQUEST_DURATION: &str = "fhirwall_request_duration_seconds";
    /// Upstream latency.
    pub const UPSTREAM_DURATION: &str = "fhirwall_upstream_duration_seconds";
    /// Upstream errors by kind.
    pub const UPSTREAM_ERRORS: &str = "fhirwall_upstream_errors_total";
    /// Token cache hits.
    pub const TOKEN_CACHE_HITS: &str = "fhirwall_token_cache_hits_total";
    /// Token cache misses.
    pub const TOKEN_CACHE_MISSES: &str = "fhirwall_token_cache_misses_total";
    /// Token validations by result.
    pub const TOKEN_VALIDATIONS: &str = "fhirwall_token_validations_total";
    /// Ignored invalid scope values.
    pub const INVALID_SCOPES: &str = "fhirwall_token_invalid_scopes_total";
    /// JWKS fetches by issuer and result.
    pub const JWKS_REFRESHES: &str = "fhirwall_jwks_refreshes_total";
    /// Keys loaded per issuer.
    pub const JWKS_KEYS: &str = "fhirwall_jwks_keys";
    /// Token cache evictions for capacity.
    pub const TOKEN_CACHE_EVICTIONS: &str = "fhirwall_token_cache_evictions_total";
    /// Introspection calls by issuer and result.
    pub const INTROSPECTION_REQUESTS: &str = "fhirwall_introspection_requests_total";
    /// Introspection call latency.
    pub const INTROSPECTION_DURATION: &str = "fhirwall_introspection_duration_seconds";
    /// Opaque tokens refused from the negative cache.
    pub const INTROSPECTION_NEGATIVE_HITS: &str = "fhirwall_introspection_negative_hits_total";
    /// Calls refused by an open circuit.
    pub const INTROSPECTION_CIRCUIT_REJECTIONS: &str =
        "fhirwall_introspection_circuit_rejections_total";
    /// Circuit state per issuer.
    pub const INTROSPECTION_CIRCUIT_STATE: &str = "fhirwall_introspection_circuit_state";
    /// Revocations applied.
    pub const REVOCATIONS: &str = "fhirwall_revocations_total";
    /// Revocation list size.
    pub const REVOCATION_ENTRIES: &str = "fhirwall_revocation_list_entries";
    /// Revocations published to the other instances.
    pub const REVOCATION_PUBSUB_PUBLISHED: &str = "fhirwall_revocation_pubsub_published_total";
    /// Revocations received from the other instances, by way.
    pub const REVOCATION_PUBSUB_RECEIVED: &str = "fhirwall_revocation_pubsub_received_total";
    /// Revocation propagation failures, by operation.
    pub const REVOCATION_PUBSUB_ERRORS: &str = "fhirwall_revocation_pubsub_errors_total";
    /// Whether this instance is subscribed to the revocation channel.
    pub const REVOCATION_PUBSUB_CONNECTED: &str = "fhirwall_revocation_pubsub_connected";
    /// Audit records written.
    pub const AUDIT_RECORDS: &str = "fhirwall_audit_records_total";
    /// Audit write errors.
    pub const AUDIT_WRITE_ERRORS: &str = "fhirwall_audit_write_errors_total";
    /// Audit records not queued.
    pub const AUDIT_DROPPED: &str = "fhirwall_audit_dropped_total";
    /// Audit queue depth.
    pub const AUDIT_QUEUE_DEPTH: &str = "fhirwall_audit_queue_depth";
    /// Active policy version.
    pub const POLICY_INFO: &str = "fhirwall_policy_info";
    /// Shadow policy version.
    pub const SHADOW_POLICY_INFO: &str = "fhirwall_shadow_policy_info";
    /// Reload attempts by result.
    pub const RELOADS: &str = "fhirwall_reloads_total";
    /// Whether the last reload attempt succeeded.
    pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "fhirwall_config_last_reload_successful";
    /// When the running configuration was applied.
    pub const LAST_RELOAD_SUCCESS_TIMESTAMP: &str =
        "fhirwall_last_reload_success_timestamp_seconds";
    /// Requests compared against the shadow policy.
    pub const SHADOW_EVALUATIONS: &str = "fhirwall_shadow_evaluations_total";
    /// Requests the shadow policy decided differently.
    pub const SHADOW_DECISIONS: &str = "fhirwall_shadow_decisions_total";
    /// Readiness.
    pub const READY: &str = "fhirwall_ready";
    /// Build information.
    pub const BUILD_INFO: &str = "fhirwall_build_info";
    /// Rate-limit refusals by quota.
    pub const RATE_LIMITED: &str = "fhirwall_rate_limited_total";
    /// Distinct-patients limit exceeded, by action.
    pub const DISTINCT_PATIENTS_EXCEEDED: &str = "fhirwall_distinct_patients_exceeded_total";
    /// Rate-limit mode in force.
    pub const RATELIMIT_MODE: &str = "fhirwall_ratelimit_mode";
    /// Redis failures of shared rate-limit checks.
    pub const RATELIMIT_REDIS_ERRORS: &str = "fhirwall_ratelimit_redis_errors_total";
    /// Keys held per quota.
    pub const RATELIMIT_KEYS: &str = "fhirwall_ratelimit_keys";
    /// Keys evicted per quota.
    pub const RATELIMIT_EVICTIONS: &str = "fhirwall_ratelimit_evictions_total";
}

// === impl Metrics ===

impl Metrics {
    /// Creates and registers every collector in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        use names::*;
        let m = Metrics {
            requests: counter_vec(
                REQUESTS,
                "Requests handled, by route id, method, decision and status class.",
                &["route", "method", "decision", "status_class"],
            ),
            denials: counter_vec(DENIALS, "Requests refused, by reason.", &["reason"]),
            request_duration: histogram_vec(
                REQUEST_DURATION,
                "Time from request start to the end of the response, in seconds.",
                &["route", "decision"],
            ),
            upstream_duration: histogram_vec(
                UPSTREAM_DURATION,
                "Time spent waiting on the upstream, in seconds.",
                &["route"],
            ),
            upstream_errors: counter_vec(
                UPSTREAM_ERRORS,
                "Upstream failures answered with 502/504, by kind.",
                &["kind"],
            ),
            token_cache_hits: counter(TOKEN_CACHE_HITS, "Bearer tokens found in the verified-token cache."),
            token_cache_misses: counter(TOKEN_CACHE_MISSES, "Bearer tokens that had to be verified."),
            token_validations: counter_vec(
                TOKEN_VALIDATIONS,
                "Token verifications (cache misses), by result.",
                &["result"],
            ),
            invalid_scopes: counter(
                INVALID_SCOPES,
                "Scope values in otherwise valid tokens that were ignored as invalid.",
            ),
            jwks_refreshes: counter_vec(
                JWKS_REFRESHES,
                "JWKS fetches, by issuer and result.",
                &["issuer", "result"],
            ),
            jwks_keys: gauge_vec(JWKS_KEYS, "Signing keys currently loaded, by issuer.", &["issuer"]),
            token_cache_evictions: counter(
                TOKEN_CACHE_EVICTIONS,
                "Verified-token cache entries evicted to stay within max_entries.",
            ),
            introspection_requests: counter_vec(
                INTROSPECTION_REQUESTS,
                "RFC 7662 introspection calls, by issuer and result (active, inactive, error).",
                &["issuer", "result"],
            ),
            introspection_duration: histogram_vec(
                INTROSPECTION_DURATION,
                "Time of one introspection call, in seconds.",
                &["issuer"],
            ),
            introspection_negative_hits: counter(
                INTROSPECTION_NEGATIVE_HITS,
                "Opaque tokens refused from the negative cache, without asking the provider.",
            ),
            introspection_circuit_rejections: counter_vec(
                INTROSPECTION_CIRCUIT_REJECTIONS,
                "Introspection calls not made because the issuer's circuit was open.",
                &["issuer"],
            ),
            introspection_circuit_state: gauge_vec(
                INTROSPECTION_CIRCUIT_STATE,
                "Introspection circuit breaker state: 0 closed, 1 open, 2 half-open.",
                &["issuer"],
            ),
            revocations: counter_vec(
                REVOCATIONS,
                "Revocations applied, by kind (token, jti, client, subject) and source (admin, redis).",
                &["kind", "source"],
            ),
            revocation_entries: gauge(REVOCATION_ENTRIES, "Entries in the revocation list."),
            revocation_pubsub_published: counter(
                REVOCATION_PUBSUB_PUBLISHED,
                "Revocations published to the other instances through Redis.",
            ),
            revocation_pubsub_received: counter_vec(
                REVOCATION_PUBSUB_RECEIVED,
                "Revocations from other instances applied here, by way (message, resync).",
                &["via"],
            ),
            revocation_pubsub_errors: counter_vec(
                REVOCATION_PUBSUB_ERRORS,
                "Revocation propagation failures, by operation (publish, subscribe, message).",
                &["op"],
            ),
            revocation_pubsub_connected: gauge(
                REVOCATION_PUBSUB_CONNECTED,
                "1 while subscribed to the revocation channel in Redis.",
            ),
            audit_records: counter(AUDIT_RECORDS, "Audit records written to the sink."),
            audit_write_errors: counter(AUDIT_WRITE_ERRORS, "Failed writes to the audit sink."),
            audit_dropped: counter(
                AUDIT_DROPPED,
                "Audit records that could not be queued (the request was refused or already answered).",
            ),
            audit_queue_depth: gauge(AUDIT_QUEUE_DEPTH, "Audit records waiting to be written."),
            policy_info: gauge_vec(POLICY_INFO, "The active policy version (content hash).", &["version"]),
            shadow_policy_info: gauge_vec(
                SHADOW_POLICY_INFO,
                "The shadow policy version (content hash), when one is configured.",
                &["version"],
            ),
            reloads: counter_vec(
                RELOADS,
                "Configuration and policy reload attempts, by result (success, failure).",
                &["result"],
            ),
            config_last_reload_successful: gauge(
                CONFIG_LAST_RELOAD_SUCCESSFUL,
                "1 when the last reload attempt succeeded (or none was made), 0 while the files are refused.",
            ),
            last_reload_success_timestamp: {
                let g = Gauge::new(
                    LAST_RELOAD_SUCCESS_TIMESTAMP,
                    "When the running configuration was applied (startup or reload), in Unix seconds.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            shadow_evaluations: counter(
                SHADOW_EVALUATIONS,
                "Requests whose decision was compared with the shadow policy's.",
            ),
            shadow_decisions: counter_vec(
                SHADOW_DECISIONS,
                "Requests the shadow policy decided differently, by active and shadow outcome (allow or deny reason) and shadow route id.",
                &["active", "shadow", "rule"],
            ),
            ready: gauge(READY, "1 when the gateway is ready to serve (policy and keys loaded)."),
            build_info: gauge_vec(BUILD_INFO, "Build information.", &["version"]),
            rate_limited: counter_vec(
                RATE_LIMITED,
                "Requests refused with 429, by quota id (`distinct_patients` for the guard).",
                &["quota"],
            ),
            distinct_patients_exceeded: counter_vec(
                DISTINCT_PATIENTS_EXCEEDED,
                "Requests over the distinct-patients limit, by action (deny or alert).",
                &["action"],
            ),
            ratelimit_mode: gauge_vec(
                RATELIMIT_MODE,
                "1 for the rate-limit mode in force: local, shared (Redis), or fallback (Redis unreachable).",
                &["mode"],
            ),
            ratelimit_redis_errors: counter(
                RATELIMIT_REDIS_ERRORS,
                "Shared rate-limit checks answered locally after a Redis error or timeout.",
            ),
            ratelimit_keys: gauge_vec(
                RATELIMIT_KEYS,
                "Keys held in memory per quota, after the last prune.",
                &["quota"],
            ),
            ratelimit_evictions: counter_vec(
                RATELIMIT_EVICTIONS,
                "Keys evicted because a quota's store reached rate_limit.max_keys.",
                &["quota"],
            ),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// The text exposition of every metric (`/metrics`).
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to a Vec cannot fail");
        buf
    }

    /// The registry (for tests and extra collectors).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `"2xx"`, `"4xx"`, ...; `"none"` when no response was sent.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// A bounded method label: standard methods as themselves, anything else `OTHER`.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
