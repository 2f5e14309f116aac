//! Configuration loader tests: the shipped examples, defaults, and exact diagnostics.

use std::fs;

use super::*;
use crate::config::Severity;

/// The repository root (for the shipped examples).
fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A config file in a fresh temp dir, next to a copy of the shipped FHIR policy at
/// `policy.yaml`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        fs::copy(
            repo("policies/fhir-r4.yaml"),
            dir.path().join("policy.yaml"),
        )
        .unwrap();
        Fixture { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("fhirwall.yaml")
    }

    fn load(&self, src: &str) -> Result<(Config, Diagnostics), Diagnostics> {
        fs::write(self.path(), src).unwrap();
        load_with_warnings(&self.path())
    }

    fn errors(&self, src: &str) -> Vec<String> {
        let d = self.load(src).map(|_| ()).expect_err("should not load");
        d.0.iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| {
                let file = d.file.file_name().unwrap().to_string_lossy();
                format!("{file}:{}:{} {} | {}", d.line, d.col, d.key, d.message)
            })
            .collect()
    }
}

const MINIMAL: &str = "\
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
policy: policy.yaml
upstream:
  url: http://127.0.0.1:8081
issuers:
  - issuer: https://idp.example.org
    audiences: [fhir]
";

#[test]
fn the_shipped_example_config_loads_with_its_policy() {
    let (c, warnings) =
        load_with_warnings(&repo("deploy/fhirwall.example.yaml")).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.listen, ["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.threads, 2);
    assert_eq!(c.policy_path, repo("deploy/../policies/fhir-r4.yaml"));
    assert_eq!(
        c.issuers[0].algorithms,
        [Algorithm::RS256, Algorithm::ES256]
    );
    // The shipped FHIR policy leaves everything under its base to the SMART engine.
    assert_eq!(c.policy.fhir().map(|f| f.base_path()), Some("/fhir"));
    // Only the policy's lint: reads and creates that a patient/ token is not confined on.
    assert!(warnings.0.iter().all(|w| w.severity == Severity::Warning));
    assert!(
        warnings.0.iter().all(|w| w.file.ends_with("fhir-r4.yaml")),
        "{warnings}"
    );
}

#[test]
fn the_shipped_policies_load_without_errors() {
    for p in ["policies/fhir-r4.yaml", "policies/legacy-api.yaml"] {
        let policy = Policy::load(&repo(p)).unwrap_or_else(|d| panic!("{d}"));
        assert!(!policy.route_ids().is_empty() || policy.fhir().is_some());
        assert!(policy.warnings().0.is_empty(), "{p}: {}", policy.warnings());
    }
    let legacy = Policy::load(&repo("policies/legacy-api.yaml")).unwrap();
    assert!(legacy.warnings().0.is_empty(), "{}", legacy.warnings());
}

#[test]
fn defaults_fill_every_optional_key() {
    let f = Fixture::new();
    let (c, _) = f.load(MINIMAL).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.realm, "fhirwall");
    assert!(c.threads >= 1);
    assert_eq!(c.source, f.path());
    assert_eq!(c.policy_path, f.dir.path().join("policy.yaml"));
    assert_eq!(
        c.upstream,
        UpstreamConfig {
            tls: false,
            host: "127.0.0.1".into(),
            port: 8081,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            forward_authorization: false,
            verify_tls: true,
            sni: "127.0.0.1".into(),
            ca: None,
            client_identity: None,
        }
    );
    assert_eq!(
        c.issuers,
        [IssuerConfig {
            issuer: "https://idp.example.org".into(),
            audiences: vec!["fhir".into()],
            jwks_uri: None,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: Duration::from_secs(30),
            jwks_refresh_interval: Duration::from_secs(300),
            jwks_min_refresh_interval: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            patient_claim: "patient".into(),
            introspection: None,
        }]
    );
    assert_eq!(
        c.token_cache,
        TokenCacheConfig {
            max_entries: 100_000,
            max_ttl: Duration::from_secs(300)
        }
    );
    assert_eq!(
        c.audit,
        AuditConfig {
            target: AuditTarget::Stdout,
            queue_capacity: 65_536,
            flush_interval: Duration::from_millis(100),
            allow_query_params: ["_count", "_sort", "_summary", "_elements", "_format"]
                .map(String::from)
                .to_vec(),
            durability: AuditDurability::Batched,
            rotate_bytes: None,
            rotate_interval: None,
            checkpoint: None,
            auditevent_path: None,
        }
    );
    assert_eq!(
        c.forwarding,
        ForwardingConfig {
            trust_forwarded_for: false
        }
    );
    assert_eq!(
        c.log,
        LogConfig {
            level: "info".into(),
            json: false
        }
    );
}

#[test]
fn explicit_values_are_read() {
    let f = Fixture::new();
    let src = "\
listen: ['127.0.0.1:8080', '[::1]:8080']
admin_listen: 127.0.0.1:9090
realm: my-fhir
threads: 4
policy: policy.yaml
upstream:
  url: https://[::1]:8443/
  connect_timeout: 250ms
  total_timeout: 2m
  forward_authorization: true
  sni: fhir.internal
issuers:
  - issuer: http://localhost:8000
    audiences: [a, b]
    jwks_uri: http://127.0.0.1:8000/jwks
    algorithms: [EdDSA, PS256]
    leeway: 5m
    patient_claim: patient_id
token_cache: { max_entries: 10, max_ttl: 1h }
audit: { path: audit/records.jsonl, queue_capacity: 8, flush_interval: 1s, allow_query_params: [] }
forwarding: { trust_forwarded_for: true }
log: { level: 'fhirwall=debug,info', format: json }
";
    let (c, warnings) = f.load(src).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.listen.len(), 2);
    assert_eq!(c.realm, "my-fhir");
    assert_eq!(c.threads, 4);
    assert!(c.upstream.tls);
    assert_eq!((c.upstream.host.as_str(), c.upstream.port), ("[::1]", 8443));
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.upstream.total_timeout, Duration::from_secs(120));
    assert_eq!(c.upstream.sni, "fhir.internal");
    assert!(c.upstream.forward_authorization);
    assert_eq!(
        c.issuers[0].algorithms,
        [Algorithm::EdDSA, Algorithm::PS256]
    );
    assert_eq!(c.issuers[0].leeway, Duration::from_secs(300));
    assert_eq!(c.issuers[0].patient_claim, "patient_id");
    assert_eq!(c.token_cache.max_ttl, Duration::from_secs(3600));
    assert_eq!(
        c.audit.target,
        AuditTarget::File(f.dir.path().join("audit/records.jsonl"))
    );
    assert!(c.audit.allow_query_params.is_empty());
    assert!(c.forwarding.trust_forwarded_for);
    assert!(c.log.json);
    // Loopback http issuers are fine; no configuration warnings.
    assert!(warnings.0.iter().all(|w| w.file.ends_with("policy.yaml")));
}

#[test]
fn the_default_sni_of_an_ipv6_upstream_has_no_brackets() {
    let f = Fixture::new();
    let src = MINIMAL.replace("http://127.0.0.1:8081", "https://[::1]");
    let (c, _) = f.load(&src).unwrap();
    assert_eq!((c.upstream.host.as_str(), c.upstream.port), ("[::1]", 443));
    assert_eq!(c.upstream.sni, "::1");
}

#[test]
fn every_configuration_error_is_reported_with_position_and_key() {
    let f = Fixture::new();
    let src = "\
listen: 127.0.0.1
admin_listen: 127.0.0.1:9090
realm: 'a\"b'
policy: policy.yaml
upstream:
  url: http://127.0.0.1:8081/fhir
  read_timeout: 30
  verfy_tls: false
issuers:
  - issuer: idp.example.org
    audiences: []
    algorithms: [RS256, HS256, none, XX1]
    leeway: 10m
token_cache: { max_entries: 0 }
log: { format: yaml }
";
    assert_eq!(
        f.errors(src),
        [
            "fhirwall.yaml:1:9 listen | invalid socket address `127.0.0.1`; expected an IP address and port, e.g. `127.0.0.1:8080` or `[::1]:8080`",
            "fhirwall.yaml:3:8 realm | the realm must be non-empty printable ASCII without `\"` or `\\`",
            "fhirwall.yaml:6:8 upstream.url | the upstream URL `http://127.0.0.1:8081/fhir` has a path, query or fragment; give only `scheme://host[:port]` (requests are forwarded with their own path; put a FHIR base path in the policy's `base_path`)",
            "fhirwall.yaml:7:17 upstream.read_timeout | expected a duration with a unit (`ms`, `s`, `m`, `h`), e.g. `30s`, found `30`",
            "fhirwall.yaml:8:3 upstream.verfy_tls | unknown key `verfy_tls`; did you mean `verify_tls`?",
            "fhirwall.yaml:10:13 issuers[0].issuer | invalid URL `idp.example.org`: expected an `http://` or `https://` URL",
            "fhirwall.yaml:11:16 issuers[0].audiences | list at least one accepted audience",
            "fhirwall.yaml:12:25 issuers[0].algorithms[1] | `HS256` is a shared-secret algorithm and is not accepted; use an asymmetric one (RS*, PS*, ES*, EdDSA)",
            "fhirwall.yaml:12:32 issuers[0].algorithms[2] | unsigned tokens (`none`) are never accepted",
            "fhirwall.yaml:12:38 issuers[0].algorithms[3] | unknown algorithm `XX1`; expected one of: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
            "fhirwall.yaml:13:13 issuers[0].leeway | `leeway` must be at most 5m",
            "fhirwall.yaml:14:29 token_cache.max_entries | `max_entries` must be greater than zero",
            "fhirwall.yaml:15:16 log.format | unknown log format `yaml`; expected `text` or `json`",
        ]
    );
}

#[test]
fn missing_required_keys_are_each_reported() {
    let f = Fixture::new();
    assert_eq!(
        f.errors("realm: x\n"),
        [
            "fhirwall.yaml:1:1 listen | missing required key `listen`",
            "fhirwall.yaml:1:1 admin_listen | missing required key `admin_listen`",
            "fhirwall.yaml:1:1 policy | missing required key `policy`",
            "fhirwall.yaml:1:1 upstream | missing required key `upstream`",
            "fhirwall.yaml:1:1 issuers | missing required key `issuers`",
        ]
    );
}

#[test]
fn an_unreadable_policy_is_an_error_at_the_policy_key() {
    let f = Fixture::new();
    let src = MINIMAL.replace("policy: policy.yaml", "policy: missing.yaml");
    let e = f.errors(&src);
    assert_eq!(e.len(), 1);
    let prefix = format!(
        "fhirwall.yaml:3:9 policy | cannot read the policy file `{}`: ",
        f.dir.path().join("missing.yaml").display()
    );
    assert!(e[0].starts_with(&prefix), "{e:?}");
}

#[test]
fn configuration_and_policy_errors_are_returned_together() {
    let f = Fixture::new();
    fs::write(
        f.dir.path().join("policy.yaml"),
        "version: 1\nroutes:\n  - id: a\n    methods: [GET]\n    path: /a\n",
    )
    .unwrap();
    let src = MINIMAL.replace(
        "admin_listen: 127.0.0.1:9090",
        "admin_listen: 127.0.0.1:8080",
    );
    assert_eq!(
        f.errors(&src),
        [
            "fhirwall.yaml:2:15 admin_listen | `127.0.0.1:8080` is also a proxy `listen` address",
            "policy.yaml:3:5 routes[0].scopes | missing required key `scopes` (required unless `public: true`)",
        ]
    );
}

#[test]
fn upstream_urls_are_validated() {
    let f = Fixture::new();
    for (url, msg) in [
        ("ftp://x", "invalid URL `ftp://x`: expected an `http://` or `https://` URL"),
        ("http://", "invalid URL `http://`: the host is missing"),
        ("http://u:p@host", "invalid URL `http://u:p@host`: credentials in the URL are not supported"),
        ("http://host:0", "invalid URL `http://host:0`: invalid port"),
        ("http://host:99999", "invalid URL `http://host:99999`: invalid port"),
        ("http://ho_st", "invalid URL `http://ho_st`: the host has characters a host name cannot have"),
        ("http://[::1", "invalid URL `http://[::1`: unterminated IPv6 address"),
        ("http://host?x=1", "the upstream URL `http://host?x=1` has a path, query or fragment; give only `scheme://host[:port]` (requests are forwarded with their own path; put a FHIR base path in the policy's `base_path`)"),
    ] {
        let src = MINIMAL.replace("http://127.0.0.1:8081", url);
        let e = f.errors(&src);
        assert_eq!(e, [format!("fhirwall.yaml:5:8 upstream.url | {msg}")], "{url}");
    }
    let (c, _) = f
        .load(&MINIMAL.replace("http://127.0.0.1:8081", "http://fhir.local/"))
        .unwrap();
    assert_eq!(
        (c.upstream.host.as_str(), c.upstream.port),
        ("fhir.local", 80)
    );
}

#[test]
fn risky_but_valid_settings_are_warnings() {
    let f = Fixture::new();
    let src = "\
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
policy: policy.yaml
upstream:
  url: https://fhir.internal
  verify_tls: false
issuers:
  - issuer: http://idp.example.org
    audiences: [fhir]
";
    let (_, warnings) = f.load(src).unwrap_or_else(|d| panic!("{d}"));
    let w: Vec<String> = warnings
        .0
        .iter()
        .filter(|w| w.file.ends_with("fhirwall.yaml"))
        .map(|d| format!("{}:{} {} | {}", d.line, d.col, d.key, d.message))
        .collect();
    assert_eq!(
        w,
        [
            "6:15 upstream.verify_tls | certificate verification of the upstream is disabled",
            "8:13 issuers[0].issuer | `http://idp.example.org` uses plain http to another host; keys and metadata fetched from it can be tampered with",
        ]
    );
}

#[test]
fn duplicate_issuers_and_addresses_are_errors() {
    let f = Fixture::new();
    let src = "\
listen: [127.0.0.1:8080, 127.0.0.1:8080]
admin_listen: 127.0.0.1:9090
policy: policy.yaml
upstream: { url: http://127.0.0.1:8081 }
issuers:
  - { issuer: https://a.example, audiences: [x] }
  - { issuer: https://a.example, audiences: [y], jwks_min_refresh_interval: 10m }
";
    assert_eq!(
        f.errors(src),
        [
            "fhirwall.yaml:1:26 listen[1] | `127.0.0.1:8080` is listed twice",
            "fhirwall.yaml:7:15 issuers[1].issuer | issuer `https://a.example` is listed twice",
            "fhirwall.yaml:7:77 issuers[1].jwks_min_refresh_interval | `jwks_min_refresh_interval` cannot be longer than `jwks_refresh_interval`",
        ]
    );
}

#[test]
fn syntax_errors_and_unreadable_files_are_single_diagnostics() {
    let f = Fixture::new();
    let e = f.errors("listen: [127.0.0.1:8080\nadmin_listen: x\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("YAML syntax error"), "{e:?}");
    let d = load_with_warnings(Path::new("/nonexistent/fhirwall.yaml"))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(d.0.len(), 1);
    assert_eq!((d.0[0].line, d.0[0].col), (0, 0));
    assert!(d.0[0]
        .message
        .starts_with("cannot read the configuration file: "));
}

#[test]
fn from_str_at_resolves_paths_against_the_given_location() {
    let f = Fixture::new();
    let c = Config::from_str_at(MINIMAL, &f.path()).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.policy_path, f.dir.path().join("policy.yaml"));
}

#[test]
fn introspection_and_revocation_are_read_with_their_defaults() {
    let f = Fixture::new();
    let src = format!(
        "{MINIMAL}    introspection:\n      client_id: gw\n      client_secret_env: GW_SECRET\nrevocation:\n  admin_token_file: admin.token\n"
    );
    let (c, _) = f.load(&src).unwrap();
    let i = c.issuers[0].introspection.as_ref().unwrap();
    assert_eq!(i.client_id, "gw");
    assert_eq!(
        i.auth,
        ClientAuth::SecretBasic(SecretSource::Env("GW_SECRET".into()))
    );
    assert_eq!(i.cache_max_ttl, Duration::from_secs(30));
    assert_eq!(i.negative_ttl, Duration::from_secs(5));
    assert_eq!(i.endpoint, None);
    assert_eq!(
        c.revocation.admin_token,
        Some(SecretSource::File(f.dir.path().join("admin.token")))
    );
    assert_eq!(c.revocation.entry_ttl, Duration::from_secs(3600));
}

#[test]
fn introspection_errors_are_reported_with_position_and_key() {
    let f = Fixture::new();
    let src = "\
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
policy: policy.yaml
upstream:
  url: http://127.0.0.1:8081
issuers:
  - issuer: https://a.example.org
    audiences: [fhir]
    introspection: { client_id: a, auth: client_secret_post, cache_max_ttl: 10m }
  - issuer: https://b.example.org
    audiences: [fhir]
    introspection: { client_id: b, auth: private_key_jwt, client_secret_env: X }
revocation: { redis_url: 'rediss://127.0.0.1:6379' }
";
    assert_eq!(
        f.errors(src),
        [
            "fhirwall.yaml:9:42 issuers[0].introspection.auth | `client_secret_post` needs the client secret: set `client_secret_env` (an environment variable name) or `client_secret_file`; the secret itself never goes in this file",
            "fhirwall.yaml:9:77 issuers[0].introspection.cache_max_ttl | `cache_max_ttl` must be at most 5m: a revocation at the provider stays unseen for as long",
            "fhirwall.yaml:12:42 issuers[1].introspection.auth | `private_key_jwt` needs `private_key_file` (a PEM RSA or EC P-256 private key)",
            "fhirwall.yaml:12:78 issuers[1].introspection.client_secret_env | not used with `auth: private_key_jwt`",
            "fhirwall.yaml:13:26 revocation.redis_url | TLS to Redis (`rediss://`) is not supported; reach Redis over a private network or a local TLS tunnel",
        ]
    );
}

#[test]
fn revocation_propagation_through_redis_is_read_and_bad_urls_are_errors() {
    let f = Fixture::new();
    let (c, _) = f
        .load(&format!(
            "{MINIMAL}revocation:\n  redis_url: 'redis://:pw@127.0.0.1:6379/2'\n  redis_channel: gw:rev\n"
        ))
        .unwrap();
    assert_eq!(
        c.revocation.redis_url.as_deref(),
        Some("redis://:pw@127.0.0.1:6379/2")
    );
    assert_eq!(c.revocation.redis_channel, "gw:rev");
    let (c, _) = f.load(MINIMAL).unwrap();
    assert_eq!(c.revocation.redis_url, None);
    assert_eq!(c.revocation.redis_channel, "fhirwall:revocations");
    assert_eq!(
        f.errors(&format!("{MINIMAL}revocation: {{ redis_url: 'http://h' }}\n")),
        ["fhirwall.yaml:9:26 revocation.redis_url | invalid Redis URL `http://h`; expected `redis://[user:password@]host[:port][/db]`"]
    );
}

#[test]
fn audit_durability_rotation_and_checkpoints_load() {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let f = Fixture::new();
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    fs::write(
        f.dir.path().join("sign.pem"),
        key.to_pkcs8_pem(Default::default()).unwrap().as_bytes(),
    )
    .unwrap();
    let src = format!(
        "{MINIMAL}audit:
  path: audit.jsonl
  durability: strict
  rotate_bytes: 67108864
  rotate_interval: 1h
  checkpoint: {{ key_file: sign.pem, every_records: 500 }}
"
    );
    let (c, _) = f.load(&src).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.audit.durability, AuditDurability::Strict);
    assert_eq!(c.audit.rotate_bytes, Some(64 << 20));
    assert_eq!(c.audit.rotate_interval, Some(Duration::from_secs(3600)));
    assert_eq!(
        c.audit.checkpoint,
        Some(AuditCheckpointConfig {
            key_file: f.dir.path().join("sign.pem"),
            every_records: 500,
            interval: Duration::from_secs(60),
        })
    );
}

#[test]
fn the_auditevent_sink_path_is_resolved_against_the_config_folder() {
    let f = Fixture::new();
    let src =
        format!("{MINIMAL}audit:\n  path: audit.jsonl\n  auditevent_path: events/ae.ndjson\n");
    let (c, _) = f.load(&src).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        c.audit.auditevent_path,
        Some(f.dir.path().join("events/ae.ndjson"))
    );
    // It does not depend on the trail going to a file.
    let (c, _) = f
        .load(&format!(
            "{MINIMAL}audit:\n  auditevent_path: /var/log/ae.ndjson\n"
        ))
        .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.audit.target, AuditTarget::Stdout);
    assert_eq!(
        c.audit.auditevent_path,
        Some(PathBuf::from("/var/log/ae.ndjson"))
    );
}

#[test]
fn a_bad_auditevent_path_is_named_at_its_position() {
    let f = Fixture::new();
    let errors = f.errors(&format!("{MINIMAL}audit:\n  auditevent_path: ''\n"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "fhirwall.yaml:10:20 audit.auditevent_path | the AuditEvent path is empty"
        ),
        "{errors:#?}"
    );
    let errors = f.errors(&format!("{MINIMAL}audit:\n  auditevent_path: [a, b]\n"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("fhirwall.yaml:10:20 audit.auditevent_path | "),
        "{errors:#?}"
    );
}

#[test]
fn bad_audit_settings_are_named_at_their_position() {
    let f = Fixture::new();
    fs::write(f.dir.path().join("not-a-key.pem"), "hello").unwrap();
    let src = format!(
        "{MINIMAL}audit:
  durability: sometimes
  rotate_bytes: 1000
  checkpoint: {{ key_file: not-a-key.pem }}
"
    );
    let errors = f.errors(&src);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors[0]
            .starts_with("fhirwall.yaml:10:15 audit.durability | unknown durability `sometimes`"),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("audit.checkpoint.key_file | ")
                && e.contains("is not an Ed25519 private key")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("audit.rotate_bytes | `rotate_bytes` needs a file `audit.path`")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("audit.checkpoint | `checkpoint` needs a file")),
        "{errors:#?}"
    );
}

#[test]
fn reload_shadow_and_process_keys_have_defaults_and_are_read() {
    let f = Fixture::new();
    let (c, _) = f.load(MINIMAL).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.reload, ReloadConfig::default());
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    assert_eq!((c.upgrade_sock, c.shadow_policy_path), (None, None));
    assert!(c.shadow_policy.is_none());

    let src = format!(
        "{MINIMAL}shadow_policy: policy.yaml\nreload: {{ watch: false, interval: 500ms }}\nshutdown_grace: 30s\nupgrade_sock: run/up.sock\n"
    );
    let (c, _) = f.load(&src).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        c.reload,
        ReloadConfig {
            watch: false,
            interval: Duration::from_millis(500)
        }
    );
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.upgrade_sock, Some(f.dir.path().join("run/up.sock")));
    assert_eq!(c.shadow_policy_path, Some(f.dir.path().join("policy.yaml")));
    let shadow = c.shadow_policy.expect("shadow policy loaded");
    assert_eq!(shadow.version(), c.policy.version());
}

#[test]
fn bad_reload_shadow_and_process_keys_are_errors_at_their_position() {
    let f = Fixture::new();
    let src =
        format!("{MINIMAL}reload: {{ interval: 0s }}\nshutdown_grace: 500ms\nupgrade_sock: \"\"\n");
    assert_eq!(
        f.errors(&src),
        [
            "fhirwall.yaml:9:21 reload.interval | `interval` must be greater than zero",
            "fhirwall.yaml:10:17 shutdown_grace | `shutdown_grace` must be between 1s and 1h",
            "fhirwall.yaml:11:15 upgrade_sock | the upgrade socket path is empty",
        ]
    );
    let errors = f.errors(&format!("{MINIMAL}shadow_policy: missing.yaml\n"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("fhirwall.yaml:9:16 shadow_policy | cannot read the policy file"),
        "{errors:#?}"
    );
}

#[test]
fn cors_is_off_unless_configured_and_defaults_to_the_smart_request_headers() {
    let f = Fixture::new();
    let (config, _) = f.load(MINIMAL).unwrap();
    assert_eq!(config.cors, None);
    let (config, _) = f
        .load(&format!(
            "{MINIMAL}cors:\n  allowed_origins: [https://app.example.org, \"http://localhost:3000\"]\n"
        ))
        .unwrap();
    let cors = config.cors.expect("cors");
    assert_eq!(
        cors.allowed_origins.as_deref(),
        Some(
            &[
                "https://app.example.org".to_owned(),
                "http://localhost:3000".to_owned()
            ][..]
        )
    );
    assert!(cors.allowed_headers.iter().any(|h| h == "Authorization"));
    assert_eq!(cors.max_age, Duration::from_secs(600));
    let (config, _) = f
        .load(&format!(
            "{MINIMAL}cors:\n  allowed_origins: [\"*\"]\n  allowed_headers: [Authorization]\n  max_age: 1h\n"
        ))
        .unwrap();
    let cors = config.cors.expect("cors");
    assert_eq!(cors.allowed_origins, None, "`*`: any origin");
    assert_eq!(cors.allowed_headers, ["Authorization"]);
    assert_eq!(cors.max_age, Duration::from_secs(3600));
}

#[test]
fn cors_mistakes_name_the_file_line_and_key() {
    let f = Fixture::new();
    assert_eq!(
        f.errors(&format!("{MINIMAL}cors:\n  max_age: 5m\n")),
        ["fhirwall.yaml:10:3 cors.allowed_origins | missing: list the origins browser apps are served from, or `[\"*\"]` for any"]
    );
    assert_eq!(
        f.errors(&format!(
            "{MINIMAL}cors:\n  allowed_origins:\n    - https://app.example.org/\n    - https://App.example.org\n    - app.example.org\n    - https://a.example:99999\n"
        )),
        [
            "fhirwall.yaml:11:7 cors.allowed_origins[0] | `https://app.example.org/` is not an origin as a browser sends it: lower-case host, optional port, no path or trailing `/`",
            "fhirwall.yaml:12:7 cors.allowed_origins[1] | `https://App.example.org` is not an origin as a browser sends it: lower-case host, optional port, no path or trailing `/`",
            "fhirwall.yaml:13:7 cors.allowed_origins[2] | `app.example.org` is not an origin: expected `https://host[:port]`",
            "fhirwall.yaml:14:7 cors.allowed_origins[3] | `https://a.example:99999` is not an origin as a browser sends it: lower-case host, optional port, no path or trailing `/`",
        ]
    );
    assert_eq!(
        f.errors(&format!(
            "{MINIMAL}cors:\n  allowed_origins: [\"*\", https://a.example]\n"
        )),
        ["fhirwall.yaml:10:20 cors.allowed_origins | `*` allows every origin: list it alone"]
    );
    assert_eq!(
        f.errors(&format!(
            "{MINIMAL}cors:\n  allowed_origins: [https://a.example, https://a.example]\n  allowed_headers: [\"bad header\"]\n  max_age: 2d\n"
        ))
        .len(),
        3
    );
    assert_eq!(
        f.errors(&format!(
            "{MINIMAL}cors:\n  allowed_origins: [https://a.example]\n  max_age: 25h\n"
        )),
        ["fhirwall.yaml:11:12 cors.max_age | `cors.max_age` must be at most 24h"]
    );
}
