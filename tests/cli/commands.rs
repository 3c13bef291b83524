//! The one-shot client commands run as a person would: `upload`, `snapshot`,
//! `watch`, `health`, and their one-line errors (bad address, refused
//! connection, TLS with the wrong CA).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kit::WAIT;
use kit::json::Json;
use kit::process::{Proc, TempDir, dead_addr};
use kit::server::ServerProcess;

use crate::{BIN, Joined, join, run, run_in};

/// Writes a file of `lines` (newline-terminated) into `dir`.
fn write_lines(dir: &TempDir, name: &str, lines: &[String]) {
    std::fs::write(dir.join(name), lines.join("\n") + "\n").unwrap();
}

#[test]
fn upload_snapshot_and_watch() {
    let server = ServerProcess::start(BIN, &[]);
    let url = server.url();
    let dir = TempDir::new("upload");
    let small: Vec<String> = vec![
        "fn main() {".into(),
        "    println!(\"hi\");".into(),
        "}".into(),
    ];
    // Over 64 KiB: sent in several chunks, with lines split across them.
    let big: Vec<String> = (0..3000)
        .map(|i| format!("let line_{i:04} = \"{}\"; // é ✓", "x".repeat(i % 40)))
        .collect();
    write_lines(&dir, "a.rs", &small);
    write_lines(&dir, "b.rs", &big);
    let size = std::fs::metadata(dir.join("b.rs")).unwrap().len();
    assert!(size > 64 * 1024, "b.rs is {size} bytes");

    let out = run_in(
        &["upload", "--addr", &url, "--session", "s", "a.rs", "b.rs"],
        Some(dir.path()),
        WAIT,
    );
    let summary = out.ok().trim();
    let total = std::fs::metadata(dir.join("a.rs")).unwrap().len() + size;
    assert_eq!(
        summary,
        format!(
            "uploaded 2 files, {} lines, {total} bytes to session s (version 2, sequence 2)",
            small.len() + big.len()
        ),
        "{}",
        out.describe()
    );
    assert!(out.stderr.is_empty(), "{}", out.describe());

    let snapshot = server.snapshot("s");
    assert_eq!(snapshot["session"], "s");
    assert_eq!(snapshot["version"].i64(), 2);
    let files = snapshot["files"].object();
    assert_eq!(files.len(), 2, "{snapshot}");
    assert_eq!(files["a.rs"].strings(), small);
    assert_eq!(files["b.rs"].strings(), big);

    // The text form lists the files with numbered lines.
    let text = run(&["snapshot", "--addr", &url, "--session", "s"], WAIT);
    let text = text.ok();
    assert!(text.starts_with("session s (epoch "), "{text}");
    assert!(
        text.contains("== a.rs (3 lines)\n    0 | fn main() {\n"),
        "{text}"
    );
    assert!(text.contains("== b.rs (3000 lines)\n"), "{text}");

    // A watcher started before an edit prints it.
    let mut watch = BIN.spawn(
        "watch",
        &["watch", "--addr", &url, "--session", "s", "--json"],
    );
    let replayed: Vec<Json> = (0..2)
        .map(|_| watch.wait_json("the uploads", WAIT, |j| j["type"] == "file"))
        .collect();
    assert_eq!(replayed[0]["file"], "a.rs");
    assert_eq!(replayed[1]["file"], "b.rs");
    assert_eq!(replayed[1]["lines"].strings(), big);
    watch.wait_json("caught up", WAIT, |j| {
        j["type"] == "notice" && j["kind"] == "caught_up"
    });

    let mut dave = join(&url, "s", "dave", &[]);
    dave.caught_up();
    dave.send("edit a.rs 1     println!(\"watched\");");
    dave.wait_json("the ack", WAIT, |j| {
        j["type"] == "ack" && j["client_sequence"].u64() == 1
    });
    let edit = watch.wait_json("the edit", WAIT, |j| j["type"] == "edit");
    assert_eq!(edit["user"], "dave", "{edit}");
    assert_eq!(edit["op"], "replace");
    assert_eq!(edit["file"], "a.rs");
    assert_eq!(edit["line"].i64(), 1);
    assert_eq!(edit["content"], "    println!(\"watched\");");
    assert_eq!(edit["version"].i64(), 3);
    dave.quit();
    assert_eq!(
        server.snapshot("s")["files"]["a.rs"].strings(),
        ["fn main() {", "    println!(\"watched\");", "}"]
    );
    // The watcher hears dave leave; it is still running.
    watch.wait_json("dave leaving", WAIT, |j| {
        j["type"] == "presence" && j["status"] == "left" && j["user"] == "dave"
    });
    assert!(watch.try_status().is_none(), "{}", watch.transcript());
}

#[test]
fn upload_with_names() {
    let server = ServerProcess::start(BIN, &[]);
    let dir = TempDir::new("names");
    write_lines(&dir, "one.txt", &["1".into()]);
    let out = run(
        &[
            "upload",
            "--addr",
            &server.url(),
            "--session",
            "named",
            "--name",
            "src/lib.rs",
            &dir.file("one.txt"),
        ],
        WAIT,
    );
    assert!(out.ok().starts_with("uploaded 1 files, 1 lines, 2 bytes"));
    let snapshot = server.snapshot("named");
    assert_eq!(snapshot["files"]["src/lib.rs"].strings(), ["1"]);

    // A missing file: one line, nothing sent; a usage error (status 2).
    let out = run(
        &[
            "upload",
            "--addr",
            &server.url(),
            "--session",
            "named",
            &dir.file("missing.txt"),
        ],
        WAIT,
    );
    let line = out.one_line_usage_error();
    assert!(
        line.starts_with("codereview upload: cannot read ") && line.contains("missing.txt"),
        "{line}"
    );
}

#[test]
fn snapshot_of_an_unknown_session_is_not_found() {
    let server = ServerProcess::start(BIN, &[]);
    let url = server.url();
    for json in [false, true] {
        let mut args = vec!["snapshot", "--addr", &url, "--session", "nope"];
        if json {
            args.push("--json");
        }
        let out = run(&args, WAIT);
        let line = out.one_line_error();
        assert_eq!(line, "codereview snapshot: NOT_FOUND: no session \"nope\"");
        assert!(out.stdout.is_empty(), "{}", out.describe());
    }
}

#[test]
fn health_serving_and_refused() {
    let server = ServerProcess::start(BIN, &[]);
    let out = run(&["health", "--addr", &server.url()], WAIT);
    assert_eq!(out.ok(), "SERVING\n");
    let out = run(
        &[
            "health",
            "--addr",
            &server.url(),
            "--service",
            "codereview.v1.CodeReviewService",
        ],
        WAIT,
    );
    assert_eq!(out.ok(), "SERVING\n");

    let out = run(&["health", "--addr", &dead_addr()], WAIT);
    let line = out.one_line_error();
    assert!(
        line.starts_with("codereview health: UNAVAILABLE: cannot connect to http://127.0.0.1:")
            && line.ends_with("Connection refused (os error 111)"),
        "{line}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_addresses_and_refused_connections_are_one_line() {
    let dead = dead_addr();
    let commands: [&[&str]; 4] = [
        &["snapshot", "--session", "s"],
        &["watch", "--session", "s"],
        &["health"],
        &["upload", "--session", "s", "Cargo.toml"],
    ];
    for command in commands {
        let name = command[0];
        // Exit status 2 for a bad address (nothing was attempted), 1 for a
        // connection that failed.
        for (addr, why, code) in [
            (
                "ftp://x",
                "bad address \"ftp://x\": the scheme must be http:// or https://".to_owned(),
                2,
            ),
            (
                "http://host:notaport",
                "bad address \"http://host:notaport\": port must be a number 1-65535".to_owned(),
                2,
            ),
            (
                dead.as_str(),
                format!("UNAVAILABLE: cannot connect to {dead}: Connection refused (os error 111)"),
                1,
            ),
        ] {
            let mut args = command.to_vec();
            args.extend(["--addr", addr]);
            let out = run(&args, WAIT);
            let line = if code == 2 {
                out.one_line_usage_error()
            } else {
                out.one_line_error()
            };
            assert_eq!(line, format!("codereview {name}: {why}"), "{args:?}");
            assert!(out.stdout.is_empty(), "{}", out.describe());
        }
    }
}

/// Runs certs/gen.sh into `dir`.
fn generate_certs(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/gen.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir)
        .env("DAYS", "2")
        .output()
        .expect("running certs/gen.sh (needs bash and openssl)");
    assert!(
        out.status.success(),
        "certs/gen.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_with_the_wrong_ca_is_one_line() {
    let dir = TempDir::new("tls");
    let (right, wrong) = (dir.join("right"), dir.join("wrong"));
    generate_certs(&right);
    generate_certs(&wrong);
    let file = |base: &Path, name: &str| base.join(name).display().to_string();
    let server = ServerProcess::start(
        BIN,
        &[
            "--tls-cert",
            &file(&right, "server.pem"),
            "--tls-key",
            &file(&right, "server.key"),
        ],
    );
    let url = format!("https://localhost:{}", server.port());
    let wrong_ca = file(&wrong, "ca.pem");
    let right_ca = file(&right, "ca.pem");

    for command in [
        &["snapshot", "--session", "s"][..],
        &["health"][..],
        &["watch", "--session", "s"][..],
    ] {
        let mut args = command.to_vec();
        args.extend(["--addr", &url, "--ca", &wrong_ca]);
        let out = run(&args, WAIT);
        let line = out.one_line_error();
        assert!(
            line.starts_with(&format!("codereview {}: ", command[0]))
                && line.contains("TLS handshake")
                && line.contains("certificate"),
            "{line}"
        );
    }
    // No CA at all: says what is missing (a setup error, status 2).
    let out = run(&["snapshot", "--session", "s", "--addr", &url], WAIT);
    let line = out.one_line_usage_error();
    assert!(line.contains("--ca"), "{line}");
    // A CA with plaintext: says https is needed.
    let out = run(
        &[
            "snapshot",
            "--session",
            "s",
            "--addr",
            &server.url(),
            "--ca",
            &right_ca,
        ],
        WAIT,
    );
    let line = out.one_line_usage_error();
    assert!(line.contains("https://"), "{line}");
    // join with the wrong CA: its first connection fails, so it ends at
    // once with one line naming the certificate problem.
    let mut join = BIN.spawn(
        "join",
        &[
            "join",
            "--addr",
            &url,
            "--ca",
            &wrong_ca,
            "--session",
            "s",
            "--user",
            "u",
        ],
    );
    assert_eq!(join.wait_exit(WAIT).code(), Some(1));
    let stderr = join.stderr();
    assert!(
        stderr.len() == 1
            && stderr[0].starts_with("codereview join: ")
            && stderr[0].contains("TLS handshake")
            && stderr[0].contains("certificate"),
        "{}",
        join.transcript()
    );

    // The right CA works.
    let out = run(&["health", "--addr", &url, "--ca", &right_ca], WAIT);
    assert_eq!(out.ok(), "SERVING\n");
    let upload = run(
        &[
            "upload",
            "--addr",
            &url,
            "--ca",
            &right_ca,
            "--session",
            "s",
            "--name",
            "x.txt",
            "Cargo.toml",
        ],
        WAIT,
    );
    assert!(upload.ok().starts_with("uploaded 1 files"));
    let snapshot = run(
        &[
            "snapshot",
            "--addr",
            &url,
            "--ca",
            &right_ca,
            "--session",
            "s",
            "--json",
        ],
        WAIT,
    );
    let snapshot = Json::parse(snapshot.ok().trim()).unwrap();
    let cargo_toml =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    assert_eq!(
        snapshot["files"]["x.txt"].strings(),
        cargo_toml.lines().collect::<Vec<_>>()
    );
}

/// Bug (issue 11, item 15): a plaintext client against the TLS port got
/// "PERMISSION_DENIED: stream reset by peer: security properties do not
/// meet minimum requirements" (the server's GOAWAY INADEQUATE_SECURITY),
/// which does not say what to change. Every command says that the server
/// speaks TLS and that the client needs https:// and --ca.
#[test]
fn a_plaintext_client_of_a_tls_server_is_told_to_use_https() {
    let dir = TempDir::new("plaintext-on-tls");
    generate_certs(dir.path());
    let file = |name: &str| dir.join(name).display().to_string();
    let server = ServerProcess::start(
        BIN,
        &[
            "--tls-cert",
            &file("server.pem"),
            "--tls-key",
            &file("server.key"),
        ],
    );
    let plaintext = server.url();
    let commands: [&[&str]; 6] = [
        &["snapshot", "--session", "s"],
        &["health"],
        &["watch", "--session", "s"],
        &["upload", "--session", "s", "Cargo.toml"],
        &["join", "--session", "s", "--user", "u"],
        &["load", "--messages", "1"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--addr", &plaintext]);
        let out = run(&args, WAIT);
        // The server's GOAWAY (INADEQUATE_SECURITY) is named when it
        // arrives; when the connection closes first, the client asks the
        // port and says the same.
        let says_so = |line: &str| {
            line.contains(": the server speaks TLS on this port and ")
                && line.ends_with(
                    ": use an https:// address and --ca FILE (the CA that signed its certificate)",
                )
        };
        if command[0] == "load" {
            // load reports per participant, then what it found, in its summary.
            assert_eq!(out.status.code(), Some(1), "{}", out.describe());
            assert!(
                out.stderr_lines().iter().any(|l| {
                    l.contains("the server speaks TLS on this port and ")
                        && l.contains("use an https:// address and --ca FILE")
                }),
                "{}",
                out.describe()
            );
        } else {
            let line = out.one_line_error();
            assert!(
                line.starts_with(&format!("codereview {}: ", command[0])) && says_so(line),
                "{args:?}: {line}"
            );
        }
    }
}

/// A watcher of a session, on a server started with `--drain-timeout 1s`.
fn drain_setup() -> (ServerProcess, Proc) {
    let server = ServerProcess::start(BIN, &["--drain-timeout", "1s"]);
    let dir = TempDir::new("drain");
    write_lines(&dir, "w.rs", &["w".into()]);
    run(
        &[
            "upload",
            "--addr",
            &server.url(),
            "--session",
            "w",
            &dir.file("w.rs"),
        ],
        WAIT,
    )
    .ok();
    let mut watch = BIN.spawn(
        "watch",
        &["watch", "--addr", &server.url(), "--session", "w", "--json"],
    );
    watch.wait_json("caught up", WAIT, |j| j["kind"] == "caught_up");
    (server, watch)
}

#[test]
fn watch_ends_with_unavailable_when_the_server_drains() {
    let (server, mut watch) = drain_setup();
    server.proc.signal("TERM");
    let notice = watch.wait_json("going away", WAIT, |j| j["type"] == "notice");
    assert_eq!(notice["kind"], "going_away", "{notice}");
    // A watcher does not leave by itself: after the drain timeout its stream
    // is ended with UNAVAILABLE, printed as one line.
    let status = watch.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{}", watch.transcript());
    let stderr = watch.stderr();
    assert_eq!(
        stderr,
        ["codereview watch: UNAVAILABLE: server shut down: reconnect and resume"],
        "{}",
        watch.transcript()
    );
}

/// Bug (src/cli/serve.rs): when a stream outlives --drain-timeout, `serve`
/// awaits `&mut server_task` again after it completed in the 1 s grace
/// period, and panics with "JoinHandle polled after completion" (exit 101,
/// no "shutdown complete" log line).
#[test]
fn serve_exits_0_when_a_stream_outlives_the_drain() {
    let (mut server, mut watch) = drain_setup();
    server.proc.signal("TERM");
    watch.wait_exit(Duration::from_secs(5));
    let status = server.proc.wait_exit(Duration::from_secs(5));
    assert!(
        status.success(),
        "server: {status}\n{}",
        server.proc.transcript()
    );
    assert!(
        server
            .proc
            .stderr()
            .iter()
            .any(|l| l.contains(r#""msg":"shutdown complete""#)
                && l.contains(r#""drained_in_time":false"#)),
        "{}",
        server.proc.transcript()
    );
}

/// Bugs (issue 11, item 17): no `-h`, no `--version`; a subcommand's usage
/// error pointed at `codereview --help`; usage errors exited 1 while setup
/// errors exited 2; every `serve` setup error was printed twice (a JSON log
/// line and a plain line). Now: help and the version on stdout with status
/// 0; usage and setup errors on stderr, once, with status 2, pointing at the
/// help of the command concerned.
#[test]
fn help_version_and_usage_errors() {
    for args in [&["-h"][..], &["--help"], &["help"]] {
        let out = run(args, WAIT);
        assert!(
            out.ok()
                .starts_with("Usage: codereview [--version] [<command>]"),
            "{args:?}: {}",
            out.describe()
        );
    }
    for command in [
        "serve", "join", "watch", "upload", "snapshot", "load", "token", "health",
    ] {
        let out = run(&[command, "-h"], WAIT);
        assert!(
            out.ok()
                .starts_with(&format!("Usage: codereview {command} ")),
            "{}",
            out.describe()
        );
    }
    let out = run(&["--version"], WAIT);
    assert_eq!(
        out.ok(),
        format!("codereview {}\n", env!("CARGO_PKG_VERSION"))
    );

    let usage = |args: &[&str]| {
        let out = run(args, WAIT);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.describe());
        assert!(out.stdout.is_empty(), "{}", out.describe());
        out.stderr
    };
    assert_eq!(
        usage(&["serve", "--sesions", "3"]),
        "codereview serve: Unrecognized argument: --sesions\n\
         Run `codereview serve --help` for more information.\n"
    );
    assert_eq!(
        usage(&["join", "--session", "s"]),
        "codereview join: Required options not provided:\n    --user\n\
         Run `codereview join --help` for more information.\n"
    );
    assert_eq!(
        usage(&["dance"]),
        "codereview: Unrecognized argument: dance\n\
         Run `codereview --help` for more information.\n"
    );
    assert_eq!(
        usage(&[]),
        "codereview: no command given\nRun `codereview --help` for the commands.\n"
    );
    // Setup errors: once, plainly, whatever the log format.
    for format in ["json", "text"] {
        assert_eq!(
            usage(&["serve", "--log-format", format, "--addr", "1.2.3"]),
            "codereview serve: bad listen address \"1.2.3\": expected HOST:PORT, e.g. 127.0.0.1:50051\n"
        );
        assert_eq!(
            usage(&["serve", "--log-format", format, "--tls-cert", "x.pem"]),
            "codereview serve: --tls-cert and --tls-key go together\n"
        );
    }
    // A Redis URL that cannot work says which part is wrong, and never
    // shows its password.
    assert_eq!(
        usage(&["serve", "--redis", "redis://:hunter2@cache:99999"]),
        "codereview serve: --redis redis://***@cache:99999: \"99999\" is not a port\n"
    );
    assert_eq!(
        usage(&["serve", "--redis", "redis://cache/one"]),
        "codereview serve: --redis redis://cache/one: \"/one\" is not a database number\n"
    );
    let not_a_ca = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    assert_eq!(
        usage(&[
            "serve",
            "--redis",
            "rediss://127.0.0.1:1",
            "--redis-ca",
            not_a_ca
        ]),
        "codereview serve: --redis rediss://127.0.0.1:1: --redis-ca: no CA certificate in it\n"
    );
    assert_eq!(
        usage(&[
            "token",
            "--secret-file",
            "/nonexistent",
            "--user",
            "u",
            "--role",
            "king"
        ]),
        "codereview token: --role must be author, reviewer or observer, got \"king\"\n"
    );
}

/// Bug (issue 11, item 13): `--max-connections` was not checked against
/// RLIMIT_NOFILE: with the common soft limit of 1024, the default 1024
/// connections fail at accept well before the cap, silently. The server now
/// says so at start, with what to do.
#[test]
fn serve_warns_when_max_connections_exceed_the_file_limit() {
    let serve = ["serve", "--addr", "127.0.0.1:0", "--log-format", "json"];
    let mut server = BIN.spawn_with_file_limit("server", 512, &serve);
    server.wait_stderr("\"listening\"", WAIT, |l| {
        l.contains(r#""msg":"listening""#)
    });
    let warnings: Vec<Json> = server
        .stderr()
        .iter()
        .map(|l| Json::parse(l).unwrap())
        .filter(|j| j["level"] == "warn")
        .collect();
    assert_eq!(warnings.len(), 1, "{}", server.transcript());
    let warning = &warnings[0];
    assert_eq!(
        warning["msg"],
        "too few file descriptors for --max-connections: connections beyond the limit fail at accept"
    );
    assert_eq!(warning["max_connections"].u64(), 1024);
    assert_eq!(warning["needed"].u64(), 1024 + 64);
    assert_eq!(warning["soft_limit"].u64(), 512);
    assert_eq!(warning["hard_limit"].u64(), 512);
    assert_eq!(
        warning["fix"],
        "the hard limit is 512: serve with --max-connections 448 or less, or raise the hard limit"
    );

    // What fits is not warned about.
    let mut fitting = serve.to_vec();
    fitting.extend(["--max-connections", "448"]);
    let mut server = BIN.spawn_with_file_limit("server", 512, &fitting);
    server.wait_stderr("\"listening\"", WAIT, |l| {
        l.contains(r#""msg":"listening""#)
    });
    assert!(
        !server
            .stderr()
            .iter()
            .any(|l| l.contains(r#""level":"warn""#)),
        "{}",
        server.transcript()
    );
}

/// A watch the server refuses at once prints the server's status as one
/// line and exits 1: the failed send of the request (the server ended the
/// call before reading it) must not hide the status behind "UNAVAILABLE:
/// the request stream was closed by the server". A refused token here; an
/// unknown session (NOT_FOUND, issue 11 item 17) takes the same path.
#[test]
fn a_refused_watch_prints_the_servers_status() {
    let dir = TempDir::new("watch-refused");
    let secret = dir.file("secret");
    std::fs::write(
        &secret,
        "a secret of more than thirty-two bytes, for tests\n",
    )
    .unwrap();
    let server = ServerProcess::start(BIN, &["--auth-secret-file", &secret]);
    let url = server.url();
    for _ in 0..100 {
        let out = run(
            &[
                "watch",
                "--addr",
                &url,
                "--session",
                "s",
                "--token",
                "not.a.token",
            ],
            WAIT,
        );
        let line = out.one_line_error();
        assert!(
            line.starts_with("codereview watch: UNAUTHENTICATED: "),
            "{line}"
        );
    }
}

/// Bug (issue 11, item 17): `watch` on a misspelled session waited
/// silently (and created the session). It says so in one line and exits 1,
/// every time (the server ends the call at once: the status must not be
/// lost behind the failed send of the request).
#[test]
fn watch_of_an_unknown_session_is_not_found() {
    let server = ServerProcess::start(BIN, &[]);
    for _ in 0..20 {
        let out = run(
            &["watch", "--addr", &server.url(), "--session", "misspelled"],
            WAIT,
        );
        assert_eq!(
            out.one_line_error(),
            "codereview watch: NOT_FOUND: no session \"misspelled\" (watching does not create a session)"
        );
        assert!(out.stdout.is_empty(), "{}", out.describe());
    }
}
