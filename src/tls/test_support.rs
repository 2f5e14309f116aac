//! Certificates minted with rcgen for unit tests (never committed as files).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::config::IdentityFiles;

/// A throwaway certificate authority.
pub(crate) struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, PEM.
pub(crate) struct TestLeaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `localhost`; `expired` sets its validity in the past.
    pub(crate) fn leaf(&self, cn: &str, expired: bool) -> TestLeaf {
        if expired {
            return self.leaf_until(cn, time::macros::datetime!(2021-01-01 0:00 UTC));
        }
        self.leaf_until(cn, time::macros::datetime!(4096-01-01 0:00 UTC))
    }

    /// A leaf for `localhost` valid until `not_after`.
    pub(crate) fn leaf_until(&self, cn: &str, not_after: time::OffsetDateTime) -> TestLeaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = time::macros::datetime!(2020-01-01 0:00 UTC);
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        TestLeaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl TestLeaf {
    /// Writes `NAME.crt` and `NAME.key` into `dir`.
    pub(crate) fn write(&self, dir: &Path, name: &str) -> IdentityFiles {
        let files = IdentityFiles {
            certificate: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.certificate, &self.cert_pem).unwrap();
        std::fs::write(&files.key, &self.key_pem).unwrap();
        files
    }
}

/// Writes `text` to `dir/name`.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
