//! The `print-abort-worker` binary: parses the command line and runs it in the library.

use std::process::ExitCode;

use clap::Parser;
use print_abort_worker::cli::command_line::{self, Cli};

fn main() -> ExitCode {
    // Before any thread exists.
    command_line::one_malloc_arena();
    command_line::run(Cli::parse().command)
}
