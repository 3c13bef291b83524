//! The `codereview` binary: parses the command line and runs one command.

#![forbid(unsafe_code)]

fn main() {
    let cli: codereview::cli::Cli = argh::from_env();
    std::process::exit(codereview::cli::run(cli));
}
