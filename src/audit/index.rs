//! The sidecar index of an audit file: `<file>.idx`, written when the file is rotated, so
//! that `fhirwall audit query` answers without reading the records it does not return.
//!
//! Layout (little-endian):
//!
//! ```text
//! magic  "FWAIDX01"
//! u64    length of the data file indexed (a different length makes the index stale)
//! u64    first seq, last seq, record count
//! [24]   earliest and latest record `time` (RFC 3339, fixed width, so bytes compare as times)
//! u64    entry count n
//! n x (u64 key, u64 offset)   sorted by key then offset
//! ```
//!
//! `key` is FNV-1a 64 of a kind byte (`p`atient, `c`lient, `s`ubject) and the value; `offset`
//! is where the record's line starts. A lookup is a binary search over fixed-width entries
//! (about 25 reads for a 64 MiB file), then one read per candidate record; the candidate is
//! parsed and compared, so a hash collision costs a read, never a wrong answer. At about
//! 48 bytes per record, the index is ~10 % of the data.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::chain::ChainedLine;

const MAGIC: &[u8; 8] = b"FWAIDX01";
const TIME_LEN: usize = 24;
const HEADER_LEN: u64 = 8 + 8 * 4 + 2 * TIME_LEN as u64 + 8;

/// What a query looks records up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// SMART patient context.
    Patient,
    /// Token client id.
    Client,
    /// Token subject.
    Subject,
}

/// The fields the index needs from a record.
#[derive(Deserialize)]
struct Keys<'a> {
    #[serde(borrow)]
    time: Option<&'a str>,
    #[serde(borrow)]
    patient: Option<&'a str>,
    #[serde(borrow)]
    client_id: Option<&'a str>,
    #[serde(borrow)]
    subject: Option<&'a str>,
    /// Patients the request named (escaped strings cannot be borrowed, hence `Cow`).
    #[serde(borrow, default)]
    patients: Vec<std::borrow::Cow<'a, str>>,
}

/// The header of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Bytes of the data file covered.
    pub data_len: u64,
    /// First sequence number.
    pub first_seq: u64,
    /// Last sequence number.
    pub last_seq: u64,
    /// Records.
    pub records: u64,
    /// Earliest record time.
    pub min_time: String,
    /// Latest record time.
    pub max_time: String,
}

/// An open index.
pub struct Index {
    file: File,
    /// The header.
    pub summary: Summary,
    entries: u64,
}

// === impl Key ===

impl Key {
    fn tag(self) -> u8 {
        match self {
            Key::Patient => b'p',
            Key::Client => b'c',
            Key::Subject => b's',
        }
    }

    /// The record field this key reads.
    pub fn field(self) -> &'static str {
        match self {
            Key::Patient => "patient",
            Key::Client => "client_id",
            Key::Subject => "subject",
        }
    }

    /// The 64-bit key of `value`.
    pub fn hash(self, value: &str) -> u64 {
        // FNV-1a 64: stable across builds and Rust versions (the index is on disk).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in std::iter::once(self.tag()).chain(value.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

/// `<file>.idx`.
pub fn index_path(data: &Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(".idx");
    name.into()
}

/// Reads `data` and writes its index next to it (via a temporary file and a rename, so a
/// reader never sees half an index).
pub fn build(data: &Path) -> io::Result<Summary> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(data)?);
    let mut entries: Vec<(u64, u64)> = Vec::new();
    let mut line = Vec::with_capacity(1024);
    let mut offset = 0u64;
    let mut summary = Summary {
        data_len: 0,
        first_seq: 0,
        last_seq: 0,
        records: 0,
        min_time: String::new(),
        max_time: String::new(),
    };
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)? as u64;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let at = offset;
        offset += n;
        let Ok(rec) = ChainedLine::parse(&line[..line.len() - 1]) else {
            continue;
        };
        let json = rec.json();
        let Ok(keys) = serde_json::from_slice::<Keys<'_>>(&json) else {
            continue;
        };
        if summary.records == 0 {
            summary.first_seq = rec.seq;
        }
        summary.last_seq = rec.seq;
        summary.records += 1;
        if let Some(t) = keys.time {
            if summary.min_time.is_empty() || t < summary.min_time.as_str() {
                summary.min_time = t.to_owned();
            }
            if t > summary.max_time.as_str() {
                summary.max_time = t.to_owned();
            }
        }
        for (key, value) in [
            (Key::Patient, keys.patient),
            (Key::Client, keys.client_id),
            (Key::Subject, keys.subject),
        ] {
            if let Some(v) = value {
                entries.push((key.hash(v), at));
            }
        }
        // A patient is found by `--patient` whether it was the token's context or named by
        // the request; each record is listed once per distinct patient.
        for (i, p) in keys.patients.iter().enumerate() {
            if keys.patient != Some(p.as_ref()) && !keys.patients[..i].contains(p) {
                entries.push((Key::Patient.hash(p), at));
            }
        }
    }
    summary.data_len = offset;
    entries.sort_unstable();

    let path = index_path(data);
    let mut tmp = path.as_os_str().to_owned();
    // Unique, so two builders (the writer's thread and a query) never share a file.
    tmp.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    let tmp = PathBuf::from(tmp);
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    w.write_all(MAGIC)?;
    for v in [
        summary.data_len,
        summary.first_seq,
        summary.last_seq,
        summary.records,
    ] {
        w.write_all(&v.to_le_bytes())?;
    }
    w.write_all(&fixed_time(&summary.min_time))?;
    w.write_all(&fixed_time(&summary.max_time))?;
    w.write_all(&(entries.len() as u64).to_le_bytes())?;
    for (k, o) in &entries {
        w.write_all(&k.to_le_bytes())?;
        w.write_all(&o.to_le_bytes())?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_data()?;
    std::fs::rename(&tmp, &path)?;
    Ok(summary)
}

fn fixed_time(t: &str) -> [u8; TIME_LEN] {
    let mut out = [b' '; TIME_LEN];
    let n = t.len().min(TIME_LEN);
    out[..n].copy_from_slice(&t.as_bytes()[..n]);
    out
}

// === impl Index ===

impl Index {
    /// Opens the index of `data` if it exists and covers the file as it is now.
    pub fn open_fresh(data: &Path) -> io::Result<Option<Index>> {
        let mut file = match File::open(index_path(data)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut header = [0u8; HEADER_LEN as usize];
        if file.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
            return Ok(None);
        }
        let u = |i: usize| u64::from_le_bytes(header[8 + 8 * i..16 + 8 * i].try_into().unwrap());
        let t = |i: usize| {
            let start = 40 + TIME_LEN * i;
            String::from_utf8_lossy(&header[start..start + TIME_LEN])
                .trim_end()
                .to_owned()
        };
        let summary = Summary {
            data_len: u(0),
            first_seq: u(1),
            last_seq: u(2),
            records: u(3),
            min_time: t(0),
            max_time: t(1),
        };
        let entries = u64::from_le_bytes(header[HEADER_LEN as usize - 8..].try_into().unwrap());
        if std::fs::metadata(data)?.len() != summary.data_len
            || file.metadata()?.len() != HEADER_LEN + 16 * entries
        {
            return Ok(None);
        }
        Ok(Some(Index {
            file,
            summary,
            entries,
        }))
    }

    /// Offsets of the records whose `key` may equal `value` (candidates: the caller checks).
    pub fn lookup(&mut self, key: Key, value: &str) -> io::Result<Vec<u64>> {
        let target = key.hash(value);
        // Lower bound of `target` over the sorted entries.
        let (mut lo, mut hi) = (0u64, self.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.0 < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // The run of equal keys is contiguous: read it sequentially, not entry by entry.
        let mut out = Vec::new();
        self.file.seek(SeekFrom::Start(HEADER_LEN + 16 * lo))?;
        let mut reader = BufReader::with_capacity(64 * 1024, &mut self.file);
        let mut buf = [0u8; 16];
        for _ in lo..self.entries {
            reader.read_exact(&mut buf)?;
            if u64::from_le_bytes(buf[..8].try_into().unwrap()) != target {
                break;
            }
            out.push(u64::from_le_bytes(buf[8..].try_into().unwrap()));
        }
        Ok(out)
    }

    fn entry(&mut self, i: u64) -> io::Result<(u64, u64)> {
        let mut buf = [0u8; 16];
        self.file.seek(SeekFrom::Start(HEADER_LEN + 16 * i))?;
        self.file.read_exact(&mut buf)?;
        Ok((
            u64::from_le_bytes(buf[..8].try_into().unwrap()),
            u64::from_le_bytes(buf[8..].try_into().unwrap()),
        ))
    }
}
