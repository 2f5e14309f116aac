//! Audit targets: where the writer's bytes go, how to (re)open them after a failure, where
//! the hash chain resumes after a restart, and file rotation.
//!
//! Rotation renames the active file to `<name>.<first seq, 20 digits>`, so rotated names
//! sort in chain order, and the next write creates a fresh active file whose first record
//! links to the last record of the rotated one (the chain head lives in the writer, not in
//! the file).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::chain::{ChainHead, ChainedLine};

/// A writer the audit writer can also make durable.
pub(super) trait SyncWrite: Write + Send {
    /// Makes everything written so far durable (`fdatasync` for files).
    fn sync(&mut self) -> io::Result<()>;
}

impl SyncWrite for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl SyncWrite for io::Stdout {
    fn sync(&mut self) -> io::Result<()> {
        self.flush()
    }
}

/// Opens the byte sink the writer writes to. The writer asks for a fresh one after every
/// failed write, so a target that can recover (disk space freed, file recreated) does.
pub(super) trait MakeWriter: Send + 'static {
    /// Returns a writer positioned at the end of the target.
    fn make_writer(&mut self) -> io::Result<Box<dyn SyncWrite>>;

    /// The target, for operator messages (`stdout` or the file path).
    fn describe(&self) -> &str;

    /// Where the chain continues: the last record already in the target, or genesis.
    fn resume(&mut self) -> io::Result<ChainHead> {
        Ok(ChainHead::genesis())
    }

    /// Called after `bytes` more were written successfully. Returns true when the target
    /// rotated, so the current writer must be dropped and a new one made.
    fn after_write(&mut self, bytes: u64) -> bool {
        let _ = bytes;
        false
    }
}

/// When to rotate a file target.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rotation {
    /// At or above this size.
    pub(super) bytes: Option<u64>,
    /// After this long.
    pub(super) interval: Option<Duration>,
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
    rotation: Rotation,
    /// Bytes in the active file.
    size: u64,
    /// When the active file was started (or the gateway started).
    started: Instant,
}

// === impl StdoutTarget ===

impl MakeWriter for StdoutTarget {
    fn make_writer(&mut self) -> io::Result<Box<dyn SyncWrite>> {
        Ok(Box::new(io::stdout()))
    }

    fn describe(&self) -> &str {
        "stdout"
    }
}

// === impl FileTarget ===

impl FileTarget {
    /// Opens (creating if needed) `path` for append.
    pub(super) fn open(path: &Path, rotation: Rotation) -> io::Result<Self> {
        // The chain is resumed by reading the file's tail and the trail is rotated by renaming
        // it: both need a regular file. A device or a pipe (e.g. `/dev/full`) would make the
        // resume read forever; refuse it at start (use `path: stdout` to ship records).
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "audit file {} is not a regular file (use `audit.path: stdout` for a pipe)",
                        path.display()
                    ),
                ));
            }
        }
        let file = open_append(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open audit file {}: {e}", path.display()),
            )
        })?;
        warn_if_shared(path, &file);
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            display: path.display().to_string(),
            opened: Some(file),
            rotation,
            size,
            started: Instant::now(),
        })
    }

    /// Renames the active file to `<name>.<first seq>`; the next writer starts a new one.
    fn rotate(&mut self) -> io::Result<PathBuf> {
        let first = read_first_seq(&self.path)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "active file has no chained record",
            )
        })?;
        let to = rotated_name(&self.path, first);
        std::fs::rename(&self.path, &to)?;
        // Make the rename itself durable before records go to the new file.
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        self.size = 0;
        self.started = Instant::now();
        Ok(to)
    }
}

/// `<path>.<seq, 20 digits>`: sorts in chain order.
pub(super) fn rotated_name(path: &Path, first_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{first_seq:020}"));
    PathBuf::from(name)
}

/// The rotated siblings of `path`, oldest first.
pub(crate) fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(suffix) = name.strip_prefix(base).and_then(|s| s.strip_prefix('.')) {
            if suffix.len() == 20 && suffix.bytes().all(|b| b.is_ascii_digit()) {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The sequence number of the first record in a file, if it has one.
pub(crate) fn read_first_seq(path: &Path) -> io::Result<Option<u64>> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let Some(end) = buf[..n].iter().position(|b| *b == b'\n') else {
        return Ok(None);
    };
    Ok(ChainedLine::parse(&buf[..end]).ok().map(|l| l.seq))
}

/// The last complete line of `file`, after cutting off a torn (unterminated) tail, which
/// only a crash in the middle of a write leaves. Returns the line and how many torn bytes
/// were removed.
fn last_line(file: &mut File) -> io::Result<(Option<Vec<u8>>, u64)> {
    let len = file.metadata()?.len();
    let window = len.min(1024 * 1024);
    file.seek(SeekFrom::Start(len - window))?;
    let mut buf = Vec::with_capacity(window as usize);
    file.read_to_end(&mut buf)?;
    let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
        return Ok((None, 0));
    };
    let torn = (buf.len() - last_nl - 1) as u64;
    if torn > 0 {
        file.set_len(len - torn)?;
        file.sync_data()?;
    }
    let start = buf[..last_nl]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    Ok((Some(buf[start..last_nl].to_vec()), torn))
}

/// The chain head stored as the last line of `path`.
fn head_of(path: &Path) -> io::Result<Option<ChainHead>> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let (line, torn) = last_line(&mut file)?;
    if torn > 0 {
        tracing::warn!(
            audit.file = %path.display(),
            torn_bytes = torn,
            "audit file ended in an incomplete record (a crash during a write); cut it off"
        );
    }
    let Some(line) = line else { return Ok(None) };
    match ChainedLine::parse(&line) {
        Ok(l) => Ok(Some(ChainHead {
            seq: l.seq,
            hash: l.hash,
        })),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the last line of {} is not a chained audit record; move the file aside to start a new chain",
                path.display()
            ),
        )),
    }
}

impl MakeWriter for FileTarget {
    fn make_writer(&mut self) -> io::Result<Box<dyn SyncWrite>> {
        let file = match self.opened.take() {
            Some(file) => file,
            None => open_append(&self.path)?,
        };
        Ok(Box::new(file))
    }

    fn describe(&self) -> &str {
        &self.display
    }

    fn resume(&mut self) -> io::Result<ChainHead> {
        if let Some(head) = head_of(&self.path)? {
            return Ok(head);
        }
        self.size = 0;
        // The active file is empty: continue from the newest rotated file, if any.
        if let Some(last) = rotated_files(&self.path)?.pop() {
            if let Some(head) = head_of(&last)? {
                return Ok(head);
            }
        }
        Ok(ChainHead::genesis())
    }

    fn after_write(&mut self, bytes: u64) -> bool {
        self.size += bytes;
        let by_size = self.rotation.bytes.is_some_and(|max| self.size >= max);
        let by_time = self
            .rotation
            .interval
            .is_some_and(|max| self.started.elapsed() >= max);
        if !(by_size || by_time) || self.size == 0 {
            return false;
        }
        match self.rotate() {
            Ok(to) => {
                tracing::info!(audit.file = %self.display, audit.rotated_to = %to.display(), "audit file rotated");
                // The sidecar index for `audit query`, off the writer's path: a missing
                // index only makes queries read the file.
                let spawned = std::thread::Builder::new()
                    .name("audit-index".into())
                    .spawn(move || {
                        if let Err(e) = super::index::build(&to) {
                            tracing::warn!(audit.file = %to.display(), error = %e, "audit index not written");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "audit index thread not started");
                }
                true
            }
            Err(e) => {
                // Keep writing to the same file: a late rotation loses nothing.
                tracing::error!(audit.file = %self.display, error = %e, "audit file rotation failed");
                false
            }
        }
    }
}

/// Opens for append, creating the file owner-only: audit records carry patient ids.
pub(super) fn open_append(path: &Path) -> io::Result<File> {
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
