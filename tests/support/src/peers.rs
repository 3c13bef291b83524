//! Independent gRPC peers (Python grpcio, Node @grpc/grpc-js) for tests
//! that prove our wire layer against other implementations.
//!
//! Discovery: `CODEREVIEW_PYTHON` / `CODEREVIEW_NODE` name the interpreters
//! (`scripts/test` sets them after `scripts/setup-peers`). A peer that is not
//! set up makes the test skip with a note on stderr, unless
//! `CODEREVIEW_REQUIRE_PEERS=1`, where it fails instead: CI must not pass by
//! skipping.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::process::Proc;
use crate::root;

/// How long one peer script may run before it is killed and the test fails.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(120);

/// Which independent implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Python,
    Node,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Python => "python",
            Kind::Node => "node",
        }
    }
}

/// A usable peer interpreter.
#[derive(Clone, Debug)]
pub struct Peer {
    pub kind: Kind,
    pub program: PathBuf,
}

/// The Python grpcio peer, or `None` (after a note on stderr) when it is not
/// set up. Panics instead when `CODEREVIEW_REQUIRE_PEERS=1`.
pub fn python() -> Option<Peer> {
    discover(Kind::Python, &["tests/python/gen"], "import grpc")
}

/// The Python peer with the stubs generated from the article's original
/// proto (tests/python/gen_seed/); see [`python`].
pub fn python_seed() -> Option<Peer> {
    let files = [
        "tests/python/gen",
        "tests/python/gen_seed/codereview_pb2.py",
    ];
    discover(Kind::Python, &files, "import grpc")
}

/// The venv's Python with `module` importable (e.g. prometheus_client);
/// see [`python`].
pub fn python_with(module: &str) -> Option<Peer> {
    discover(Kind::Python, &[], &format!("import {module}"))
}

/// The Node grpc-js peer; see [`python`].
pub fn node() -> Option<Peer> {
    discover(Kind::Node, &["tests/node/node_modules/@grpc/grpc-js"], "")
}

/// The peer if its interpreter runs `probe` (Python code; Node runs
/// `--version`) and `paths` (from the root) exist.
fn discover(kind: Kind, paths: &[&str], probe: &str) -> Option<Peer> {
    let found = usable(kind, paths, probe);
    match found {
        Ok(program) => Some(Peer { kind, program }),
        Err(reason) => {
            let name = kind.name();
            if std::env::var("CODEREVIEW_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!(
                    "CODEREVIEW_REQUIRE_PEERS=1 but the {name} peer is not usable: {reason}; \
                     run scripts/setup-peers (or run the tests with scripts/test)"
                );
            }
            eprintln!("skipping: {name} peer not set up (run scripts/test): {reason}");
            None
        }
    }
}

fn usable(kind: Kind, paths: &[&str], probe: &str) -> Result<PathBuf, String> {
    let var = match kind {
        Kind::Python => "CODEREVIEW_PYTHON",
        Kind::Node => "CODEREVIEW_NODE",
    };
    let program = match std::env::var_os(var) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => return Err(format!("{var} is not set")),
    };
    if let Some(missing) = paths.iter().find(|path| !root().join(path).exists()) {
        return Err(format!("{missing} is missing"));
    }
    let args = match kind {
        Kind::Python => vec!["-c", probe],
        Kind::Node => vec!["--version"],
    };
    let output = Command::new(&program)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{var}={}: cannot run it: {e}", program.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{var}={} cannot run {probe:?}: {}: {}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(program)
}

impl Peer {
    /// Runs `script` (relative to the repository root) with `args` from the
    /// root; its exit status, stdout and stderr. Panics if it runs longer
    /// than [`PEER_TIMEOUT`].
    pub fn run(&self, script: &str, args: &[&str]) -> (ExitStatus, String, String) {
        let script = root().join(script).display().to_string();
        let all: Vec<&str> = std::iter::once(script.as_str())
            .chain(args.iter().copied())
            .collect();
        self.run_args(&all, None)
    }

    /// Runs the interpreter with `args`, writing `input` to its stdin.
    pub fn run_args(&self, args: &[&str], input: Option<&str>) -> (ExitStatus, String, String) {
        let mut proc = self.spawn(args);
        if let Some(input) = input {
            proc.write(input);
        }
        proc.close_stdin();
        let status = proc.wait_exit(PEER_TIMEOUT);
        (status, proc.stdout().join("\n"), proc.stderr().join("\n"))
    }

    /// Starts the interpreter with `args` (e.g. a peer's server script),
    /// from the repository root; killed when dropped.
    pub fn spawn(&self, args: &[&str]) -> Proc {
        let mut command = Command::new(&self.program);
        command.args(args).current_dir(root());
        let name = format!("{} {}", self.kind.name(), args.join(" "));
        Proc::spawn(&name, command)
    }

    /// Formats a run for an assertion message.
    pub fn describe(&self, script: &str, status: ExitStatus, stdout: &str, stderr: &str) -> String {
        format!(
            "{} {script} exited with {status}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            self.kind.name()
        )
    }
}
