//! The `fhirwall` binary: everything lives in the library; see [`fhirwall::cli`].
#![forbid(unsafe_code)]

/// jemalloc: per-thread caches and cheap cross-thread frees for the proxy's many small,
/// short-lived allocations (see Cargo.toml; measured with `benches/load/run`).
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    fhirwall::cli::run()
}
