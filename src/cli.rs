//! The command line: `serve`, `check`, `dev`, `audit verify|query|export`, `schema`.
//!
//! Exit codes: 0 success; 1 `check` found errors; 2 runtime failure; 64 (EX_USAGE) the
//! configuration given to `serve` is invalid.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Diagnostics};

/// fhirwall: a SMART on FHIR authorization gateway in front of FHIR and legacy EHR APIs.
#[derive(Debug, Parser)]
#[command(name = "fhirwall", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// Zero-downtime upgrade: take the listening sockets over from the running fhirwall
        /// through `upgrade_sock` (send that process SIGQUIT within 5 s of starting this one).
        #[arg(long, short)]
        upgrade: bool,
    },
    /// Validate a configuration and the policy it names; print every problem as
    /// `file:line:col: message` and exit non-zero if there is an error.
    Check {
        /// Configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a self-contained demo on loopback: the gateway, a sample FHIR server and a
    /// development token issuer. Never for production.
    Dev {
        /// Gateway listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listen address (`/metrics`, `/healthz`, `/readyz`).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// Port of the sample FHIR backend on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 8081)]
        backend_port: u16,
        /// Port of the development token issuer on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 8082)]
        issuer_port: u16,
        /// Where audit records go (default: a file in the demo's temporary folder).
        #[arg(long)]
        audit_path: Option<PathBuf>,
    },
    /// Work with audit files.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Explain how the policy decides one request: the route or FHIR engine rule that
    /// applies, the scopes needed and granted, and the checks the proxy would run. Exit 0
    /// allowed, 1 denied, 64 usage or configuration error.
    Explain {
        /// Configuration file (YAML), or a policy file.
        #[arg(long, short)]
        config: PathBuf,
        /// The token's scopes, space separated; without it the request has no token.
        #[arg(long)]
        scopes: Option<String>,
        /// The token's SMART patient context.
        #[arg(long)]
        patient: Option<String>,
        /// The token's `fhirUser`.
        #[arg(long)]
        fhir_user: Option<String>,
        /// A file with the request body (Bundles, POST _search forms, writes).
        #[arg(long)]
        body: Option<PathBuf>,
        /// The request method, e.g. GET.
        method: String,
        /// The request path with its query (`/fhir/Observation?patient=123`), or a URL.
        url: String,
    },
    /// Print the JSON Schema (draft 2020-12) of the configuration or the policy file, for
    /// editors and CI validators; the same files ship in `schemas/`.
    Schema {
        /// Which file format.
        #[arg(value_enum)]
        which: SchemaKind,
    },
}

/// The file formats `fhirwall schema` describes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SchemaKind {
    /// The gateway configuration file.
    Config,
    /// The policy file.
    Policy,
}

/// `fhirwall audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain (and signed checkpoints) of audit files. Prints
    /// "intact, N records" and exits 0, or names the first broken record and exits 1.
    Verify {
        /// Audit files or directories (rotated files are put in chain order).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The `<audit path>.checkpoints` file to check against (needs `--public-key`).
        #[arg(long, requires = "public_key")]
        checkpoints: Option<PathBuf>,
        /// Ed25519 public key (SPKI PEM) for the checkpoints.
        #[arg(long, requires = "checkpoints")]
        public_key: Option<PathBuf>,
    },
    /// Print the records of one patient, client or subject, in chain order.
    Query {
        /// Records whose SMART patient context is this id.
        #[arg(long, group = "who")]
        patient: Option<String>,
        /// Records of this client id.
        #[arg(long, group = "who")]
        client: Option<String>,
        /// Records of this token subject.
        #[arg(long, group = "who")]
        subject: Option<String>,
        /// Earliest time: RFC 3339 or YYYY-MM-DD (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Latest time: RFC 3339 or YYYY-MM-DD (inclusive, the whole day).
        #[arg(long)]
        to: Option<String>,
        /// `json` (one record per line) or `table`.
        #[arg(long, default_value = "json", value_parser = ["json", "table"])]
        format: String,
        /// Audit files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Convert records to FHIR R4 AuditEvent resources (IHE BALP RESTful activity
    /// profiles), one JSON resource per line (NDJSON, as FHIR bulk data uses).
    Export {
        /// Output format.
        #[arg(long, default_value = "auditevent", value_parser = ["auditevent"])]
        format: String,
        /// Audit files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Parses the command line and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, upgrade } => match Config::load_with_warnings(&config) {
            Ok((config, warnings)) => {
                init_logging(&config.log.level, config.log.json);
                log_warnings(&warnings);
                match crate::server::run_with(config, crate::server::RunOptions { upgrade }) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = format!("{e:#}"), "fhirwall failed to start");
                        eprintln!("fhirwall: {e:#}");
                        ExitCode::from(2)
                    }
                }
            }
            Err(diags) => {
                eprint!("{diags}");
                eprintln!("fhirwall: invalid configuration, not starting");
                ExitCode::from(64)
            }
        },
        Command::Check { config } => check(&config),
        Command::Explain {
            config,
            scopes,
            patient,
            fhir_user,
            body,
            method,
            url,
        } => explain(&config, scopes, patient, fhir_user, body, &method, &url),
        Command::Schema { which } => {
            print!(
                "{}",
                crate::schema::render(match which {
                    SchemaKind::Config => crate::schema::Which::Config,
                    SchemaKind::Policy => crate::schema::Which::Policy,
                })
            );
            ExitCode::SUCCESS
        }
        Command::Audit(AuditCommand::Verify {
            files,
            checkpoints,
            public_key,
        }) => audit_verify(&files, checkpoints, public_key),
        Command::Audit(AuditCommand::Query {
            patient,
            client,
            subject,
            from,
            to,
            format,
            files,
        }) => audit_query(patient, client, subject, from, to, &format, &files),
        Command::Audit(AuditCommand::Export { format: _, files }) => audit_export(&files),
        Command::Dev {
            listen,
            admin_listen,
            backend_port,
            issuer_port,
            audit_path,
        } => crate::dev::run(crate::dev::DevOptions {
            listen,
            admin_listen,
            backend_port,
            issuer_port,
            audit_path,
        }),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load_with_warnings(path) {
        Ok((config, warnings)) => {
            print!("{warnings}");
            println!(
                "{}: ok (policy {} version {}, {} routes, {} warnings)",
                path.display(),
                config.policy_path.display(),
                config.policy.version(),
                config.policy.route_ids().len(),
                warnings.0.len(),
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            print!("{diags}");
            let errors = diags
                .0
                .iter()
                .filter(|d| d.severity == crate::config::Severity::Error)
                .count();
            println!("{}: {errors} error(s)", path.display());
            ExitCode::from(1)
        }
    }
}

fn explain(
    config: &std::path::Path,
    scopes: Option<String>,
    patient: Option<String>,
    fhir_user: Option<String>,
    body: Option<PathBuf>,
    method: &str,
    url: &str,
) -> ExitCode {
    use crate::policy::Policy;
    // A gateway configuration names its policy; a policy file is accepted as it is.
    let policy = match Config::load(config) {
        Ok(c) => c.policy,
        Err(config_diags) => match Policy::load(config) {
            Ok(p) => std::sync::Arc::new(p),
            Err(_) => {
                eprint!("{config_diags}");
                eprintln!("fhirwall: invalid configuration");
                return ExitCode::from(64);
            }
        },
    };
    let Ok(method) = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        eprintln!("fhirwall: `{method}` is not an HTTP method");
        return ExitCode::from(64);
    };
    let body = match body.map(std::fs::read).transpose() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("fhirwall: cannot read the body file: {e}");
            return ExitCode::from(64);
        }
    };
    let principal = scopes.map(|s| crate::auth::Principal {
        issuer: std::sync::Arc::from("fhirwall-explain"),
        subject: None,
        client_id: None,
        fhir_user: fhir_user.map(Into::into),
        patient: patient.map(Into::into),
        jti: None,
        expires_at: u64::MAX,
        scopes: crate::policy::scope::GrantedScopes::parse(s.split_whitespace()),
    });
    let e = policy.explain_request(&method, url, body.as_deref(), principal.as_ref());
    print!("{}", e.text);
    if e.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn audit_verify(
    files: &[PathBuf],
    checkpoints: Option<PathBuf>,
    public_key: Option<PathBuf>,
) -> ExitCode {
    use crate::audit::verify::{verify, Options, Report};
    let mut opts = Options::default();
    if let (Some(cp), Some(key)) = (checkpoints, public_key) {
        match crate::audit::load_verifying_key(&key) {
            Ok(key) => opts.checkpoints = Some((cp, key)),
            Err(e) => {
                eprintln!("fhirwall: {e}");
                return ExitCode::from(2);
            }
        }
    }
    match verify(files, &opts) {
        Ok(report) => {
            println!("{report}");
            match report {
                Report::Intact { .. } => ExitCode::SUCCESS,
                Report::Broken(_) => ExitCode::from(1),
            }
        }
        Err(e) => {
            eprintln!("fhirwall: {e}");
            ExitCode::from(2)
        }
    }
}

fn audit_query(
    patient: Option<String>,
    client: Option<String>,
    subject: Option<String>,
    from: Option<String>,
    to: Option<String>,
    format: &str,
    files: &[PathBuf],
) -> ExitCode {
    use crate::audit::index::Key;
    use crate::audit::query::{parse_time, query, table_header, table_row, Filter};
    use std::io::Write;
    let (key, value) = match (patient, client, subject) {
        (Some(v), None, None) => (Key::Patient, v),
        (None, Some(v), None) => (Key::Client, v),
        (None, None, Some(v)) => (Key::Subject, v),
        _ => {
            eprintln!("fhirwall: give exactly one of --patient, --client, --subject");
            return ExitCode::from(64);
        }
    };
    let times = (
        from.map(|f| parse_time(&f, false)).transpose(),
        to.map(|t| parse_time(&t, true)).transpose(),
    );
    let (from, to) = match times {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fhirwall: bad time {e}");
            return ExitCode::from(64);
        }
    };
    let filter = Filter {
        key,
        value,
        from,
        to,
    };
    let table = format == "table";
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if table {
        let _ = writeln!(out, "{}", table_header());
    }
    let result = query(files, &filter, |v| {
        if table {
            writeln!(out, "{}", table_row(v))
        } else {
            writeln!(out, "{v}")
        }
    });
    let _ = out.flush();
    match result {
        Ok(stats) => {
            eprintln!(
                "{} records ({} files: {} by index, {} scanned, {} outside the time range)",
                stats.matched, stats.files, stats.indexed, stats.scanned, stats.skipped
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fhirwall: {e}");
            ExitCode::from(2)
        }
    }
}

fn audit_export(files: &[PathBuf]) -> ExitCode {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = crate::audit::query::each_record(files, |v| {
        writeln!(out, "{}", crate::audit::fhir::audit_event(v))
    });
    let _ = out.flush();
    match result {
        Ok(n) => {
            eprintln!("{n} AuditEvent resources");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fhirwall: {e}");
            ExitCode::from(2)
        }
    }
}

fn log_warnings(w: &Diagnostics) {
    for d in &w.0 {
        tracing::warn!("{d}");
    }
}

/// Sets up operational logs on stderr (`tracing`), once per process. `RUST_LOG` overrides
/// the configured level.
pub fn init_logging(level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
