//! The `vouchsafe` binary: one command-line tool with subcommands (CLI.md). Parsing,
//! dispatch and output live in `gateways::cli`; the work lives in the libraries.

use clap::Parser;
use gateways::cli::{Cli, dispatch};
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the engine allocates per command (roots, events,
/// headers), and in the bench profile glibc's malloc and free took about 15 % of its CPU.
///
/// The `system-allocator` feature keeps glibc's, for heap profilers that hook malloc
/// (`heaptrack`), which never see mimalloc's allocations.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    dispatch::init_logging(&cli);
    match dispatch::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
