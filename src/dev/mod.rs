//! `fhirwall dev`: the gateway with a sample FHIR backend and a development token issuer,
//! all on loopback. (Stub: implemented by the dev work.)

use std::net::SocketAddr;
use std::path::PathBuf;

/// Options of `fhirwall dev`.
pub struct DevOptions {
    /// Gateway listen address.
    pub listen: SocketAddr,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// Backend port (0 = any).
    pub backend_port: u16,
    /// Issuer port (0 = any).
    pub issuer_port: u16,
    /// Audit file.
    pub audit_path: Option<PathBuf>,
}

/// Runs the demo.
pub fn run(opts: DevOptions) -> std::process::ExitCode {
    let _ = opts;
    todo!()
}
