//! `fhirwall audit query`: the records of one patient, client or subject, optionally within a
//! time range, over a set of (rotated) audit files.
//!
//! Files are taken in chain order. A file with a fresh sidecar index ([`super::index`]) is
//! skipped when its time range misses the query's, and otherwise answered by an index lookup
//! plus one read per match; a rotated file without an index gets one built first (if the
//! directory is writable); the active file (bounded by `rotate_bytes`) is scanned.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::chain::ChainedLine;
use super::index::{self, Index, Key};
use super::verify::collect_files;

/// What to look for.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Which field.
    pub key: Key,
    /// Its value.
    pub value: String,
    /// Earliest `time` (inclusive), in the records' fixed RFC 3339 form.
    pub from: Option<String>,
    /// Latest `time` (inclusive).
    pub to: Option<String>,
}

/// How the query went, for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Files considered.
    pub files: usize,
    /// Files answered from their index.
    pub indexed: usize,
    /// Files skipped by time range.
    pub skipped: usize,
    /// Files read line by line.
    pub scanned: usize,
    /// Records returned.
    pub matched: u64,
}

/// Normalises a `--from`/`--to` argument: RFC 3339 (any offset) or a date `YYYY-MM-DD`
/// (the start of the day for `from`, its end for `to`), to the records' form
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, which compares correctly as text.
pub fn parse_time(s: &str, end_of_day: bool) -> Result<String, String> {
    use time::format_description::well_known::Rfc3339;
    if s.len() == 10 {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        let date = time::Date::parse(s, &fmt).map_err(|e| format!("{s}: {e}"))?;
        return Ok(if end_of_day {
            format!("{date}T23:59:59.999Z")
        } else {
            format!("{date}T00:00:00.000Z")
        });
    }
    let t = time::OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("{s}: {e}"))?;
    Ok(super::rfc3339(t.into()))
}

/// Runs the query, calling `emit` with each matching record (as JSON, with `seq`) in chain
/// order.
pub fn query(
    paths: &[PathBuf],
    filter: &Filter,
    mut emit: impl FnMut(&Value) -> io::Result<()>,
) -> io::Result<Stats> {
    let mut stats = Stats::default();
    for file in collect_files(paths)? {
        stats.files += 1;
        let mut idx = Index::open_fresh(&file)?;
        if idx.is_none() && is_rotated(&file) && index::build(&file).is_ok() {
            idx = Index::open_fresh(&file)?;
        }
        match idx {
            Some(mut idx) => {
                let s = &idx.summary;
                let misses = filter
                    .from
                    .as_deref()
                    .is_some_and(|f| s.max_time.as_str() < f)
                    || filter
                        .to
                        .as_deref()
                        .is_some_and(|t| s.min_time.as_str() > t);
                if misses || s.records == 0 {
                    stats.skipped += 1;
                    continue;
                }
                stats.indexed += 1;
                let mut offsets = idx.lookup(filter.key, &filter.value)?;
                offsets.sort_unstable();
                let mut reader = BufReader::new(File::open(&file)?);
                let mut line = Vec::with_capacity(1024);
                for off in offsets {
                    reader.seek(SeekFrom::Start(off))?;
                    line.clear();
                    reader.read_until(b'\n', &mut line)?;
                    if let Some(v) = matching(&line, filter) {
                        stats.matched += 1;
                        emit(&v)?;
                    }
                }
            }
            None => {
                stats.scanned += 1;
                let mut reader = BufReader::with_capacity(1 << 20, File::open(&file)?);
                let mut line = Vec::with_capacity(1024);
                let needle = memchr::memmem::Finder::new(filter.value.as_bytes());
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line)? == 0 {
                        break;
                    }
                    // Cheap pre-filter before parsing: the value must appear somewhere.
                    if needle.find(&line).is_none() {
                        continue;
                    }
                    if let Some(v) = matching(&line, filter) {
                        stats.matched += 1;
                        emit(&v)?;
                    }
                }
            }
        }
    }
    Ok(stats)
}

/// Calls `emit` with every record of `paths` (files or directories), in chain order.
pub fn each_record(
    paths: &[PathBuf],
    mut emit: impl FnMut(&Value) -> io::Result<()>,
) -> io::Result<u64> {
    let mut n = 0;
    for file in collect_files(paths)? {
        let mut reader = BufReader::with_capacity(1 << 20, File::open(&file)?);
        let mut line = Vec::with_capacity(1024);
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let Some(rec) = line
                .strip_suffix(b"\n")
                .and_then(|l| ChainedLine::parse(l).ok())
            else {
                continue;
            };
            if let Ok(v) = serde_json::from_slice::<Value>(&rec.json()) {
                n += 1;
                emit(&v)?;
            }
        }
    }
    Ok(n)
}

/// The record on `line` if it matches the filter.
fn matching(line: &[u8], filter: &Filter) -> Option<Value> {
    let rec = ChainedLine::parse(line.strip_suffix(b"\n")?).ok()?;
    let v: Value = serde_json::from_slice(&rec.json()).ok()?;
    let named = filter.key == Key::Patient
        && v["patients"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p.as_str() == Some(filter.value.as_str())));
    if !named && v[filter.key.field()].as_str() != Some(filter.value.as_str()) {
        return None;
    }
    let time = v["time"].as_str().unwrap_or("");
    if filter.from.as_deref().is_some_and(|f| time < f)
        || filter.to.as_deref().is_some_and(|t| time > t)
    {
        return None;
    }
    Some(v)
}

/// `<name>.<20 digits>`: a file rotation closed, which will not grow any more.
fn is_rotated(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.len() == 20 && e.bytes().all(|b| b.is_ascii_digit()))
}

/// One line of the `table` format.
pub fn table_row(v: &Value) -> String {
    let s = |k: &str| match &v[k] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "{:<24} {:>8} {:<5} {:>3} {:<6} {:<32} {:<20} {:<20} {:<12}",
        s("time"),
        s("seq"),
        s("decision"),
        s("status"),
        s("method"),
        s("path"),
        s("client_id"),
        s("subject"),
        s("patient"),
    )
}

/// The header of the `table` format.
pub fn table_header() -> String {
    format!(
        "{:<24} {:>8} {:<5} {:>3} {:<6} {:<32} {:<20} {:<20} {:<12}",
        "TIME", "SEQ", "DECISION", "ST", "METHOD", "PATH", "CLIENT", "SUBJECT", "PATIENT"
    )
}
