//! Errors that point at a place in a configuration or policy file.
//!
//! Every load error is a [`Diagnostic`] carrying the file, line, column and key path, so
//! `fhirwall check` can print `file:line:col: message` lines that editors and CI understand.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a configuration or policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is about the whole file (unreadable, empty).
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub col: usize,
    /// Dotted key path of the offending value, e.g. `routes[3].scopes.any_of[0]`.
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
    /// Errors refuse the file; warnings (lint) are printed but do not.
    pub severity: Severity,
}

/// Whether a diagnostic refuses the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The file is refused.
    Error,
    /// Reported, not fatal.
    Warning,
}

/// Every problem found in one load, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

// === impl Diagnostic ===

impl Diagnostic {
    /// An error at `line:col` of `file`, about the value at `key`.
    pub fn error(
        file: &Path,
        line: usize,
        col: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line,
            col,
            key: key.into(),
            message: message.into(),
            severity: Severity::Error,
        }
    }

    /// A warning at `line:col` of `file`, about the value at `key`.
    pub fn warning(
        file: &Path,
        line: usize,
        col: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Self::error(file, line, col, key, message)
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: ",
            self.file.display(),
            self.line,
            self.col
        )?;
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

// === impl Diagnostics ===

impl Diagnostics {
    /// True when at least one diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    /// Adds one diagnostic.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// Adds all diagnostics of `other`.
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
