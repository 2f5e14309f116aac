//! Signed checkpoints of the hash chain.
//!
//! The chain alone shows that records were changed, removed, reordered or inserted, but
//! someone who can write the file can also rewrite its whole tail with fresh hashes, or cut
//! it off. A checkpoint is the chain head `(seq, hash)` signed with an Ed25519 key the
//! gateway holds (RFC 8032), written to a separate file, `<audit path>.checkpoints`, one
//! JSON line each. A rewritten tail no longer matches a checkpoint's hash, and a cut tail
//! ends before a checkpoint's sequence number. Ship the checkpoint file (or the lines) off
//! the host as they are written to also survive an attacker who controls both files.

use std::path::Path;
use std::time::SystemTime;

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::chain::{hex, parse_hex, ChainHead};

/// What a checkpoint signature covers (domain-separated so it cannot be replayed as
/// anything else).
const CONTEXT: &str = "fhirwall-audit-checkpoint-v1";

/// A key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not an Ed25519 key in PKCS#8 / SPKI PEM.
    #[error("{path} is not an Ed25519 {kind} key in PEM (create one with `openssl genpkey -algorithm ed25519`)")]
    Parse {
        /// The file.
        path: String,
        /// `private` or `public`.
        kind: &'static str,
    },
}

/// One checkpoint line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number of the record signed.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
    /// When the checkpoint was made (RFC 3339 UTC).
    pub time: String,
    /// Ed25519 signature over [`Checkpoint::message`] (base64).
    pub sig: String,
}

/// Reads an Ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = read(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::Parse {
        path: path.display().to_string(),
        kind: "private",
    })
}

/// Reads an Ed25519 public key (SPKI PEM, as `openssl pkey -pubout` writes).
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = read(path)?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|_| KeyError::Parse {
        path: path.display().to_string(),
        kind: "public",
    })
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

// === impl Checkpoint ===

impl Checkpoint {
    /// Signs the chain head at `now`.
    pub fn sign(key: &SigningKey, head: &ChainHead, now: SystemTime) -> Self {
        let time = super::rfc3339(now);
        let hash = hex(&head.hash);
        let sig = key.sign(message(head.seq, &hash, &time).as_bytes());
        Checkpoint {
            seq: head.seq,
            hash,
            time,
            sig: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        }
    }

    /// True when the signature is valid for this key.
    pub fn signature_ok(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&self.sig) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        key.verify(message(self.seq, &self.hash, &self.time).as_bytes(), &sig)
            .is_ok()
    }

    /// The signed hash as bytes, if well-formed.
    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        parse_hex(self.hash.as_bytes()).ok()
    }
}

/// The exact bytes signed.
fn message(seq: u64, hash: &str, time: &str) -> String {
    format!("{CONTEXT}\nseq={seq}\nhash={hash}\ntime={time}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_with_its_key_and_not_after_a_change() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let head = ChainHead {
            seq: 42,
            hash: [9; 32],
        };
        let cp = Checkpoint::sign(&key, &head, SystemTime::now());
        assert!(cp.signature_ok(&key.verifying_key()));
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(!cp.signature_ok(&other.verifying_key()));
        let moved = Checkpoint { seq: 41, ..cp };
        assert!(!moved.signature_ok(&key.verifying_key()));
    }
}
