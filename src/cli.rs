//! The command line: `serve`, `check`, `dev`.
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
}

/// Parses the command line and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => match Config::load_with_warnings(&config) {
            Ok((config, warnings)) => {
                init_logging(&config.log.level, config.log.json);
                log_warnings(&warnings);
                match crate::server::run(config) {
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
