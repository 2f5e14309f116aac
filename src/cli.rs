//! Command line. (Being written.)

/// Parses the command line and runs the command.
pub fn run() -> std::process::ExitCode {
    todo!()
}
