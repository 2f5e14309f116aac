//! JSON Schemas (draft 2020-12) of the configuration file and the policy file, generated from
//! the tables below: `fhirwall schema config` / `fhirwall schema policy` print them, and the
//! copies shipped in `schemas/` are checked against this output by the tests at the bottom.
//!
//! Editors (yaml-language-server) and CI (`check-jsonschema`) use them to validate and
//! complete the YAML files. The loaders in [`crate::config`] and [`crate::policy`] stay the
//! authority (they also check what a schema cannot say: files exist, routes do not conflict,
//! scopes parse); the schema is the same key tree with types, defaults and descriptions.
//!
//! Each [`Obj`] below mirrors one key table of a loader (the `*_KEYS` consts): `keys` names
//! it, and a test fails when the two disagree, or when a `*_KEYS` table anywhere in `src/` is
//! claimed by no object. Adding a key to a loader therefore means adding one line here, next
//! to the others of its table. Descriptions follow the README's configuration reference.

use std::fmt::Write as _;

use crate::policy::r4::RESOURCE_TYPES;
use crate::policy::route::METHODS;
use crate::ratelimit::interaction::Interaction;

/// Which schema to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The gateway configuration file (`fhirwall serve --config`).
    Config,
    /// The policy file named by the configuration's `policy:`.
    Policy,
}

/// The JSON Schema of `which`, pretty-printed (two-space indent, keys in table order, a
/// final newline): exactly the content of the file shipped in `schemas/`.
pub fn render(which: Which) -> String {
    let root = match which {
        Which::Config => &CONFIG,
        Which::Policy => &POLICY,
    };
    let (title, id) = match which {
        Which::Config => ("fhirwall configuration file", "fhirwall-config.schema.json"),
        Which::Policy => ("fhirwall policy file", "fhirwall-policy.schema.json"),
    };
    let mut top = vec![
        (
            "$schema".to_owned(),
            J::str("https://json-schema.org/draft/2020-12/schema"),
        ),
        ("$id".to_owned(), J::str(id)),
        ("title".to_owned(), J::str(title)),
    ];
    let J::Obj(body) = obj_schema(root) else {
        unreachable!("an object schema is a JSON object")
    };
    top.extend(body);
    let mut out = String::new();
    J::Obj(top).write(&mut out, 0);
    out.push('\n');
    out
}

/// The file name under `schemas/` of `which`.
pub fn file_name(which: Which) -> &'static str {
    match which {
        Which::Config => "fhirwall-config.schema.json",
        Which::Policy => "fhirwall-policy.schema.json",
    }
}

// === the schema source ===

/// One mapping of the file: the counterpart of one loader key table.
pub(crate) struct Obj {
    /// The loader's key table this mapping mirrors.
    keys: Keys,
    /// What the mapping is for.
    desc: &'static str,
    /// Its keys, in table order.
    props: &'static [Prop],
}

/// Where a mapping's key table is: `<file under src/>::<const>`, e.g.
/// `config/file.rs::UPSTREAM_KEYS`.
pub(crate) enum Keys {
    /// The loader reads the mapping with this table; the two must agree.
    Table(&'static str),
}

/// One key of a mapping.
pub(crate) struct Prop {
    key: &'static str,
    ty: Ty,
    required: bool,
    /// Default value as YAML would spell it (`2s`, `true`, `65536`, `[a, b]` as JSON).
    default: Option<&'static str>,
    desc: &'static str,
}

/// The value type of a key.
pub(crate) enum Ty {
    /// Any string.
    Str,
    /// A non-empty string.
    NonEmpty,
    /// A string matching a regular expression (ECMA 262, as JSON Schema uses).
    Pattern(&'static str),
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// One of the strings a function lists (tables that live in code, e.g. HTTP methods).
    EnumFn(fn() -> Vec<&'static str>),
    /// Exactly this integer.
    ConstInt(u64),
    /// `true` or `false`.
    Bool,
    /// An integer in `min..=max`.
    Int(u64, Option<u64>),
    /// A number in `(0, 1]`.
    Share,
    /// A duration with a unit: `250ms`, `30s`, `5m`, `1h`.
    Duration,
    /// An absolute URL.
    Url,
    /// A list of items (at least `min`).
    List(&'static Ty, u64),
    /// One item or a non-empty list of them.
    OneOrList(&'static Ty),
    /// Exactly one of these.
    OneOf(&'static [Ty]),
    /// A mapping.
    Obj(&'static Obj),
    /// A list of mappings (at least `min`).
    ListOf(&'static Obj, u64),
    /// A mapping whose keys come from a function and whose values are all of one type.
    MapOf(fn() -> Vec<&'static str>, &'static Ty),
}

const fn req(key: &'static str, ty: Ty, desc: &'static str) -> Prop {
    Prop {
        key,
        ty,
        required: true,
        default: None,
        desc,
    }
}

const fn opt(key: &'static str, ty: Ty, default: &'static str, desc: &'static str) -> Prop {
    Prop {
        key,
        ty,
        required: false,
        default: Some(default),
        desc,
    }
}

/// An optional key without a default (absent means "none" / "off").
const fn may(key: &'static str, ty: Ty, desc: &'static str) -> Prop {
    Prop {
        key,
        ty,
        required: false,
        default: None,
        desc,
    }
}

const DURATION_RE: &str = "^[0-9]+(ms|s|m|h)$";
const ADDR: Ty = Ty::Pattern(r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$");
const ID_RE: &str = "^[A-Za-z0-9_.-]+$";
const ENV_NAME: Ty = Ty::Pattern("^[^=]+$");
const STRINGS: Ty = Ty::List(&Ty::Str, 0);
const SCOPES: Ty = Ty::List(&Ty::NonEmpty, 0);

fn methods() -> Vec<&'static str> {
    METHODS.to_vec()
}

fn resource_types() -> Vec<&'static str> {
    RESOURCE_TYPES.to_vec()
}

fn interactions() -> Vec<&'static str> {
    Interaction::ALL.iter().map(|i| i.as_str()).collect()
}

// --- configuration file (src/config/file.rs, src/ratelimit/spec.rs) ---

static CONFIG: Obj = Obj {
    keys: Keys::Table("config/file.rs::TOP_KEYS"),
    desc: "fhirwall gateway configuration. Unknown and duplicate keys are errors; durations are an integer with a unit (ms, s, m, h); relative paths are resolved against the folder of this file. `fhirwall check --config FILE` validates it and the policy it names.",
    props: &[
        req("listen", Ty::OneOrList(&Ty::OneOf(&[ADDR, Ty::Obj(&LISTENER)])), "Where clients connect: one listener or a list; a listener is an address (IP and port, e.g. `127.0.0.1:8080`; host names are not resolved) or a mapping with `address` and `tls`. Plain HTTP on a non-loopback address must be asked for with `plaintext: true`."),
        req("admin_listen", ADDR, "Admin listener (`/metrics`, `/healthz`, `/readyz`, `POST /admin/revoke`). Must differ from every `listen` address; keep it off the public network."),
        opt("realm", Ty::Pattern(r#"^[ !#-\[\]-~]+$"#), "fhirwall", "The `realm` of `WWW-Authenticate` challenges. Printable ASCII without `\"` or `\\`."),
        may("threads", Ty::Int(1, Some(1024)), "Worker threads of the proxy (default: the number of CPUs)."),
        req("policy", Ty::NonEmpty, "The policy file (routes and the scopes they need), relative to this file's folder."),
        req("upstream", Ty::Obj(&UPSTREAM), "The backend allowed requests are forwarded to."),
        req("issuers", Ty::ListOf(&ISSUER, 1), "Trusted token issuers; a token from any other issuer is refused."),
        may("token_cache", Ty::Obj(&TOKEN_CACHE), "Verified-token cache."),
        may("revocation", Ty::Obj(&REVOCATION), "Revocation in the gateway (`POST /admin/revoke`)."),
        may("audit", Ty::Obj(&AUDIT), "Audit trail."),
        may("forwarding", Ty::Obj(&FORWARDING), "Header handling toward the upstream."),
        may("cors", Ty::Obj(&CORS), "CORS for browser apps: allowed origins get their preflights answered by fhirwall and CORS fields on every response. Absent: no CORS handling (an `OPTIONS` preflight is decided like any request, and refused without a token)."),
        may("log", Ty::Obj(&LOG), "Operational log."),
        may("rate_limit", Ty::Obj(&RATE_LIMIT), "Where rate-limit state lives (the quotas themselves are in the policy)."),
        may("shadow_policy", Ty::NonEmpty, "A candidate policy evaluated beside the active one on every request, without effect: its differing decisions are counted (`fhirwall_shadow_decisions_total`) and logged."),
        may("reload", Ty::Obj(&RELOAD), "Hot reload of the configuration and the policy files."),
        opt("shutdown_grace", Ty::Duration, "10s", "How long SIGTERM lets in-flight requests finish (1s to 1h)."),
        may("upgrade_sock", Ty::NonEmpty, "Unix socket for a zero-downtime binary upgrade (the listening sockets are handed to the new process)."),
    ],
};

static UPSTREAM: Obj = Obj {
    keys: Keys::Table("config/file.rs::UPSTREAM_KEYS"),
    desc: "The backend allowed requests are forwarded to.",
    props: &[
        req("url", Ty::Pattern("^https?://[^/?#@]+/?$"), "`http://` or `https://` + host + optional port. No path (a trailing `/` is accepted): requests are forwarded with their own path, so a FHIR base path such as `/fhir` goes in the policy's `base_path`. No credentials, query or fragment."),
        opt("connect_timeout", Ty::Duration, "2s", "Time to establish a connection."),
        opt("read_timeout", Ty::Duration, "30s", "Time allowed between reads from the upstream."),
        opt("write_timeout", Ty::Duration, "30s", "Time allowed between writes to the upstream."),
        opt("total_timeout", Ty::Duration, "60s", "Budget from sending the request to the end of the response header; a response header completed after it is answered 504."),
        opt("idle_timeout", Ty::Duration, "60s", "How long an idle keep-alive connection stays pooled."),
        opt("forward_authorization", Ty::Bool, "false", "Forward the client's `Authorization` header upstream."),
        opt("verify_tls", Ty::Bool, "true", "Verify the upstream certificate (https). `false` is a warning; never in production."),
        may("sni", Ty::NonEmpty, "Server name to send and to expect in the certificate (default: the URL's host)."),
        may("ca", Ty::NonEmpty, "PEM file of the CA certificates that issue the upstream's certificate (https only; default: the system's trust store)."),
        may("client_certificate", Ty::NonEmpty, "PEM certificate chain fhirwall presents to the upstream (mTLS; with `client_key`)."),
        may("client_key", Ty::NonEmpty, "PEM private key of `client_certificate`."),
    ],
};

static LISTENER: Obj = Obj {
    keys: Keys::Table("config/file.rs::LISTENER_KEYS"),
    desc: "One listener: an address and, unless it is loopback or `plaintext: true`, TLS.",
    props: &[
        req("address", ADDR, "IP address and port, e.g. `0.0.0.0:8443`."),
        may("tls", Ty::Obj(&LISTENER_TLS), "TLS on this listener: certificate, key, optional client certificates."),
        opt("plaintext", Ty::Bool, "false", "Serve plain HTTP on a non-loopback address: only behind a TLS-terminating proxy on a trusted network (a warning)."),
    ],
};

static LISTENER_TLS: Obj = Obj {
    keys: Keys::Table("config/file.rs::LISTENER_TLS_KEYS"),
    desc: "TLS on a listener. The files are loaded at `fhirwall check`, and reloaded when they change.",
    props: &[
        req("certificate", Ty::NonEmpty, "PEM certificate chain, leaf first."),
        req("key", Ty::NonEmpty, "PEM private key of the certificate."),
        may("client_ca", Ty::NonEmpty, "PEM CA certificates that issue client certificates (mTLS)."),
        may("client_auth", Ty::Enum(&["required", "optional"]), "With `client_ca`: whether a client certificate is required (the default) or optional."),
        opt("reload_interval", Ty::Duration, "5s", "How often the certificate and key files are checked for changes."),
    ],
};

static RELOAD: Obj = Obj {
    keys: Keys::Table("config/file.rs::RELOAD_KEYS"),
    desc: "Hot reload: changed files are loaded and swapped in; files that do not load are refused and the running version keeps serving.",
    props: &[
        opt("watch", Ty::Bool, "true", "Watch the configuration and policy files for changes."),
        opt("interval", Ty::Duration, "2s", "How often the files are checked."),
    ],
};

static ISSUER: Obj = Obj {
    keys: Keys::Table("config/file.rs::ISSUER_KEYS"),
    desc: "One trusted token issuer.",
    props: &[
        req("issuer", Ty::Url, "The exact `iss` tokens must carry. `http://` to a non-loopback host is a warning. Each issuer once."),
        req("audiences", Ty::List(&Ty::NonEmpty, 1), "A token must carry at least one of these in `aud`."),
        may("jwks_uri", Ty::Url, "Where the signing keys are. Without it, keys are discovered from `{issuer}/.well-known/openid-configuration`, then `/.well-known/oauth-authorization-server`."),
        opt("algorithms", Ty::List(&Ty::Enum(&["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]), 1), r#"["RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA"]"#, "Accepted signature algorithms. `HS256`/`HS384`/`HS512` (shared secrets) and `none` are load errors."),
        opt("leeway", Ty::Duration, "30s", "Clock skew allowed on `exp` and `nbf` (at most `5m`)."),
        opt("jwks_refresh_interval", Ty::Duration, "5m", "Scheduled key refresh."),
        opt("jwks_min_refresh_interval", Ty::Duration, "30s", "Minimum time between two key fetches, including refreshes triggered by an unknown `kid`. Not longer than `jwks_refresh_interval`."),
        opt("fetch_timeout", Ty::Duration, "5s", "Timeout of one key or discovery fetch."),
        opt("patient_claim", Ty::NonEmpty, "patient", "Claim carrying the SMART patient context."),
        may("introspection", Ty::Obj(&INTROSPECTION), "RFC 7662 introspection of opaque access tokens from this issuer. Without it (on every issuer), opaque tokens are refused (401)."),
    ],
};

static INTROSPECTION: Obj = Obj {
    keys: Keys::Table("config/file.rs::INTROSPECTION_KEYS"),
    desc: "RFC 7662 introspection of opaque tokens for one issuer. With several introspecting issuers, exactly one says `default: true`.",
    props: &[
        may("endpoint", Ty::Url, "The introspection endpoint; without it, `introspection_endpoint` of the issuer's discovery document."),
        may("revocation_endpoint", Ty::Url, "RFC 7009 endpoint for `\"at_provider\": true` revocations; without it, `revocation_endpoint` of the discovery document."),
        req("client_id", Ty::NonEmpty, "The gateway's client id at the provider."),
        opt("auth", Ty::Enum(&["client_secret_basic", "client_secret_post", "private_key_jwt"]), "client_secret_basic", "Client authentication at the endpoint."),
        may("client_secret_env", ENV_NAME, "Environment variable holding the secret (secret methods; this or `client_secret_file`, not both). The secret itself never goes in the YAML."),
        may("client_secret_file", Ty::NonEmpty, "A file holding the secret (whitespace trimmed), e.g. a mounted Kubernetes Secret."),
        may("private_key_file", Ty::NonEmpty, "`private_key_jwt`: PEM RSA or EC P-256 private key signing the RFC 7523 client assertion."),
        opt("private_key_alg", Ty::Enum(&["RS256", "PS256", "ES256"]), "RS256", "Assertion algorithm."),
        may("private_key_kid", Ty::Str, "`kid` header of the assertion."),
        opt("timeout", Ty::Duration, "2s", "Timeout of one call (connect to last byte)."),
        opt("cache_max_ttl", Ty::Duration, "30s", "An active answer is cached until the token's `exp` or this, whichever comes first (1s to 5m): a token revoked at the provider stops working within this time."),
        opt("negative_ttl", Ty::Duration, "5s", "How long an inactive answer is remembered (1s to 1m). Outages are never remembered."),
        opt("default", Ty::Bool, "false", "With several introspecting issuers: opaque tokens go to this one."),
        opt("breaker_failures", Ty::Int(1, Some(1000)), "5", "Consecutive failed calls (transport error, timeout, non-200, unreadable answer) that open the circuit."),
        opt("breaker_open_for", Ty::Duration, "5s", "How long an open circuit refuses calls at once (503) before one probe call is let through."),
    ],
};

static REVOCATION: Obj = Obj {
    keys: Keys::Table("config/file.rs::REVOCATION_KEYS"),
    desc: "Token revocation in the gateway: `POST /admin/revoke` on the admin listener, optionally propagated through Redis.",
    props: &[
        may("admin_token_env", ENV_NAME, "Environment variable holding the bearer token of `POST /admin/revoke` (at least 16 characters). Without it (or `admin_token_file`), the endpoint answers 404."),
        may("admin_token_file", Ty::NonEmpty, "The same, from a file (whitespace trimmed). Not both."),
        opt("entry_ttl", Ty::Duration, "1h", "How long a revocation is kept when the request names no `ttl`. At least as long as the longest access-token lifetime."),
        opt("max_entries", Ty::Int(1, None), "100000", "Bound of the revocation list, per kind (token, `jti`, client, subject)."),
        may("redis_url", Ty::Pattern("^redis://"), "Propagate revocations to every instance through this Redis (pub/sub plus a re-sync set): `redis://[user:password@]host[:port][/db]`. `rediss://` is refused."),
        opt("redis_channel", Ty::NonEmpty, "fhirwall:revocations", "The pub/sub channel (with `redis_url`); every instance of one deployment must use the same."),
    ],
};

static TOKEN_CACHE: Obj = Obj {
    keys: Keys::Table("config/file.rs::TOKEN_CACHE_KEYS"),
    desc: "Verified-token cache (keyed by a hash of the token).",
    props: &[
        opt(
            "max_entries",
            Ty::Int(1, None),
            "100000",
            "Most verified tokens kept (budget about 1 KiB each).",
        ),
        opt(
            "max_ttl",
            Ty::Duration,
            "5m",
            "Longest a verified token is trusted without re-verification (never past its `exp`).",
        ),
    ],
};

static AUDIT: Obj = Obj {
    keys: Keys::Table("config/file.rs::AUDIT_KEYS"),
    desc: "Audit trail: one hash-chained JSON line per request.",
    props: &[
        opt("path", Ty::NonEmpty, "stdout", "Where records go: `stdout`, or a file path (relative to this file's folder) the records are appended to."),
        opt("queue_capacity", Ty::Int(1, None), "65536", "Records waiting to be written. When full, requests are refused (503) rather than served unaudited."),
        opt("flush_interval", Ty::Duration, "100ms", "Longest a record waits in memory."),
        opt("allow_query_params", STRINGS, r#"["_count","_sort","_summary","_elements","_format"]"#, "Query parameters whose values may appear in records; all others are redacted. `[]` redacts all."),
        opt("durability", Ty::Enum(&["batched", "strict"]), "batched", "`batched`: records are written off the request path within `flush_interval`. `strict`: a response is not released before its record is written and fsynced."),
        may("rotate_bytes", Ty::Int(1, None), "Rotate the file once it holds this many bytes. File targets only."),
        may("rotate_interval", Ty::Duration, "Rotate the file once it has been written to for this long. File targets only."),
        may("checkpoint", Ty::Obj(&AUDIT_CHECKPOINT), "Signed checkpoints of the hash chain. File targets only."),
        may("auditevent_path", Ty::NonEmpty, "Also append each record as a FHIR R4 AuditEvent, one NDJSON line, to this file, in the same write cycle as the trail; a failing AuditEvent file makes requests fail (503)."),
    ],
};

static AUDIT_CHECKPOINT: Obj = Obj {
    keys: Keys::Table("config/file.rs::AUDIT_CHECKPOINT_KEYS"),
    desc: "Signed checkpoints: the writer signs (seq, hash) of the chain head with an Ed25519 key and appends it to `<audit path>.checkpoints`.",
    props: &[
        req("key_file", Ty::NonEmpty, "Ed25519 private key, PKCS#8 PEM (`openssl genpkey -algorithm ed25519`). Read and checked at load time."),
        opt("every_records", Ty::Int(1, None), "10000", "Records between two checkpoints."),
        opt("interval", Ty::Duration, "60s", "Longest time between two checkpoints while records are written."),
    ],
};

static FORWARDING: Obj = Obj {
    keys: Keys::Table("config/file.rs::FORWARDING_KEYS"),
    desc: "Header handling toward the upstream.",
    props: &[opt(
        "trust_forwarded_for",
        Ty::Bool,
        "false",
        "`true` (only behind a trusted proxy): keep incoming `X-Forwarded-For` and append the client address. `false` (fhirwall is the edge): replace it and drop `Forwarded`, `X-Real-IP` and the like.",
    )],
};

static CORS: Obj = Obj {
    keys: Keys::Table("config/file.rs::CORS_KEYS"),
    desc: "CORS for browser apps (Fetch Standard CORS protocol).",
    props: &[
        req("allowed_origins", STRINGS, "Origins browser apps are served from, exactly as browsers send `Origin` (`https://app.example.org`, lower case, optional port, no path), or `[\"*\"]` alone for any origin."),
        opt("allowed_headers", STRINGS, r#"["Authorization","Content-Type","Accept","Prefer","If-Match","If-None-Match","If-None-Exist","If-Modified-Since","X-Request-Id"]"#, "Request headers apps may send (`Access-Control-Allow-Headers`); `Authorization` must be listed for bearer tokens."),
        opt("max_age", Ty::Duration, "10m", "How long browsers may cache a preflight answer (`Access-Control-Max-Age`; at most 24h)."),
    ],
};

static LOG: Obj = Obj {
    keys: Keys::Table("config/file.rs::LOG_KEYS"),
    desc: "Operational log (never the audit trail).",
    props: &[
        opt("level", Ty::NonEmpty, "info", "A `tracing` filter directive, e.g. `info` or `fhirwall=debug,info`; validated at load."),
        opt("format", Ty::Enum(&["text", "json"]), "text", "Log line format."),
    ],
};

static RATE_LIMIT: Obj = Obj {
    keys: Keys::Table("ratelimit/spec.rs::CONFIG_KEYS"),
    desc: "Where rate-limit state lives; without it every instance limits on its own, in memory.",
    props: &[
        opt("headers_on_allowed", Ty::Bool, "false", "Also send `RateLimit-Policy` / `RateLimit` on allowed responses (always sent on a quota's 429)."),
        opt("max_keys", Ty::Int(1024, Some(1_000_000_000)), "1000000", "Most keys (clients, subjects or addresses) one quota keeps in memory; at the cap the keys closest to a fresh state are evicted."),
        opt("prune_interval", Ty::Duration, "10s", "How often keys whose state is back to fresh are dropped."),
        may("redis", Ty::Obj(&REDIS), "Share the quotas and the distinct-patients guard between instances through Redis."),
    ],
};

static REDIS: Obj = Obj {
    keys: Keys::Table("ratelimit/spec.rs::REDIS_KEYS"),
    desc: "Shared rate-limit state in Redis.",
    props: &[
        req("url", Ty::Pattern("^redis://"), "`redis://[user:password@]host[:port][/db]`. `rediss://` (TLS) is not supported: reach Redis over a private network or a local TLS tunnel."),
        opt("key_prefix", Ty::Pattern("^[!-~]{1,64}$"), "fhirwall:", "Prefix of every key written (up to 64 printable ASCII characters, no spaces). Instances sharing quotas use the same prefix."),
        opt("timeout", Ty::Duration, "50ms", "Longest a request waits for Redis; a slower answer or an error marks Redis down and the local limits answer."),
        req("local_share", Ty::Share, "While Redis is unreachable, each instance admits this share (0 < share <= 1) of every quota. No default on purpose: with n instances, 1/n keeps the total at the quota."),
        opt("retry_interval", Ty::Duration, "1s", "How often Redis is probed (a PING while up, a reconnect while down)."),
    ],
};

// --- policy file (src/policy/load.rs, src/ratelimit/spec.rs) ---

static POLICY: Obj = Obj {
    keys: Keys::Table("policy/load.rs::TOP_KEYS"),
    desc: "fhirwall policy: which requests are forwarded and the SMART scopes they need. Everything not allowed is refused (default deny). Unknown and duplicate keys are errors.",
    props: &[
        req("version", Ty::ConstInt(1), "The policy format version; must be `1`."),
        may("base_path", Ty::Pattern("^(/[^/{}]+)+$"), "Literal prefix of every route path (`/fhir` + `/metadata` = `/fhir/metadata`); with a `fhir:` section, the FHIR base. No parameters, no trailing `/`."),
        req("routes", Ty::ListOf(&ROUTE, 0), "Explicit routes, matched first. An empty list refuses every request not handled by a `fhir:` section."),
        may("quotas", Ty::ListOf(&QUOTA, 0), "Rate-limit quotas (GCRA), each counting requests by client, subject or address."),
        may("distinct_patients", Ty::Obj(&GUARD), "The distinct-patients guard: how many different patients one client may touch per window."),
        may("fhir", Ty::Obj(&FHIR), "Enforce SMART on FHIR scopes on every request under `base_path` (FHIR R4): fhirwall classifies each request itself (interactions, compartments, bundles, includes). Requests matched by an explicit route are decided by the route."),
    ],
};

static ROUTE: Obj = Obj {
    keys: Keys::Table("policy/load.rs::ROUTE_KEYS"),
    desc: "One route: methods and a path pattern, and the scopes a request needs.",
    props: &[
        req("id", Ty::Pattern(ID_RE), "Unique; letters, digits, `_`, `.`, `-`. Names the route in metrics and audit records."),
        may("description", Ty::Str, "Documentation only."),
        req("methods", Ty::List(&Ty::EnumFn(methods), 1), "Upper case, each at most once. A route listing `GET` also answers `HEAD`."),
        req("path", Ty::Pattern("^/"), "A path pattern relative to `base_path`: literal segments, `{name}` parameters, a final `{name*}` tail."),
        opt("public", Ty::Bool, "false", "`true`: allowed without a token (discovery endpoints); cannot have `scopes` or `patient`."),
        may("scopes", Ty::Obj(&SCOPES_OBJ), "Required scopes (required unless `public: true`)."),
        may("patient", Ty::Obj(&PATIENT), "Patient-context binding: a `patient/` scope only covers the token's patient."),
    ],
};

static SCOPES_OBJ: Obj = Obj {
    keys: Keys::Table("policy/load.rs::SCOPES_KEYS"),
    desc: "Scopes a request needs: at least one of `any_of` and every one of `all_of` (at least one scope overall).",
    props: &[
        opt("any_of", SCOPES, "[]", "At least one must be satisfied (when non-empty), e.g. `[patient/Observation.rs, user/Observation.rs]`."),
        opt("all_of", SCOPES, "[]", "Every one must be satisfied."),
    ],
};

static PATIENT: Obj = Obj {
    keys: Keys::Table("policy/load.rs::PATIENT_KEYS"),
    desc: "Patient binding of a route: exactly one of `segment` and `query`.",
    props: &[
        may("segment", Ty::NonEmpty, "The `{name}` path segment that must equal the token's patient."),
        may("query", Ty::Pattern("^[A-Za-z_][A-Za-z0-9_-]*$"), "The query parameter (a plain name, no modifier) whose single value must be `<id>` or `Patient/<id>`."),
    ],
};

static QUOTA: Obj = Obj {
    keys: Keys::Table("ratelimit/spec.rs::QUOTA_KEYS"),
    desc: "One rate-limit quota.",
    props: &[
        req("id", Ty::Pattern("^[A-Za-z0-9_.-]{1,64}$"), "Unique; letters, digits, `_`, `.`, `-`, at most 64. `distinct_patients` is reserved. Names the quota in `RateLimit` fields, audit records and `fhirwall_rate_limited_total{quota}`."),
        may("description", Ty::Str, "Documentation only."),
        req("key", Ty::Enum(&["client", "subject", "address"]), "What requests are counted by: the token's client, its subject, or the client's IP address (IPv6 by /64)."),
        req("rate", Ty::Pattern("^[0-9]+/[0-9]+(ms|s|m|h)$"), "The sustained rate `<count>/<period>`: count 1 to 10^9, period whole seconds from `1s` to `168h` (`100/1m`, `10000/24h`)."),
        may("burst", Ty::Int(1, Some(1_000_000_000)), "Units that can be spent at once from a fresh state (default: the count)."),
        may("routes", Ty::List(&Ty::Pattern(ID_RE), 1), "Restricts the quota to these route ids (each must exist); default every route."),
        may("interactions", Ty::List(&Ty::EnumFn(interactions), 1), "Restricts the quota to these interactions; default every interaction."),
        may("cost", Ty::MapOf(interactions, &Ty::Int(0, Some(1_000_000_000))), "Units a request of that interaction spends (default 1 each; 0: not counted)."),
    ],
};

static GUARD: Obj = Obj {
    keys: Keys::Table("ratelimit/spec.rs::GUARD_KEYS"),
    desc: "The distinct-patients guard.",
    props: &[
        opt("key", Ty::Enum(&["client", "subject"]), "client", "Whose patients are counted."),
        req("limit", Ty::Int(1, Some(100_000)), "Most distinct patients per key and window."),
        req("window", Ty::Duration, "The sliding window, from `1s` to `168h`."),
        opt("action", Ty::Enum(&["deny", "alert"]), "deny", "`deny`: refuse (429) requests for a new patient past the limit; `alert`: allow them and count them (`fhirwall_distinct_patients_exceeded_total`)."),
    ],
};

// The `fhir:` section (issue 3): its loader lands with the SMART engine branch.
static FHIR: Obj = Obj {
    keys: Keys::Table("policy/load.rs::FHIR_KEYS"),
    desc: "SMART on FHIR enforcement under the FHIR base (`base_path`).",
    props: &[
        req("version", Ty::Enum(&["R4"]), "The FHIR version of the server; only `R4`."),
        opt("patient_scopes_outside_compartment", Ty::Enum(&["allow", "deny"]), "allow", "Whether `patient/` scopes reach types outside the patient compartment (Practitioner, Organization, Medication, ...) unconfined (`allow`) or not at all (`deny`)."),
        opt("granular_search", Ty::Enum(&["deny", "narrow"]), "deny", "A search under a granular scope (`patient/Observation.rs?category=...`) not narrowed to it: refused (`deny`), or narrowed by fhirwall appending the scope's parameters (`narrow`)."),
        opt("max_body_bytes", Ty::Int(1, None), "1048576", "Largest request body read for a decision (Bundles, `_search` forms, writes); larger is refused (413)."),
        opt("max_response_bytes", Ty::Int(1, None), "8388608", "Largest response body held for a check; larger is refused (403, fail closed)."),
        may("server_urls", Ty::List(&Ty::Url, 0), "Absolute base URLs of this server, counted as local in references."),
        may("paging", Ty::Obj(&FHIR_PAGING), "Next-page links: authorized as the search that produced them."),
        may("operations", Ty::ListOf(&FHIR_OPERATION, 0), "Operations allowed besides `$everything`, `$export` and `$lastn`; any other operation is refused."),
    ],
};

static FHIR_PAGING: Obj = Obj {
    keys: Keys::Table("policy/load.rs::PAGING_KEYS"),
    desc: "Remembered next-page links.",
    props: &[
        opt(
            "parameters",
            STRINGS,
            r#"["_getpages"]"#,
            "Query parameters marking next-page links at the base (HAPI's `_getpages`).",
        ),
        opt(
            "ttl",
            Ty::Duration,
            "30m",
            "How long a remembered link stays valid.",
        ),
        opt(
            "max_links",
            Ty::Int(1, None),
            "100000",
            "Bound on remembered links.",
        ),
    ],
};

static FHIR_OPERATION: Obj = Obj {
    keys: Keys::Table("policy/load.rs::OPERATION_KEYS"),
    desc: "One allowed FHIR operation and the scopes it needs.",
    props: &[
        req("name", Ty::Pattern("^[A-Za-z][A-Za-z0-9_-]{0,63}$"), "The operation name without `$`, e.g. `validate`."),
        may("description", Ty::Str, "Documentation only."),
        req("level", Ty::Enum(&["system", "type", "instance"]), "Where it is invoked: `[base]/$op`, `[base]/Type/$op` or `[base]/Type/id/$op`."),
        may("types", Ty::List(&Ty::EnumFn(resource_types), 1), "FHIR R4 resource types it may be invoked on (any type when absent; not for system level)."),
        opt("methods", Ty::List(&Ty::Enum(&["GET", "POST"]), 1), r#"["GET","POST"]"#, "HTTP methods allowed."),
        req("scopes", Ty::Obj(&SCOPES_OBJ), "Scopes the operation needs."),
    ],
};

// === generation ===

fn obj_schema(o: &Obj) -> J {
    let mut props = Vec::with_capacity(o.props.len());
    for p in o.props {
        let J::Obj(mut s) = ty_schema(&p.ty) else {
            unreachable!("type schemas are objects")
        };
        // The key's own description (more specific than its object's, for nested objects).
        match s.iter_mut().find(|(k, _)| k == "description") {
            Some((_, d)) => *d = J::str(p.desc),
            None => s.insert(0, ("description".to_owned(), J::str(p.desc))),
        }
        if let Some(d) = p.default {
            s.push(("default".to_owned(), default_value(&p.ty, d)));
        }
        props.push((p.key.to_owned(), J::Obj(s)));
    }
    let required: Vec<J> = o
        .props
        .iter()
        .filter(|p| p.required)
        .map(|p| J::str(p.key))
        .collect();
    let mut out = vec![("description".to_owned(), J::str(o.desc))];
    // Where the loader's key table lives, for whoever extends the format.
    let Keys::Table(keys) = o.keys;
    out.push(("$comment".to_owned(), J::Str(format!("keys: src/{keys}"))));
    out.extend([
        ("type".to_owned(), J::str("object")),
        ("properties".to_owned(), J::Obj(props)),
    ]);
    if !required.is_empty() {
        out.push(("required".to_owned(), J::Arr(required)));
    }
    // Unknown keys are load errors.
    out.push(("additionalProperties".to_owned(), J::Bool(false)));
    J::Obj(out)
}

fn ty_schema(ty: &Ty) -> J {
    let kv =
        |pairs: Vec<(&str, J)>| J::Obj(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
    match ty {
        Ty::Str => kv(vec![("type", J::str("string"))]),
        Ty::NonEmpty => kv(vec![("type", J::str("string")), ("minLength", J::Int(1))]),
        Ty::Pattern(re) => kv(vec![("type", J::str("string")), ("pattern", J::str(re))]),
        Ty::Enum(items) => kv(vec![(
            "enum",
            J::Arr(items.iter().map(|s| J::str(s)).collect()),
        )]),
        Ty::EnumFn(f) => kv(vec![(
            "enum",
            J::Arr(f().into_iter().map(J::str).collect()),
        )]),
        Ty::ConstInt(n) => kv(vec![("const", J::Int(*n))]),
        Ty::Bool => kv(vec![("type", J::str("boolean"))]),
        Ty::Int(min, max) => {
            let mut v = vec![("type", J::str("integer")), ("minimum", J::Int(*min))];
            if let Some(m) = max {
                v.push(("maximum", J::Int(*m)));
            }
            kv(v)
        }
        Ty::Share => kv(vec![
            ("type", J::str("number")),
            ("exclusiveMinimum", J::Int(0)),
            ("maximum", J::Int(1)),
        ]),
        Ty::Duration => kv(vec![
            ("type", J::str("string")),
            ("pattern", J::str(DURATION_RE)),
        ]),
        Ty::Url => kv(vec![
            ("type", J::str("string")),
            ("format", J::str("uri")),
            ("pattern", J::str("^https?://")),
        ]),
        Ty::List(item, min) => {
            let mut v = vec![("type", J::str("array")), ("items", ty_schema(item))];
            if *min > 0 {
                v.push(("minItems", J::Int(*min)));
            }
            v.push(("uniqueItems", J::Bool(true)));
            kv(v)
        }
        Ty::OneOrList(item) => kv(vec![(
            "oneOf",
            J::Arr(vec![
                ty_schema(item),
                kv(vec![
                    ("type", J::str("array")),
                    ("items", ty_schema(item)),
                    ("minItems", J::Int(1)),
                    ("uniqueItems", J::Bool(true)),
                ]),
            ]),
        )]),
        Ty::OneOf(alternatives) => kv(vec![(
            "oneOf",
            J::Arr(alternatives.iter().map(ty_schema).collect()),
        )]),
        Ty::Obj(o) => obj_schema(o),
        Ty::ListOf(o, min) => {
            let mut v = vec![("type", J::str("array")), ("items", obj_schema(o))];
            if *min > 0 {
                v.push(("minItems", J::Int(*min)));
            }
            kv(v)
        }
        Ty::MapOf(names, value) => kv(vec![
            ("type", J::str("object")),
            (
                "propertyNames",
                kv(vec![(
                    "enum",
                    J::Arr(names().into_iter().map(J::str).collect()),
                )]),
            ),
            ("additionalProperties", ty_schema(value)),
        ]),
    }
}

/// The JSON value of a default written as YAML would (`2s`, `true`, `65536`) or, for
/// lists, as JSON.
fn default_value(ty: &Ty, text: &str) -> J {
    match ty {
        Ty::Bool => J::Bool(text == "true"),
        Ty::Int(..) | Ty::ConstInt(_) => J::Int(text.parse().expect("integer default")),
        Ty::List(..) => {
            let v: Vec<String> = serde_json::from_str(text).expect("list default is JSON");
            J::Arr(v.into_iter().map(J::Str).collect())
        }
        _ => J::str(text),
    }
}

/// A JSON value whose objects keep their keys in insertion order (serde_json's `Map` sorts
/// them unless a feature is on somewhere in the build; the shipped files must not depend on
/// that).
enum J {
    Str(String),
    Int(u64),
    Bool(bool),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

// === impl J ===

impl J {
    fn str(s: &str) -> J {
        J::Str(s.to_owned())
    }

    fn write(&self, out: &mut String, indent: usize) {
        let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n));
        match self {
            J::Str(s) => out.push_str(&serde_json::Value::from(s.as_str()).to_string()),
            J::Int(n) => {
                let _ = write!(out, "{n}");
            }
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            // Lists of scalars on one line (enums, defaults); others one item a line.
            J::Arr(items) if items.iter().all(|i| !matches!(i, J::Arr(_) | J::Obj(_))) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out, indent);
                }
                out.push(']');
            }
            J::Arr(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    pad(out, indent + 2);
                    item.write(out, indent + 2);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push(']');
            }
            J::Obj(entries) if entries.is_empty() => out.push_str("{}"),
            J::Obj(entries) => {
                out.push_str("{\n");
                for (i, (k, v)) in entries.iter().enumerate() {
                    pad(out, indent + 2);
                    out.push_str(&serde_json::Value::from(k.as_str()).to_string());
                    out.push_str(": ");
                    v.write(out, indent + 2);
                    out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push('}');
            }
        }
    }
}

#[cfg(test)]
mod tests;
