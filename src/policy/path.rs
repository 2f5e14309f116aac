//! Path safety: refuse any path that could mean one thing to fhirwall and another to the
//! backend. (Stub: implemented by the policy work.)

/// Why a path was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathRejected {
    /// Placeholder.
    #[error("unsafe path")]
    Unsafe,
}

/// Accepts `path` only if it is canonical.
pub fn check(path: &str) -> Result<(), PathRejected> {
    let _ = path;
    todo!()
}
