//! `fhirwall audit verify`: walks the hash chain through a set of files and names the first
//! record where it breaks, and why.
//!
//! Files are put in chain order by the sequence number of their first record (not by name,
//! so a renamed file cannot hide). Every line must be a chained record whose hash matches
//! its content ([`super::chain`]), whose `seq` is one more than the line before, and whose
//! `prev` is that line's hash. With signed checkpoints ([`super::checkpoint`]) every
//! checkpoint's signature must hold, the record it names must have the hash it signed, and
//! the log must reach it: that catches a tail rewritten with fresh hashes, or cut off.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use super::chain::{ChainedLine, GENESIS};
use super::checkpoint::Checkpoint;
use super::output::read_first_seq;

/// What kind of tampering (or damage) a break looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// A record's content no longer matches its hash, or its hash was recomputed so the next
    /// record no longer links to it, or it differs from a signed checkpoint.
    Edited,
    /// Sequence numbers jump: records (or a whole file) are missing.
    Deleted,
    /// Records are out of order.
    Reordered,
    /// A line that is not part of the chain: a repeated sequence number, a line that is
    /// not a chained record, or a record that does not link to genesis.
    Inserted,
    /// The log ends early: an incomplete last line, or before a signed checkpoint.
    Truncated,
    /// A checkpoint whose signature does not verify.
    BadCheckpoint,
}

/// The first broken record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The file holding it (the checkpoint file for [`BreakKind::BadCheckpoint`]).
    pub file: PathBuf,
    /// 1-based line number.
    pub line: u64,
    /// Its sequence number, when it has one.
    pub seq: Option<u64>,
    /// What it looks like.
    pub kind: BreakKind,
    /// Why, in words.
    pub detail: String,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Every record links to the one before it.
    Intact {
        /// Records checked.
        records: u64,
        /// Sequence number of the first record (1 unless older files were not given).
        first_seq: u64,
        /// Sequence number of the last.
        last_seq: u64,
        /// Signed checkpoints checked.
        checkpoints: usize,
    },
    /// The first break.
    Broken(Break),
}

/// Optional checkpoint checking.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The `.checkpoints` file and the public key to check it with.
    pub checkpoints: Option<(PathBuf, VerifyingKey)>,
}

/// Expands directories into the audit files they hold (skipping checkpoint, index and
/// hidden files) and orders everything by first sequence number.
pub fn collect_files(paths: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            for entry in std::fs::read_dir(p)? {
                let path = entry?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if path.is_file()
                    && !name.starts_with('.')
                    && !name.ends_with(".checkpoints")
                    && !name.ends_with(".idx")
                    && !name.ends_with(".tmp")
                {
                    files.push(path);
                }
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut keyed = Vec::with_capacity(files.len());
    for f in files {
        let first = read_first_seq(&f)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", f.display())))?;
        keyed.push((first.unwrap_or(u64::MAX), f));
    }
    keyed.sort();
    Ok(keyed.into_iter().map(|(_, f)| f).collect())
}

/// Verifies `paths` (files or directories) as one chain.
pub fn verify(paths: &[PathBuf], opts: &Options) -> io::Result<Report> {
    let files = collect_files(paths)?;
    let mut checkpoints = BTreeMap::new();
    if let Some((path, key)) = &opts.checkpoints {
        let reader = BufReader::new(File::open(path)?);
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            let bad = |detail: &str| {
                Report::Broken(Break {
                    file: path.clone(),
                    line: i as u64 + 1,
                    seq: None,
                    kind: BreakKind::BadCheckpoint,
                    detail: detail.to_owned(),
                })
            };
            let Ok(cp) = serde_json::from_str::<Checkpoint>(&line) else {
                return Ok(bad("not a checkpoint line"));
            };
            let Some(hash) = cp.hash_bytes().filter(|_| cp.signature_ok(key)) else {
                return Ok(bad("the signature does not verify with this public key"));
            };
            checkpoints.insert(cp.seq, (hash, i as u64 + 1));
        }
    }
    let mut walk = Walk {
        checkpoints: &checkpoints,
        last: None,
        first_seq: None,
        records: 0,
        matched: 0,
    };
    for file in &files {
        if let Some(b) = walk.file(file)? {
            return Ok(Report::Broken(b));
        }
    }
    let Some((last_seq, _, last_file, last_line)) = walk.last.clone() else {
        return Ok(Report::Intact {
            records: 0,
            first_seq: 0,
            last_seq: 0,
            checkpoints: 0,
        });
    };
    if let Some((&seq, _)) = checkpoints.range(last_seq + 1..).next() {
        return Ok(Report::Broken(Break {
            file: last_file,
            line: last_line,
            seq: Some(last_seq),
            kind: BreakKind::Truncated,
            detail: format!(
                "the log ends at seq {last_seq} but a signed checkpoint covers seq {seq}: records after this one were removed"
            ),
        }));
    }
    Ok(Report::Intact {
        records: walk.records,
        first_seq: walk.first_seq.unwrap_or(0),
        last_seq,
        checkpoints: walk.matched,
    })
}

/// State carried from line to line and file to file.
struct Walk<'a> {
    checkpoints: &'a BTreeMap<u64, ([u8; 32], u64)>,
    /// seq, hash, file and line of the last good record.
    last: Option<(u64, [u8; 32], PathBuf, u64)>,
    first_seq: Option<u64>,
    records: u64,
    /// Checkpoints whose record was found with the signed hash.
    matched: usize,
}

impl Walk<'_> {
    fn file(&mut self, path: &Path) -> io::Result<Option<Break>> {
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut line = Vec::with_capacity(1024);
        let mut next = Vec::with_capacity(1024);
        let mut no = 0u64;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(None);
            }
            no += 1;
            let brk = |seq: Option<u64>, kind, detail: String| {
                Some(Break {
                    file: path.to_owned(),
                    line: no,
                    seq,
                    kind,
                    detail,
                })
            };
            if line.last() != Some(&b'\n') {
                return Ok(brk(
                    None,
                    BreakKind::Truncated,
                    "the last line is incomplete (cut off mid-record)".into(),
                ));
            }
            let Ok(rec) = ChainedLine::parse(&line[..line.len() - 1]) else {
                return Ok(brk(
                    None,
                    BreakKind::Inserted,
                    "not a chained audit record (no seq/prev/hash)".into(),
                ));
            };
            let seq = rec.seq;
            if !rec.hash_matches() {
                return Ok(brk(
                    Some(seq),
                    BreakKind::Edited,
                    "the content does not match the record's hash".into(),
                ));
            }
            match &self.last {
                None if seq == 1 && rec.prev != GENESIS => {
                    return Ok(brk(
                        Some(seq),
                        BreakKind::Inserted,
                        "the first record does not link to genesis".into(),
                    ));
                }
                None => self.first_seq = Some(seq),
                Some((last_seq, last_hash, last_file, last_line)) => {
                    let expected = last_seq + 1;
                    if seq < expected {
                        return Ok(brk(
                            Some(seq),
                            BreakKind::Inserted,
                            format!("seq {seq} repeats or goes back (expected {expected})"),
                        ));
                    }
                    if seq > expected {
                        // One line of look-ahead tells a swap from a gap (either way this
                        // is the break reported, so the line is not needed afterwards).
                        next.clear();
                        reader.read_until(b'\n', &mut next)?;
                        let next_seq =
                            ChainedLine::parse(next.strip_suffix(b"\n").unwrap_or(&next))
                                .ok()
                                .map(|l| l.seq);
                        if next_seq == Some(expected) {
                            return Ok(brk(
                                Some(seq),
                                BreakKind::Reordered,
                                format!("seq {seq} comes before seq {expected}"),
                            ));
                        }
                        let missing = if seq - expected == 1 {
                            format!("record {expected} is missing")
                        } else {
                            format!("records {expected}..={} are missing", seq - 1)
                        };
                        return Ok(brk(Some(seq), BreakKind::Deleted, missing));
                    }
                    if rec.prev != *last_hash {
                        // The previous record's own hash matched its content, so it was
                        // replaced wholesale (content and hash): name it.
                        return Ok(Some(Break {
                            file: last_file.clone(),
                            line: *last_line,
                            seq: Some(*last_seq),
                            kind: BreakKind::Edited,
                            detail: format!(
                                "the record was rewritten with a new hash: seq {seq} links to a different one"
                            ),
                        }));
                    }
                }
            }
            if let Some((signed, cp_line)) = self.checkpoints.get(&seq) {
                if *signed != rec.hash {
                    return Ok(brk(
                        Some(seq),
                        BreakKind::Edited,
                        format!(
                            "differs from the signed checkpoint (line {cp_line}): this record or one before it, after the previous checkpoint, was rewritten"
                        ),
                    ));
                }
                self.matched += 1;
            }
            self.records += 1;
            self.last = Some((seq, rec.hash, path.to_owned(), no));
        }
    }
}

// === impl Report ===

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Intact {
                records,
                first_seq,
                last_seq,
                checkpoints,
            } => {
                write!(f, "intact, {records} records")?;
                if *records > 0 {
                    write!(f, " (seq {first_seq}..={last_seq}")?;
                    if *first_seq > 1 {
                        write!(f, "; earlier records were not given")?;
                    }
                    write!(f, ", {checkpoints} signed checkpoints matched)")?;
                }
                Ok(())
            }
            Report::Broken(b) => {
                write!(f, "BROKEN at {}:{}", b.file.display(), b.line)?;
                if let Some(seq) = b.seq {
                    write!(f, " (seq {seq})")?;
                }
                write!(f, ": {:?}: {}", b.kind, b.detail)
            }
        }
    }
}
