//! The `fhirwall` binary: everything lives in the library; see [`fhirwall::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    fhirwall::cli::run()
}
