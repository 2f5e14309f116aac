//! Wiring. (Being written.)

use crate::config::Config;

/// Runs the gateway until it is stopped. Does not return on success.
pub fn run(config: Config) -> anyhow::Result<()> {
    let _ = config;
    todo!()
}
