//! Audit targets: where the writer's bytes go, and how to (re)open them after a failure.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Opens the byte sink the writer writes to. The writer asks for a fresh one after every
/// failed write, so a target that can recover (disk space freed, file recreated) does.
pub(super) trait MakeWriter: Send + 'static {
    /// Returns a writer positioned at the end of the target.
    fn make_writer(&mut self) -> io::Result<Box<dyn Write + Send>>;

    /// The target, for operator messages (`stdout` or the file path).
    fn describe(&self) -> &str;
}

/// Standard output (the container log stream).
pub(super) struct StdoutTarget;

/// An append-only file.
pub(super) struct FileTarget {
    path: PathBuf,
    display: String,
    /// The handle opened at startup, used for the first writer so that an unwritable file
    /// is a startup error rather than the first write's.
    opened: Option<File>,
}

// === impl StdoutTarget ===

impl MakeWriter for StdoutTarget {
    fn make_writer(&mut self) -> io::Result<Box<dyn Write + Send>> {
        Ok(Box::new(io::stdout()))
    }

    fn describe(&self) -> &str {
        "stdout"
    }
}

// === impl FileTarget ===

impl FileTarget {
    /// Opens (creating if needed) `path` for append.
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        let file = open_append(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open audit file {}: {e}", path.display()),
            )
        })?;
        warn_if_shared(path, &file);
        Ok(Self {
            path: path.to_owned(),
            display: path.display().to_string(),
            opened: Some(file),
        })
    }
}

impl MakeWriter for FileTarget {
    fn make_writer(&mut self) -> io::Result<Box<dyn Write + Send>> {
        let file = match self.opened.take() {
            Some(file) => file,
            None => open_append(&self.path)?,
        };
        Ok(Box::new(file))
    }

    fn describe(&self) -> &str {
        &self.display
    }
}

/// Opens for append, creating the file owner-only: audit records carry patient ids.
fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// The mode only applies to files we create; an existing file keeps its permissions, which
/// the operator should hear about if they let others read the trail.
fn warn_if_shared(path: &Path, file: &File) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = file.metadata() {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    audit.file = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "audit file is accessible to group or others; consider chmod 600"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, file);
}
