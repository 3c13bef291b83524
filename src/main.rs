//! The `codereview` binary: parses the command line and runs one command.

#![forbid(unsafe_code)]

fn main() {
    let args: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(|arg| arg.into_string())
        .collect()
    {
        Ok(args) => args,
        Err(arg) => {
            eprintln!(
                "codereview: an argument is not valid UTF-8: {}",
                arg.to_string_lossy()
            );
            std::process::exit(codereview::cli::EXIT_USAGE);
        }
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = match codereview::cli::parse(&args) {
        Ok(cli) => codereview::cli::run(cli),
        Err(code) => code,
    };
    std::process::exit(code);
}
