//! `fhirwall dev`: the gateway with a sample FHIR backend and a development token issuer,
//! all on loopback, so a newcomer can see allowed and denied requests in one command.
//!
//! [`run`] writes the shipped FHIR R4 policy and a generated gateway configuration into a
//! temporary folder, starts [`backend`] (synthetic FHIR R4 records, [`data`]) and [`issuer`]
//! (ES256 JWTs for any scope, no client authentication) on a tokio runtime in a background
//! thread, prints ready-to-paste curl commands, and then runs the real gateway
//! ([`crate::server::run`]) in the foreground with the real configuration loader, so the
//! demo exercises exactly what production runs (JWKS discovery included).
//!
//! Exit codes: 1 when the generated configuration does not load, 2 when something cannot
//! start or the gateway stops with an error.

pub mod backend;
pub mod data;
mod httputil;
pub mod issuer;

pub use backend::BackendInfo;
pub use issuer::{DevIssuer, MintRequest, TokenResponse};

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;

/// The FHIR R4 policy shipped with fhirwall, written next to the generated configuration.
const POLICY: &str = include_str!("../../policies/fhir-r4.yaml");

/// File name of the policy in the dev folder (the configuration refers to it relatively).
const POLICY_FILE: &str = "fhir-r4.yaml";

/// File name of the generated gateway configuration.
const CONFIG_FILE: &str = "fhirwall-dev.yaml";

/// Options of `fhirwall dev` (the CLI maps flags of the same names onto these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevOptions {
    /// Gateway listen address (default `127.0.0.1:8080`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Admin listener: `/metrics`, `/healthz`, `/readyz` (default `127.0.0.1:9090`).
    pub admin_listen: SocketAddr,
    /// Port of the sample FHIR backend on 127.0.0.1 (default 8081; 0 = any free port).
    pub backend_port: u16,
    /// Port of the development token issuer on 127.0.0.1 (default 8082; 0 = any free port).
    pub issuer_port: u16,
    /// Audit file; default `audit.jsonl` in the dev temporary folder.
    pub audit_path: Option<PathBuf>,
}

/// The addresses of one dev run, as printed in the banner.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoints {
    gateway: SocketAddr,
    admin: SocketAddr,
    backend: SocketAddr,
    issuer: SocketAddr,
    audit: PathBuf,
    dir: PathBuf,
}

/// The backend and issuer addresses, once both listen.
struct Started {
    backend: SocketAddr,
    issuer: SocketAddr,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            admin_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
            backend_port: 8081,
            issuer_port: 8082,
            audit_path: None,
        }
    }
}

/// Runs `fhirwall dev`: starts the sample backend and the dev issuer, prints how to use
/// them, and runs the gateway until the process is stopped.
pub fn run(opts: DevOptions) -> ExitCode {
    match run_inner(opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fhirwall dev: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(opts: DevOptions) -> io::Result<ExitCode> {
    // The gateway's own port must be known now: it is part of the token audience.
    let gateway = concrete(opts.listen)?;
    let admin = concrete(opts.admin_listen)?;
    for (what, addr) in [("gateway", gateway), ("admin listener", admin)] {
        if !addr.ip().is_loopback() {
            eprintln!(
                "fhirwall dev: WARNING: the {what} listens on {addr}, beyond loopback; \
                 the demo serves synthetic data only, but keep it off shared networks"
            );
        }
    }

    let dir = prepare_dir()?;
    std::fs::write(dir.join(POLICY_FILE), POLICY)
        .map_err(|e| with_path(e, &dir.join(POLICY_FILE)))?;
    let audit = opts
        .audit_path
        .clone()
        .unwrap_or_else(|| dir.join("audit.jsonl"));

    let fhir_base = fhir_base_url(gateway);
    let started = start_services(opts.backend_port, opts.issuer_port, fhir_base)?;
    let endpoints = Endpoints {
        gateway,
        admin,
        backend: started.backend,
        issuer: started.issuer,
        audit,
        dir: dir.clone(),
    };

    let config_path = dir.join(CONFIG_FILE);
    std::fs::write(&config_path, gateway_config_yaml(&endpoints))
        .map_err(|e| with_path(e, &config_path))?;
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            eprintln!("fhirwall dev: the generated configuration did not load (see above)");
            return Ok(ExitCode::from(1));
        }
    };

    eprintln!("{}", dev_warning());
    println!("{}", banner(&endpoints));

    match crate::server::run(config) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("fhirwall dev: the gateway stopped: {e:#}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Resolves port 0 to a free port now, because the audience in tokens must name the port
/// clients use. (Another process could take it before the gateway binds; for a dev tool
/// the gateway's bind error then says so.)
fn concrete(addr: SocketAddr) -> io::Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let probe = std::net::TcpListener::bind(addr)?;
    probe.local_addr()
}

/// The FHIR base URL clients use through the gateway; an unspecified listen address is
/// reached through loopback.
fn fhir_base_url(gateway: SocketAddr) -> String {
    let host = match gateway.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/fhir", SocketAddr::new(host, gateway.port()))
}

/// Creates (or reuses) `$TMPDIR/fhirwall-dev-<pid>`, private to the user on Unix. A symlink
/// or a file in its place is refused: another local user could have planted it.
fn prepare_dir() -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fhirwall-dev-{}", std::process::id()));
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => return Ok(dir),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory; remove it", dir.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(with_path(e, &dir)),
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(&dir).map_err(|e| with_path(e, &dir))?;
    Ok(dir)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Binds the backend and the issuer on 127.0.0.1 and serves them on a tokio runtime owned
/// by a background thread; returns once both listen (or the first bind error).
fn start_services(backend_port: u16, issuer_port: u16, fhir_base: String) -> io::Result<Started> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Started>>(1);
    std::thread::Builder::new()
        .name("fhirwall-dev".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("fhirwall-dev-rt")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let bound = async {
                    let backend = bind("sample backend", "--backend-port", backend_port).await?;
                    let issuer = bind("dev issuer", "--issuer-port", issuer_port).await?;
                    Ok::<_, io::Error>((
                        backend.local_addr()?,
                        backend,
                        issuer.local_addr()?,
                        issuer,
                    ))
                }
                .await;
                let (backend_addr, backend_listener, issuer_addr, issuer_listener) = match bound {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let issuer_url = format!("http://{issuer_addr}");
                let issuer = Arc::new(DevIssuer::generate(issuer_url.clone(), fhir_base.clone()));
                let info = BackendInfo {
                    base_url: fhir_base,
                    issuer_url,
                };
                let _ = tx.send(Ok(Started {
                    backend: backend_addr,
                    issuer: issuer_addr,
                }));
                let (b, i) = tokio::join!(
                    backend::serve(backend_listener, info),
                    issuer.serve(issuer_listener)
                );
                for (what, result) in [("sample backend", b), ("dev issuer", i)] {
                    if let Err(e) = result {
                        eprintln!("fhirwall dev: the {what} stopped: {e}");
                    }
                }
            });
        })?;
    rx.recv()
        .map_err(|_| io::Error::other("the dev services thread ended before it started"))?
}

async fn bind(what: &str, flag: &str, port: u16) -> io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on 127.0.0.1:{port} for the {what}: {e} (choose another port with {flag}; 0 = any)"),
        )
    })
}

/// The gateway configuration of a dev run. Strings are written as JSON strings, which
/// YAML reads as double-quoted scalars, so any path survives quoting.
fn gateway_config_yaml(e: &Endpoints) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let fhir_base = fhir_base_url(e.gateway);
    format!(
        "# Generated by `fhirwall dev` for a development run on loopback. Do not use in production:\n\
         # the issuer below hands out tokens to anyone.\n\
         listen: [{listen}]\n\
         admin_listen: {admin}\n\
         policy: {policy}\n\
         upstream:\n  url: {upstream}\n\
         issuers:\n  - issuer: {issuer}\n    audiences: [{audience}]\n\
         audit:\n  path: {audit}\n\
         log:\n  level: info\n",
        listen = q(&e.gateway.to_string()),
        admin = q(&e.admin.to_string()),
        policy = q(POLICY_FILE),
        upstream = q(&format!("http://{}", e.backend)),
        issuer = q(&format!("http://{}", e.issuer)),
        audience = q(&fhir_base),
        audit = q(&e.audit.to_string_lossy()),
    )
}

fn dev_warning() -> &'static str {
    "\
**************************************************************************
*  fhirwall dev: DEVELOPMENT MODE. The token issuer grants ANY scope for  *
*  ANY patient to anyone who asks, with no client authentication.         *
*  Never use it, its tokens or this configuration in production.          *
**************************************************************************"
}

/// The start-up banner: where everything is and curl commands to paste into bash.
fn banner(e: &Endpoints) -> String {
    let fhir = fhir_base_url(e.gateway);
    let issuer = format!("http://{}", e.issuer);
    let pat = data::PATIENT_IDS[0];
    let other = data::PATIENT_IDS[1];
    let mut b = String::new();
    let _ = writeln!(b, "fhirwall dev is starting (synthetic data only):");
    let _ = writeln!(b, "  Gateway FHIR base   {fhir}");
    let _ = writeln!(
        b,
        "  Admin               http://{}/metrics  /healthz  /readyz",
        e.admin
    );
    let _ = writeln!(
        b,
        "  Sample FHIR server  http://{}/fhir  (direct, unprotected; compare with the gateway)",
        e.backend
    );
    let _ = writeln!(
        b,
        "  Dev token issuer    {issuer}  (NEVER use in production)"
    );
    let _ = writeln!(b, "  Audit records       {}", e.audit.display());
    let _ = writeln!(b, "  Config and policy   {}", e.dir.display());
    let _ = writeln!(b, "  Patients            {}", data::PATIENT_IDS.join(", "));
    let _ = writeln!(b);
    let _ = writeln!(b, "Try it (bash; no jq needed):");
    let _ = writeln!(b);
    let _ = writeln!(
        b,
        "  # Mint a token for patient {pat} with Patient and Observation read+search scopes"
    );
    let _ = writeln!(
        b,
        "  TOKEN=$(curl -s -d grant_type=client_credentials -d 'scope=patient/Patient.rs patient/Observation.rs' \
         -d patient={pat} {issuer}/token | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')"
    );
    let _ = writeln!(b);
    let _ = writeln!(b, "  # 200: read the patient in context");
    let _ = writeln!(
        b,
        "  curl -i -H \"Authorization: Bearer $TOKEN\" {fhir}/Patient/{pat}"
    );
    let _ = writeln!(b);
    let _ = writeln!(
        b,
        "  # 200: that patient's observations (a searchset Bundle)"
    );
    let _ = writeln!(
        b,
        "  curl -i -H \"Authorization: Bearer $TOKEN\" '{fhir}/Observation?patient={pat}'"
    );
    let _ = writeln!(b);
    let _ = writeln!(
        b,
        "  # 403 insufficient_scope: Condition search needs patient/Condition.s"
    );
    let _ = writeln!(
        b,
        "  curl -i -H \"Authorization: Bearer $TOKEN\" '{fhir}/Condition?patient={pat}'"
    );
    let _ = writeln!(b);
    let _ = writeln!(
        b,
        "  # 403: another patient's record is outside the token's patient context"
    );
    let _ = writeln!(
        b,
        "  curl -i -H \"Authorization: Bearer $TOKEN\" {fhir}/Patient/{other}"
    );
    let _ = writeln!(b);
    let _ = writeln!(b, "  # 401 invalid_token: a token that does not verify");
    let _ = writeln!(
        b,
        "  curl -i -H 'Authorization: Bearer not-a-real-token' {fhir}/Patient/{pat}"
    );
    let _ = writeln!(b);
    let _ = writeln!(
        b,
        "  # 200 without a token: public SMART discovery and the CapabilityStatement"
    );
    let _ = writeln!(b, "  curl -s {fhir}/.well-known/smart-configuration");
    let _ = writeln!(b, "  curl -s {fhir}/metadata");
    let _ = writeln!(b);
    let _ = writeln!(b, "  # One audit record per request");
    let _ = write!(b, "  tail -f {}", shell_quote(&e.audit.to_string_lossy()));
    b
}

/// Quotes `s` for bash when it holds anything but safe path characters.
fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"/._-+:,@".contains(&c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The scopes the dev issuer and the sample backend advertise: read+search on every served
/// type in every context, and Observation create (what the shipped policy grants).
pub(crate) fn scopes_supported() -> Vec<String> {
    let mut out = Vec::new();
    for context in ["patient", "user", "system"] {
        for ty in data::RESOURCE_TYPES {
            out.push(format!("{context}/{ty}.rs"));
        }
        out.push(format!("{context}/Observation.c"));
    }
    out
}

/// A random (version 4) UUID, RFC 9562 §5.4.
pub(crate) fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The current time as a FHIR `instant` (UTC, millisecond precision).
pub(crate) fn now_instant() -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(FORMAT)
        .unwrap_or_else(|_| data::SEED_LAST_UPDATED.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints {
            gateway: "127.0.0.1:8080".parse().unwrap(),
            admin: "127.0.0.1:9090".parse().unwrap(),
            backend: "127.0.0.1:8081".parse().unwrap(),
            issuer: "127.0.0.1:8082".parse().unwrap(),
            audit: PathBuf::from("/tmp/fhirwall-dev-1/audit \"x\".jsonl"),
            dir: PathBuf::from("/tmp/fhirwall-dev-1"),
        }
    }

    #[test]
    fn default_options_match_the_documented_ports() {
        let o = DevOptions::default();
        assert_eq!(o.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(o.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!((o.backend_port, o.issuer_port), (8081, 8082));
        assert!(o.audit_path.is_none());
    }

    #[test]
    fn gateway_config_names_every_service_and_quotes_paths() {
        let yaml = gateway_config_yaml(&endpoints());
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(doc["listen"][0].as_str(), Some("127.0.0.1:8080"));
        assert_eq!(doc["admin_listen"].as_str(), Some("127.0.0.1:9090"));
        assert_eq!(doc["policy"].as_str(), Some("fhir-r4.yaml"));
        assert_eq!(
            doc["upstream"]["url"].as_str(),
            Some("http://127.0.0.1:8081")
        );
        assert_eq!(
            doc["issuers"][0]["issuer"].as_str(),
            Some("http://127.0.0.1:8082")
        );
        assert_eq!(
            doc["issuers"][0]["audiences"][0].as_str(),
            Some("http://127.0.0.1:8080/fhir")
        );
        assert!(
            doc["issuers"][0].get("jwks_uri").is_none(),
            "JWKS comes from discovery"
        );
        assert_eq!(
            doc["audit"]["path"].as_str(),
            Some("/tmp/fhirwall-dev-1/audit \"x\".jsonl")
        );
        assert_eq!(doc["log"]["level"].as_str(), Some("info"));
    }

    #[test]
    fn unspecified_listen_addresses_are_reached_through_loopback() {
        assert_eq!(
            fhir_base_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080/fhir"
        );
        assert_eq!(
            fhir_base_url("[::]:8080".parse().unwrap()),
            "http://[::1]:8080/fhir"
        );
        assert_eq!(
            fhir_base_url("127.0.0.2:1".parse().unwrap()),
            "http://127.0.0.2:1/fhir"
        );
    }

    #[test]
    fn port_zero_is_resolved_before_the_audience_is_written() {
        let addr = concrete("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(addr.port(), 0);
        let fixed: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(concrete(fixed).unwrap(), fixed);
    }

    #[test]
    fn banner_commands_use_this_runs_urls() {
        let b = banner(&endpoints());
        assert!(b.contains("-d patient=pat-1 http://127.0.0.1:8082/token | sed -E"));
        assert!(b.contains("http://127.0.0.1:8080/fhir/Patient/pat-1"));
        assert!(b.contains("'http://127.0.0.1:8080/fhir/Condition?patient=pat-1'"));
        assert!(b.contains("Bearer not-a-real-token"));
        assert!(b.contains("curl -s http://127.0.0.1:8080/fhir/metadata"));
        assert!(b.contains("tail -f '/tmp/fhirwall-dev-1/audit \"x\".jsonl'"));
    }

    #[test]
    fn banner_sed_extracts_the_token_from_a_real_token_response() {
        let issuer = DevIssuer::generate(
            "http://127.0.0.1:8082".into(),
            "http://127.0.0.1:8080/fhir".into(),
        );
        let token = issuer
            .mint(&MintRequest::client_credentials("patient/Patient.rs").with_patient("pat-1"))
            .unwrap();
        let body = serde_json::to_string(&token).unwrap();
        // The sed expression of the banner, in Rust: the compact JSON the issuer writes has
        // `"access_token":"` immediately followed by the token, which holds no quote.
        let marker = "\"access_token\":\"";
        let start = body.find(marker).unwrap() + marker.len();
        let end = start + body[start..].find('"').unwrap();
        assert_eq!(&body[start..end], token.access_token);
    }

    #[test]
    fn shell_quote_leaves_plain_paths_alone() {
        assert_eq!(shell_quote("/tmp/a-b/c.jsonl"), "/tmp/a-b/c.jsonl");
        assert_eq!(shell_quote("/tmp/it's"), r"'/tmp/it'\''s'");
    }

    #[test]
    fn uuids_are_version_4() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, random_uuid());
    }

    #[test]
    fn instants_are_fhir_instants() {
        let now = now_instant();
        assert_eq!(now.len(), "2024-05-02T08:00:00.000Z".len());
        assert!(now.ends_with('Z'));
    }

    #[tokio::test]
    async fn services_start_on_loopback_and_point_at_each_other() {
        let base = "http://127.0.0.1:18080/fhir".to_owned();
        let started = tokio::task::spawn_blocking(move || start_services(0, 0, base))
            .await
            .unwrap()
            .unwrap();
        assert!(started.backend.ip().is_loopback() && started.issuer.ip().is_loopback());
        let client = reqwest::Client::new();
        let smart: serde_json::Value = client
            .get(format!(
                "http://{}/fhir/.well-known/smart-configuration",
                started.backend
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let issuer = format!("http://{}", started.issuer);
        assert_eq!(smart["issuer"], issuer.as_str());
        let token: TokenResponse = client
            .post(smart["token_endpoint"].as_str().unwrap())
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "patient/Patient.rs"),
                ("patient", "pat-1"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let claims: serde_json::Value = {
            let payload = token.access_token.split('.').nth(1).unwrap();
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap();
            serde_json::from_slice(&raw).unwrap()
        };
        assert_eq!(claims["iss"], issuer.as_str());
        assert_eq!(
            claims["aud"], "http://127.0.0.1:18080/fhir",
            "the audience is the gateway's FHIR base"
        );
    }

    #[test]
    fn advertised_scopes_cover_every_served_type() {
        let scopes = scopes_supported();
        for ty in data::RESOURCE_TYPES {
            assert!(scopes.contains(&format!("patient/{ty}.rs")));
        }
        assert!(scopes.contains(&"system/Observation.c".to_owned()));
    }
}
