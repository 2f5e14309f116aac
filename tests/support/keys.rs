//! The fixture signing keys (tests/fixtures/keys) and their JWKs.

use std::path::PathBuf;

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// One of the fixture keys. The `kid` published in the JWKS is [`KeyId::kid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyId {
    /// RSA 2048, RS256, kid `rsa1`.
    Rsa1,
    /// RSA 2048, RS256, kid `rsa2`.
    Rsa2,
    /// EC P-256, ES256, kid `ec1`.
    Ec1,
}

impl KeyId {
    /// Every fixture key.
    pub const ALL: [KeyId; 3] = [KeyId::Rsa1, KeyId::Rsa2, KeyId::Ec1];

    /// The `kid` header value and JWK `kid`.
    pub fn kid(self) -> &'static str {
        match self {
            KeyId::Rsa1 => "rsa1",
            KeyId::Rsa2 => "rsa2",
            KeyId::Ec1 => "ec1",
        }
    }

    /// The algorithm the key signs with.
    pub fn alg(self) -> Algorithm {
        match self {
            KeyId::Rsa1 | KeyId::Rsa2 => Algorithm::RS256,
            KeyId::Ec1 => Algorithm::ES256,
        }
    }

    /// Path of the PKCS#8 private key PEM.
    pub fn private_pem_path(self) -> PathBuf {
        super::fixture_path(&format!("keys/{}.key.pem", self.kid()))
    }

    /// Path of the SPKI public key PEM.
    pub fn public_pem_path(self) -> PathBuf {
        super::fixture_path(&format!("keys/{}.pub.pem", self.kid()))
    }

    /// The private key PEM bytes.
    pub fn private_pem(self) -> Vec<u8> {
        read(self.private_pem_path())
    }

    /// The public key PEM bytes (also the "secret" of the HS256 key-confusion attack).
    pub fn public_pem(self) -> Vec<u8> {
        read(self.public_pem_path())
    }

    /// The signing key.
    pub fn encoding_key(self) -> EncodingKey {
        let pem = self.private_pem();
        match self.alg() {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .unwrap_or_else(|e| panic!("fixture key {}: {e}", self.kid()))
    }

    /// The verification key, from the public PEM (independent of the JWK path).
    pub fn decoding_key(self) -> DecodingKey {
        let pem = self.public_pem();
        match self.alg() {
            Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
            _ => DecodingKey::from_rsa_pem(&pem),
        }
        .unwrap_or_else(|e| panic!("fixture key {}: {e}", self.kid()))
    }

    /// The public JWK (`kty`, `n`/`e` or `crv`/`x`/`y`, `kid`, `alg`, `use: sig`).
    pub fn jwk(self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding_key(), self.alg())
            .unwrap_or_else(|e| panic!("JWK of fixture key {}: {e}", self.kid()));
        jwk.common.key_id = Some(self.kid().to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk
    }
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
