//! What a person types into `join` (parsed purely, so it is tested and safe
//! on any input) and the reconnection backoff.

use std::sync::Arc;
use std::time::Duration;

use crate::review::ot::{FileOp, LineOp};

/// A command typed on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Edit {
        op: FileOp,
    },
    Comment {
        line: u32,
        text: String,
    },
    Cursor {
        path: String,
        line: u32,
        column: u32,
    },
    Show {
        path: Option<String>,
    },
    Quit,
}

fn number(word: Option<&str>, what: &str) -> Result<u32, String> {
    let word = word.ok_or_else(|| format!("missing {what}"))?;
    word.parse::<u32>()
        .map_err(|_| format!("{what} must be a number >= 0 (lines are 0-based), got {word:?}"))
}

/// Parses one stdin line. Pure.
pub fn parse_command(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let mut parts = trimmed.splitn(4, ' ');
    let verb = parts.next().unwrap_or("");
    let path = |p: Option<&str>| -> Result<Arc<str>, String> {
        match p {
            Some(p) if !p.is_empty() => Ok(Arc::from(p)),
            _ => Err("missing FILE".into()),
        }
    };
    let command = match verb {
        "edit" | "insert" => {
            let file = path(parts.next())?;
            let line_no = number(parts.next(), "LINE")?;
            let text: Arc<str> = Arc::from(parts.next().unwrap_or(""));
            let op = if verb == "edit" {
                LineOp::Replace {
                    line: line_no,
                    text,
                }
            } else {
                LineOp::Insert {
                    line: line_no,
                    text,
                }
            };
            Command::Edit {
                op: FileOp { path: file, op },
            }
        }
        "delete" => {
            let file = path(parts.next())?;
            let line_no = number(parts.next(), "LINE")?;
            if parts.next().is_some() {
                return Err("usage: delete FILE LINE".into());
            }
            Command::Edit {
                op: FileOp {
                    path: file,
                    op: LineOp::Delete { line: line_no },
                },
            }
        }
        "comment" => {
            let mut parts = trimmed.splitn(3, ' ').skip(1);
            let line_no = number(parts.next(), "LINE")?;
            let text = parts.next().unwrap_or("").to_owned();
            if text.trim().is_empty() {
                return Err("usage: comment LINE TEXT".into());
            }
            Command::Comment {
                line: line_no,
                text,
            }
        }
        "cursor" => {
            let file = path(parts.next())?.to_string();
            let line_no = number(parts.next(), "LINE")?;
            let column = number(parts.next(), "COL")?;
            Command::Cursor {
                path: file,
                line: line_no,
                column,
            }
        }
        "show" => Command::Show {
            path: parts.next().map(str::to_owned),
        },
        "quit" | "exit" => Command::Quit,
        other => {
            return Err(format!(
                "unknown command {other:?}; try: edit FILE LINE TEXT | insert FILE LINE TEXT | delete FILE LINE | \
                 comment LINE TEXT | cursor FILE LINE COL | show [FILE] | quit"
            ));
        }
    };
    Ok(Some(command))
}

/// Full-jitter exponential backoff: a random delay in [0, min(cap, base·2^attempt)].
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, random: u64) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(20)).min(cap);
    let nanos = ceiling.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random % (nanos + 1))
}

pub(super) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse_command("edit src/a.rs 3 let x = 1;").unwrap(),
            Some(Command::Edit {
                op: FileOp {
                    path: Arc::from("src/a.rs"),
                    op: LineOp::Replace {
                        line: 3,
                        text: Arc::from("let x = 1;")
                    }
                }
            })
        );
        assert_eq!(
            parse_command("delete a 0").unwrap(),
            Some(Command::Edit {
                op: FileOp {
                    path: Arc::from("a"),
                    op: LineOp::Delete { line: 0 }
                }
            })
        );
        assert_eq!(
            parse_command("comment 4 needs a test").unwrap(),
            Some(Command::Comment {
                line: 4,
                text: "needs a test".into()
            })
        );
        assert_eq!(
            parse_command("cursor a.rs 1 2").unwrap(),
            Some(Command::Cursor {
                path: "a.rs".into(),
                line: 1,
                column: 2
            })
        );
        assert_eq!(parse_command("  ").unwrap(), None);
        assert_eq!(parse_command("quit").unwrap(), Some(Command::Quit));
        assert!(parse_command("edit a -1 x").is_err());
        assert!(parse_command("dance").is_err());
        assert!(parse_command("comment 3").is_err());
        assert_eq!(
            parse_command("insert f 0").unwrap(),
            Some(Command::Edit {
                op: FileOp {
                    path: Arc::from("f"),
                    op: LineOp::Insert {
                        line: 0,
                        text: Arc::from("")
                    }
                }
            })
        );
    }

    #[test]
    fn backoff_is_full_jitter_under_a_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(30);
        assert_eq!(backoff_delay(0, base, cap, 0), Duration::ZERO);
        assert!(backoff_delay(0, base, cap, u64::MAX) <= base);
        assert!(backoff_delay(3, base, cap, u64::MAX) <= Duration::from_secs(8));
        assert!(backoff_delay(10, base, cap, u64::MAX) <= cap);
        // Spread: different random inputs give different delays.
        let a = backoff_delay(4, base, cap, 12_345);
        let b = backoff_delay(4, base, cap, 987_654_321);
        assert_ne!(a, b);
    }
}
