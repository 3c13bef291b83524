//! The commands of the one binary, parsed with argh. Each command lives in its
//! own file; this module holds the command line's parsing (help, version,
//! usage errors), the top-level dispatch, the exit statuses and the shared
//! flag parsers.
//!
//! Exit statuses, for every command: 0 success; [`EXIT_FAILURE`] (1) the
//! command ran and failed (a connection, a server's refusal, a failed check);
//! [`EXIT_USAGE`] (2) a usage or setup error (flags, files, addresses): nothing
//! was attempted, and running it again unchanged cannot help.
//!
//! `serve` is always built. The client commands (join, watch, upload,
//! snapshot, load, token, health) and what only they use come with the
//! `client` feature (on by default); the container's server-only binary is
//! built without it (`scripts/dist`).

pub mod serve;

#[cfg(feature = "client")]
pub mod connect;
#[cfg(feature = "client")]
pub mod health;
#[cfg(feature = "client")]
pub mod histogram;
#[cfg(feature = "client")]
pub mod join;
#[cfg(feature = "client")]
pub mod load;
#[cfg(feature = "client")]
pub mod render;
#[cfg(feature = "client")]
pub mod snapshot;
#[cfg(feature = "client")]
pub mod tls_probe;
#[cfg(feature = "client")]
pub mod token;
#[cfg(feature = "client")]
pub mod upload;
#[cfg(feature = "client")]
pub mod watch;

use std::time::Duration;

use argh::FromArgs;

/// The command ran and failed: the server refused, a connection failed, a
/// check did not pass.
pub const EXIT_FAILURE: i32 = 1;
/// A usage or setup error: bad flags, unreadable files, a malformed address.
pub const EXIT_USAGE: i32 = 2;

/// codereview: real-time collaborative code review over gRPC.
#[derive(FromArgs, Debug)]
#[argh(help_triggers("-h", "--help", "help"))]
pub struct Cli {
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
    #[argh(subcommand)]
    pub command: Option<Command>,
}

/// Parses the command line (without the program name). `Err` carries the
/// exit status once help, the version or a usage error has been printed:
/// help and the version on stdout (status 0), a usage error on stderr with a
/// pointer to the help of the command it concerns (status 2).
pub fn parse(args: &[&str]) -> Result<Cli, i32> {
    // The subcommand named on the line, for the error's pointer.
    let command = args.iter().find(|a| !a.starts_with('-')).filter(|a| {
        <Command as argh::SubCommands>::COMMANDS
            .iter()
            .any(|c| c.name == **a)
    });
    let prefix = match command {
        Some(name) => format!("codereview {name}"),
        None => "codereview".to_owned(),
    };
    match Cli::from_args(&["codereview"], args) {
        Ok(Cli { version: true, .. }) => {
            println!("codereview {}", env!("CARGO_PKG_VERSION"));
            Err(0)
        }
        Ok(Cli { command: None, .. }) => {
            eprintln!("codereview: no command given\nRun `codereview --help` for the commands.");
            Err(EXIT_USAGE)
        }
        Ok(cli) => Ok(cli),
        Err(early) if early.status.is_ok() => {
            println!("{}", early.output.trim_end());
            Err(0)
        }
        Err(early) => {
            eprintln!(
                "{prefix}: {}\nRun `{prefix} --help` for more information.",
                early.output.trim_end()
            );
            Err(EXIT_USAGE)
        }
    }
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
pub enum Command {
    Serve(serve::ServeArgs),
    #[cfg(feature = "client")]
    Join(join::JoinArgs),
    #[cfg(feature = "client")]
    Watch(watch::WatchArgs),
    #[cfg(feature = "client")]
    Upload(upload::UploadArgs),
    #[cfg(feature = "client")]
    Snapshot(snapshot::SnapshotArgs),
    #[cfg(feature = "client")]
    Load(load::LoadArgs),
    #[cfg(feature = "client")]
    Token(token::TokenArgs),
    #[cfg(feature = "client")]
    Health(health::HealthArgs),
}

/// Runs a command; returns the process exit status.
pub fn run(cli: Cli) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("codereview: cannot start the async runtime: {error}");
            return EXIT_FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let Some(command) = cli.command else {
            return EXIT_USAGE;
        };
        match command {
            Command::Serve(args) => serve::run(args).await,
            #[cfg(feature = "client")]
            Command::Health(args) => {
                let options = args.client_options();
                match health::run(args).await {
                    Ok(true) => 0,
                    Ok(false) => EXIT_FAILURE,
                    Err(error) => report("health", Err(tls_probe::explain(&options, error).await)),
                }
            }
            #[cfg(feature = "client")]
            Command::Join(args) => {
                let options = args.client_options();
                let result = join::run(args).await;
                report("join", explained(&options, result).await)
            }
            #[cfg(feature = "client")]
            Command::Watch(args) => {
                let options = args.client_options();
                let result = watch::run(args).await;
                report("watch", explained(&options, result).await)
            }
            #[cfg(feature = "client")]
            Command::Upload(args) => {
                let options = args.client_options();
                let result = upload::run(args).await;
                report("upload", explained(&options, result).await)
            }
            #[cfg(feature = "client")]
            Command::Snapshot(args) => {
                let options = args.client_options();
                let result = snapshot::run(args).await;
                report("snapshot", explained(&options, result).await)
            }
            #[cfg(feature = "client")]
            Command::Token(args) => report("token", token::run(args)),
            #[cfg(feature = "client")]
            Command::Load(args) => match load::run(args).await {
                Ok(true) => 0,
                Ok(false) => EXIT_FAILURE,
                Err(error) => report("load", Err(error)),
            },
        }
    });
    // Do not wait for lingering tasks (e.g. stuck connections) at exit.
    runtime.shutdown_background();
    code
}

/// A client command's result, its failure explained when a plaintext
/// connection met a TLS port.
#[cfg(feature = "client")]
async fn explained(
    options: &connect::ClientOptions,
    result: Result<(), connect::ClientError>,
) -> Result<(), connect::ClientError> {
    match result {
        Ok(()) => Ok(()),
        Err(error) => Err(tls_probe::explain(options, error).await),
    }
}

/// Prints a client command's failure as one line; returns the exit status.
#[cfg(feature = "client")]
fn report(command: &str, result: Result<(), connect::ClientError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("codereview {command}: {error}");
            error.exit_code()
        }
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h` (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. 500ms, 30s, 5m, 1h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("bad duration {text:?}: unit must be ms, s, m or h")),
    };
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(format!("bad duration {text:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a byte size: `4096`, `64KiB`, `4MiB`.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("bad size {text:?}: expected e.g. 65536, 64KiB, 4MiB"))?;
    let multiplier = match unit {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1024,
        "MiB" | "M" => 1024 * 1024,
        "GiB" | "G" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "bad size {text:?}: unit must be B, KiB, MiB or GiB"
            ));
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("bad size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert!(parse_bytes("4TB").is_err());
    }
}
