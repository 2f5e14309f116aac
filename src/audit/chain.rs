//! The hash chain that makes the audit trail tamper-evident.
//!
//! Every line the writer emits is one JSON object laid out as
//!
//! ```text
//! {"seq":N,"prev":"<hex of the previous record's hash>",<the record's fields>,"hash":"<hex>"}
//! ```
//!
//! where `hash = SHA-256(prev_hash || body)` and `body` is the line's bytes up to (not
//! including) `,"hash":"`. The body is hashed exactly as written, so the bytes on disk *are*
//! the canonical form: the verifier needs no JSON canonicalisation and a new record field
//! (added by a later version) changes nothing here. `seq` starts at 1; the genesis record's
//! `prev` is 32 zero bytes. The chain runs across file rotation: the first record of a new
//! file links to the last record of the file before it.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::AuditRecord;

/// The `prev` of the first record ever written (sequence 1).
pub const GENESIS: [u8; 32] = [0; 32];

/// `,"hash":"` + 64 hex digits + `"}`: the fixed-size end of every chained line.
pub(crate) const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;
const HASH_KEY: &[u8] = b",\"hash\":\"";
const SEQ_KEY: &[u8] = b"{\"seq\":";
const PREV_KEY: &[u8] = b",\"prev\":\"";

/// The end of the chain: the last record written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the last record (0 before the first).
    pub seq: u64,
    /// Its hash ([`GENESIS`] before the first).
    pub hash: [u8; 32],
}

/// A chained line, split into its parts (borrowing the line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainedLine<'a> {
    /// The record's sequence number.
    pub seq: u64,
    /// The hash of the record before it, as stored.
    pub prev: [u8; 32],
    /// The hash the line claims for itself.
    pub hash: [u8; 32],
    /// The hashed part of the line (everything before `,"hash":"`).
    pub body: &'a [u8],
}

/// Why a line is not a well-formed chained record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// No `{"seq":N,"prev":"…",` head or no `,"hash":"…"}` tail.
    #[error("not a chained audit record (no seq/prev/hash)")]
    NotChained,
}

// === impl ChainHead ===

impl ChainHead {
    /// Before the first record.
    pub const fn genesis() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS,
        }
    }

    /// Appends `record` to `buf` as one chained line (with its newline) and advances the
    /// head. On error `buf` is left as it was and the head does not move.
    pub fn append(&mut self, buf: &mut Vec<u8>, record: &AuditRecord) -> serde_json::Result<()> {
        let start = buf.len();
        buf.extend_from_slice(SEQ_KEY);
        let seq = self.seq + 1;
        buf.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        buf.extend_from_slice(PREV_KEY);
        push_hex(buf, &self.hash);
        buf.extend_from_slice(b"\",");
        let fields = buf.len();
        if let Err(e) = serde_json::to_writer(&mut *buf, record) {
            buf.truncate(start);
            return Err(e);
        }
        // The record serialises as `{…}`: keep its fields, drop its braces.
        debug_assert_eq!(buf[fields], b'{');
        debug_assert_eq!(buf.last(), Some(&b'}'));
        buf.remove(fields);
        buf.pop();
        let hash = line_hash(&self.hash, &buf[start..]);
        buf.extend_from_slice(HASH_KEY);
        push_hex(buf, &hash);
        buf.extend_from_slice(b"\"}\n");
        self.seq = seq;
        self.hash = hash;
        Ok(())
    }
}

// === impl ChainedLine ===

impl<'a> ChainedLine<'a> {
    /// Splits a line (without its newline) into its chain parts. Does not check the hash.
    pub fn parse(line: &'a [u8]) -> Result<Self, LineError> {
        let n = line.len();
        if n < HASH_SUFFIX_LEN + SEQ_KEY.len() || !line.starts_with(SEQ_KEY) {
            return Err(LineError::NotChained);
        }
        let tail = &line[n - HASH_SUFFIX_LEN..];
        if !tail.starts_with(HASH_KEY) || !tail.ends_with(b"\"}") {
            return Err(LineError::NotChained);
        }
        let hash = parse_hex(&tail[HASH_KEY.len()..HASH_KEY.len() + 64])?;
        let body = &line[..n - HASH_SUFFIX_LEN];
        let rest = &body[SEQ_KEY.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 20 {
            return Err(LineError::NotChained);
        }
        let seq: u64 = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(LineError::NotChained)?;
        let rest = &rest[digits..];
        if rest.len() < PREV_KEY.len() + 64 + 2 || !rest.starts_with(PREV_KEY) {
            return Err(LineError::NotChained);
        }
        let prev = parse_hex(&rest[PREV_KEY.len()..PREV_KEY.len() + 64])?;
        if &rest[PREV_KEY.len() + 64..PREV_KEY.len() + 66] != b"\"," {
            return Err(LineError::NotChained);
        }
        Ok(ChainedLine {
            seq,
            prev,
            hash,
            body,
        })
    }

    /// True when the stored hash is `SHA-256(prev || body)`.
    pub fn hash_matches(&self) -> bool {
        line_hash(&self.prev, self.body) == self.hash
    }

    /// The record as JSON text: the body closed with `}` (seq and prev included, hash not).
    pub fn json(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.body.len() + 1);
        v.extend_from_slice(self.body);
        v.push(b'}');
        v
    }
}

/// `SHA-256(prev || body)`.
pub fn line_hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// Lower-case hex of a hash.
pub fn hex(bytes: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn push_hex(buf: &mut Vec<u8>, bytes: &[u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        buf.push(DIGITS[usize::from(b >> 4)]);
        buf.push(DIGITS[usize::from(b & 0xf)]);
    }
}

/// Parses 64 lower-case hex digits.
pub fn parse_hex(s: &[u8]) -> Result<[u8; 32], LineError> {
    if s.len() != 64 {
        return Err(LineError::NotChained);
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = hex_digit(pair[0])?;
        let lo = hex_digit(pair[1])?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_digit(c: u8) -> Result<u8, LineError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(LineError::NotChained),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::record;

    #[test]
    fn a_chained_line_parses_back_and_its_hash_matches() {
        let mut head = ChainHead::genesis();
        let mut buf = Vec::new();
        head.append(&mut buf, &record(1)).unwrap();
        head.append(&mut buf, &record(2)).unwrap();
        let lines: Vec<&[u8]> = buf
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let first = ChainedLine::parse(lines[0]).unwrap();
        let second = ChainedLine::parse(lines[1]).unwrap();
        assert_eq!((first.seq, first.prev), (1, GENESIS));
        assert_eq!((second.seq, second.prev), (2, first.hash));
        assert!(first.hash_matches() && second.hash_matches());
        assert_eq!(head.hash, second.hash);
        let json: serde_json::Value = serde_json::from_slice(&second.json()).unwrap();
        assert_eq!(json["seq"], 2);
        assert_eq!(json["request_id"], "req-2");
    }

    #[test]
    fn a_changed_byte_no_longer_matches_its_hash() {
        let mut head = ChainHead::genesis();
        let mut buf = Vec::new();
        head.append(&mut buf, &record(1)).unwrap();
        let text = String::from_utf8(buf).unwrap().replace("req-1", "req-9");
        let line = ChainedLine::parse(text.trim_end().as_bytes()).unwrap();
        assert!(!line.hash_matches());
    }

    #[test]
    fn a_plain_json_line_is_not_chained() {
        assert_eq!(
            ChainedLine::parse(br#"{"time":"x","hash":"y"}"#),
            Err(LineError::NotChained)
        );
    }
}
