//! `codereview token`: mints a bearer token and prints it alone on stdout, so
//! `--token "$(codereview token ...)"` works.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argh::FromArgs;

use super::connect::ClientError;
use crate::auth::jwt::{Claims, Key, Sessions};
use crate::review::roles::Role;

/// mint a token (HS256) for a user, role and sessions
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "token")]
#[argh(help_triggers("-h", "--help", "help"))]
pub struct TokenArgs {
    /// file holding the server's secret (at least 32 bytes)
    #[argh(option)]
    pub secret_file: PathBuf,
    /// the user the token identifies
    #[argh(option)]
    pub user: String,
    /// author, reviewer or observer
    #[argh(option)]
    pub role: String,
    /// a session the token opens (repeatable; default: all sessions)
    #[argh(option)]
    pub session: Vec<String>,
    /// lifetime, e.g. 30m, 1h (default 1h)
    #[argh(
        option,
        default = "Duration::from_secs(3600)",
        from_str_fn(super::parse_duration)
    )]
    pub ttl: Duration,
}

pub fn run(args: TokenArgs) -> Result<(), ClientError> {
    let role = Role::parse(&args.role).ok_or_else(|| {
        ClientError::setup(format!(
            "--role must be author, reviewer or observer, got {:?}",
            args.role
        ))
    })?;
    if args.user.is_empty() || args.user.len() > 128 {
        return Err(ClientError::setup("--user must be 1 to 128 bytes"));
    }
    if args.ttl.is_zero() {
        return Err(ClientError::setup("--ttl must be positive"));
    }
    let key = Key::new(&crate::auth::read_secret(&args.secret_file).map_err(ClientError::setup)?)
        .map_err(ClientError::setup)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = Claims {
        subject: args.user,
        role,
        sessions: if args.session.is_empty() {
            Sessions::All
        } else {
            Sessions::Only(args.session)
        },
        issued_at: now,
        expires_at: now + args.ttl.as_secs().max(1) as i64,
    };
    println!("{}", key.sign(&claims));
    Ok(())
}
