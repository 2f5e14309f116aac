//! Serde mirror of the configuration file. (Stub: implemented by the config work.)

use std::path::Path;

use super::{Config, Diagnostics};

pub(super) fn load(path: &Path) -> Result<Config, Diagnostics> {
    let _ = path;
    todo!()
}

pub(super) fn load_str(src: &str, path: &Path) -> Result<Config, Diagnostics> {
    let _ = (src, path);
    todo!()
}
