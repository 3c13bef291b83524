//! Security, part 1: TLS termination. Certificates are generated at test
//! time (certs/gen.sh into a temp directory). Every test keeps a
//! well-behaved [`Canary`] pair (or another well-behaved client) on the same
//! server and checks it is unaffected by what the test does.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use codereview::grpc::Code;
use codereview::grpc::server::ServerConfig;
use codereview::pb::codereview::code_edit::Op;
use codereview::review::roles::Role;
use kit::h2raw;
use kit::participant::{Participant, get_snapshot, health_check};
use kit::process::TempDir;
use kit::server::{ServerProcess, TestServer, connect, loopback, plaintext_endpoint, tls_endpoint};
use kit::tls::{ALL_VERSIONS, Certs, SECRET, TLS12_ONLY, TLS13_ONLY, client_config, token};
use kit::{STEP, eventually, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ProtocolVersion};

use crate::canary::Canary;
use crate::{BIN, assert_code, server_config};

/// A TLS review server from `certs` (mTLS when `mtls`).
async fn tls_server(certs: &Certs, mtls: bool, config: ServerConfig) -> TestServer {
    let client = if mtls {
        certs.client_with_certificate()
    } else {
        certs.client()
    };
    TestServer::launch(loopback(|c| c.server = config))
        .tls(certs.server_files(mtls), client)
        .start()
        .await
}

/// A bare TLS handshake with `config`: the negotiated version and ALPN.
async fn handshake(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<(Option<ProtocolVersion>, Option<Vec<u8>>)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(addr.ip().to_string()).expect("IP server name");
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut stream = within(STEP, "TLS handshake", connector.connect(name, tcp)).await?;
    let (_, session) = stream.get_ref();
    let negotiated = (
        session.protocol_version(),
        session.alpn_protocol().map(<[u8]>::to_vec),
    );
    let _ = stream.shutdown().await;
    Ok(negotiated)
}

/// A client that uses `channel` for a whole session round trip: joins
/// `session`, edits, and reads the edit back in a snapshot.
async fn session_round_trip(channel: &codereview::grpc::client::Channel, session: &str) {
    let (mut p, _) = Participant::join(channel, None, session, "tls-client").await;
    let sequence = p.edit(Op::Replace, "a.txt", 0, "over tls").await;
    p.outcome(sequence).await.ack();
    let snapshot = get_snapshot(channel, None, session)
        .await
        .expect("GetSnapshot over TLS");
    assert_eq!(snapshot.files[0].lines, vec!["over tls".to_owned()]);
}

/// Reads until the peer closes (EOF or reset); the bytes read. Panics after
/// `wait`.
async fn read_to_close(tcp: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    within(wait, "the server to close the connection", async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
    })
    .await;
    out
}

// ---------------------------------------------------------------------------
// Serving TLS.

#[tokio::test]
async fn tls_client_with_the_right_ca_is_served_over_h2() {
    let certs = Certs::generate("right-ca");
    let server = tls_server(&certs, false, server_config()).await;
    let mut canary = Canary::start(&server).await;

    let (version, alpn) = handshake(server.addr, certs.client())
        .await
        .expect("TLS handshake with the right CA");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "ALPN must be h2");
    assert!(version.is_some());

    let channel = server.channel().await;
    session_round_trip(&channel, "right-ca").await;
    canary.check().await;
}

#[tokio::test]
async fn tls12_only_and_tls13_only_clients_are_both_served() {
    let certs = Certs::generate("versions");
    let server = tls_server(&certs, false, server_config()).await;
    let mut canary = Canary::start(&server).await;

    for (versions, expected, session) in [
        (TLS12_ONLY, ProtocolVersion::TLSv1_2, "tls12"),
        (TLS13_ONLY, ProtocolVersion::TLSv1_3, "tls13"),
    ] {
        let config = client_config(&certs.ca(), None, versions, &[b"h2"]);
        let (version, alpn) = handshake(server.addr, config.clone())
            .await
            .unwrap_or_else(|e| panic!("{expected:?}-only handshake: {e}"));
        assert_eq!(version, Some(expected));
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

        let channel = connect(&server.endpoint(), Some(config))
            .await
            .unwrap_or_else(|s| panic!("{expected:?}-only client: {s}"));
        session_round_trip(&channel, session).await;
        canary.check().await;
    }
}

#[tokio::test]
async fn client_offering_only_http11_alpn_is_refused() {
    let certs = Certs::generate("alpn");
    let server = tls_server(&certs, false, server_config()).await;
    let mut canary = Canary::start(&server).await;

    let http11 = client_config(&certs.ca(), None, ALL_VERSIONS, &[b"http/1.1"]);
    let error = handshake(server.addr, http11.clone())
        .await
        .expect_err("a client offering only http/1.1 must not complete the handshake");
    assert!(
        error.to_string().contains("NoApplicationProtocol"),
        "expected a no_application_protocol alert, got: {error}"
    );
    let status = match connect(&server.endpoint(), Some(http11)).await {
        Err(status) => status,
        Ok(channel) => health_check(&channel)
            .await
            .expect_err("http/1.1-only client served"),
    };
    assert_code(&status, Code::Unavailable, "http/1.1-only ALPN");
    assert!(
        status.message().contains("NoApplicationProtocol"),
        "the client's error should say why: {status}"
    );
    canary.check().await;
}

#[tokio::test]
async fn client_with_the_wrong_ca_gets_a_clear_error() {
    let certs = Certs::generate("server-ca");
    let other = Certs::generate("other-ca");
    let server = tls_server(&certs, false, server_config()).await;
    let mut canary = Canary::start(&server).await;

    let status = connect(&server.endpoint(), Some(other.client()))
        .await
        .expect_err("a client trusting another CA must not connect");
    assert_code(&status, Code::Unavailable, "wrong CA");
    let message = status.message();
    assert!(
        message.contains("TLS handshake") && message.contains("invalid peer certificate"),
        "the error should name the TLS handshake and the certificate: {status}"
    );
    canary.check().await;
}

// ---------------------------------------------------------------------------
// Mutual TLS.

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let certs = Certs::generate("mtls-refuse");
    let server = tls_server(&certs, true, server_config()).await;
    let mut canary = Canary::start(&server).await;

    for versions in [TLS12_ONLY, TLS13_ONLY] {
        let anonymous = client_config(&certs.ca(), None, versions, &[b"h2"]);
        // TLS 1.2 fails the handshake itself; with TLS 1.3 the client may
        // finish its side first and learn of the refusal on the first read.
        let status = match connect(&server.endpoint(), Some(anonymous)).await {
            Err(status) => status,
            Ok(channel) => health_check(&channel)
                .await
                .expect_err("a client without a certificate was served"),
        };
        assert_code(&status, Code::Unavailable, "no client certificate");
    }
    // A client certificate from another CA is refused as well.
    let other = Certs::generate("mtls-other");
    let foreign = client_config(
        &certs.ca(),
        Some((&other.client_cert(), &other.client_key())),
        ALL_VERSIONS,
        &[b"h2"],
    );
    let status = match connect(&server.endpoint(), Some(foreign)).await {
        Err(status) => status,
        Ok(channel) => health_check(&channel)
            .await
            .expect_err("a client certificate from another CA was accepted"),
    };
    assert_code(&status, Code::Unavailable, "foreign client certificate");
    canary.check().await;
}

#[tokio::test]
async fn mtls_serves_a_client_with_a_certificate() {
    let certs = Certs::generate("mtls-ok");
    let server = tls_server(&certs, true, server_config()).await;
    // The canary itself connects with the client certificate.
    let mut canary = Canary::start(&server).await;

    let channel = connect(&server.endpoint(), Some(certs.client_with_certificate()))
        .await
        .expect("mTLS client");
    session_round_trip(&channel, "mtls").await;
    canary.check().await;
}

// ---------------------------------------------------------------------------
// Reloading the certificate (SIGHUP, real binary).

#[tokio::test]
async fn sighup_reload_serves_the_new_certificate_and_keeps_old_connections() {
    let certs = Certs::generate("reload");
    let cert = certs.server_cert();
    let key = certs.server_key();
    let mut process = ServerProcess::start(
        BIN,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let addr: SocketAddr = process.addr.parse().expect("listening address");
    let endpoint = tls_endpoint(addr);
    let old_ca = certs.client();

    // Before the reload: two participants on their own connections.
    let old_writer = connect(&endpoint, Some(old_ca.clone()))
        .await
        .expect("connect with the first CA");
    let old_reader = connect(&endpoint, Some(old_ca.clone()))
        .await
        .expect("connect with the first CA");
    let (mut writer, _) = Participant::join(&old_writer, None, "reload", "writer").await;
    let (mut reader, _) = Participant::join(&old_reader, None, "reload", "reader").await;
    let sequence = writer.edit(Op::Replace, "f.txt", 0, "before reload").await;
    writer.outcome(sequence).await.ack();
    reader.recv_edit("before reload").await;

    // New CA, new certificate, same files; then SIGHUP.
    certs.regenerate();
    let new_ca = certs.client();
    process.signal("HUP");
    eventually(
        STEP,
        "the \"TLS certificate reloaded\" log line",
        || async {
            let log = process.log().join("\n");
            if log.contains("TLS certificate reloaded") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
    assert!(
        process.exit_status().is_none(),
        "the server exited on SIGHUP"
    );

    // A new connection verifies against the new CA only.
    let fresh = connect(&endpoint, Some(new_ca))
        .await
        .expect("a new connection trusting the new CA");
    let snapshot = get_snapshot(&fresh, None, "reload")
        .await
        .expect("GetSnapshot on a new connection");
    assert_eq!(snapshot.files[0].lines, vec!["before reload".to_owned()]);
    let status = connect(&endpoint, Some(old_ca))
        .await
        .expect_err("a new connection trusting only the old CA must fail");
    assert!(
        status.message().contains("invalid peer certificate"),
        "old CA after reload: {status}"
    );

    // A reload from broken files fails and keeps the working certificate.
    let new_ca = certs.client();
    std::fs::write(&cert, b"not a certificate").expect("break the certificate file");
    process.signal("HUP");
    eventually(STEP, "the \"TLS reload failed\" log line", || async {
        let log = process.log().join("\n");
        if log.contains("TLS reload failed") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    let again = connect(&endpoint, Some(new_ca))
        .await
        .expect("a new connection after a failed reload");
    health_check(&again)
        .await
        .expect("served after a failed reload");

    // The connections opened before the reload keep working.
    let sequence = writer.edit(Op::Replace, "f.txt", 0, "after reload").await;
    writer.outcome(sequence).await.ack();
    reader.recv_edit("after reload").await;
    get_snapshot(&old_reader, None, "reload")
        .await
        .expect("a new call on a connection opened before the reload");
    writer.assert_open().await;
    reader.assert_open().await;
}

// ---------------------------------------------------------------------------
// Handshakes and connection counts.

#[tokio::test]
async fn stalled_tls_handshakes_do_not_stop_the_server_accepting() {
    let handshake_timeout = Duration::from_secs(3);
    let certs = Certs::generate("stalled");
    let config = ServerConfig {
        handshake_timeout,
        ..server_config()
    };
    let server = tls_server(&certs, false, config).await;
    let mut canary = Canary::start(&server).await;
    let (baseline, ..) = server.wire();

    // 25 sockets that send nothing and 25 that send the start of a
    // ClientHello (a record announcing 200 bytes, then 6 of them).
    let partial_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
    ];
    let mut stalled = Vec::new();
    for i in 0..50 {
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        if i % 2 == 1 {
            tcp.write_all(partial_hello).await.expect("write");
        }
        stalled.push((tcp, Instant::now()));
    }
    server
        .wait_for_connections("the 50 stalled sockets to be accepted", |n| {
            n >= baseline + 50
        })
        .await;

    // A good client is served while they are all still open.
    let channel = server.channel().await;
    session_round_trip(&channel, "while-stalled").await;
    canary.check().await;
    for (i, (tcp, _)) in stalled.iter().enumerate() {
        let mut byte = [0u8; 1];
        match tcp.try_read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => {
                panic!("stalled socket {i} was closed before the good client was served: {other:?}")
            }
        }
    }

    // Each stalled socket is closed once the handshake timeout has passed.
    for (i, (mut tcp, opened)) in stalled.into_iter().enumerate() {
        let bytes = read_to_close(&mut tcp, handshake_timeout + STEP).await;
        assert!(bytes.is_empty(), "stalled socket {i} received {bytes:?}");
        assert!(
            opened.elapsed() >= handshake_timeout / 2,
            "stalled socket {i} closed after {:?}, well before the handshake timeout",
            opened.elapsed()
        );
    }
    drop(channel);
    server
        .wait_for_connections("the stalled connections to be released", |n| n == baseline)
        .await;
    canary.check().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let server = TestServer::start(loopback(|c| c.server.max_connections = 5)).await;
    // Connections 1 and 2: the canary; 3 to 5: plain clients.
    let mut canary = Canary::start(&server).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        let channel = server.channel().await;
        health_check(&channel)
            .await
            .expect("connection within the cap");
        others.push(channel);
    }
    server
        .wait_for_connections("five connections", |n| n == 5)
        .await;

    // The sixth: closed without a byte (no SETTINGS, nothing).
    let mut sixth = TcpStream::connect(server.addr).await.expect("tcp connect");
    let _ = sixth.write_all(h2raw::PREFACE).await;
    let bytes = read_to_close(&mut sixth, STEP).await;
    assert!(bytes.is_empty(), "the sixth connection received {bytes:?}");
    // Our client sees the refusal as UNAVAILABLE.
    let status = match connect(&server.endpoint(), None).await {
        Err(status) => status,
        Ok(channel) => health_check(&channel)
            .await
            .expect_err("a sixth connection was served"),
    };
    assert_code(&status, Code::Unavailable, "sixth connection");

    // The first five still work.
    canary.check().await;
    for channel in &others {
        health_check(channel)
            .await
            .expect("connection within the cap");
    }
    // A slot freed is a slot usable again.
    others.pop();
    server
        .wait_for_connections("the closed connection to be released", |n| n == 4)
        .await;
    let channel = server.channel().await;
    health_check(&channel)
        .await
        .expect("a connection after one was released");
    canary.check().await;
}

// ---------------------------------------------------------------------------
// Non-loopback addresses (real binary).

/// Runs `codereview serve ARGS` expecting it to exit by itself; its exit
/// status and stderr. Kills it and fails if it is still running after
/// [`STEP`] (it started serving when it should have refused).
fn serve_expecting_exit(args: &[&str]) -> (ExitStatus, String) {
    let all: Vec<&str> = ["serve", "--data-dir", "none"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let mut serve = BIN.spawn("serve", &all);
    let status = serve.try_wait_exit(STEP).unwrap_or_else(|| {
        panic!(
            "`codereview serve {}` is still running: it should have refused to start",
            args.join(" ")
        )
    });
    (status, serve.stderr().join("\n"))
}

fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(r#""level":"warn""#))
        .collect()
}

/// The loopback address of a server listening on `0.0.0.0:PORT`.
fn loopback_addr(addr: &str) -> SocketAddr {
    let port: u16 = addr.rsplit(':').next().unwrap().parse().expect("port");
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn non_loopback_plaintext_needs_insecure() {
    let (status, stderr) = serve_expecting_exit(&["--addr", "0.0.0.0:0"]);
    assert!(!status.success(), "serve exited with {status}");
    assert!(
        stderr.contains("--insecure") && stderr.contains("--tls-cert"),
        "the refusal should name --insecure (and --tls-cert): {stderr}"
    );

    let process = ServerProcess::start(BIN, &["--addr", "0.0.0.0:0", "--insecure"]);
    let log = process.log().join("\n");
    let warned = warnings(&log);
    assert!(
        warned
            .iter()
            .any(|l| l.contains("plaintext") && l.contains("--insecure")),
        "expected a warning about plaintext with --insecure; log:\n{log}"
    );
    let channel = connect(&plaintext_endpoint(loopback_addr(&process.addr)), None)
        .await
        .expect("connect");
    health_check(&channel)
        .await
        .expect("serving with --insecure");
    session_round_trip(&channel, "insecure").await;
}

#[tokio::test]
async fn non_loopback_without_auth_needs_insecure() {
    let certs = Certs::generate("nonloop-auth");
    let cert = certs.server_cert();
    let key = certs.server_key();
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];

    // TLS but no --auth-secret-file: refused.
    let mut args = vec!["--addr", "0.0.0.0:0"];
    args.extend(tls);
    let (status, stderr) = serve_expecting_exit(&args);
    assert!(!status.success(), "serve exited with {status}");
    assert!(
        stderr.contains("--insecure") && stderr.contains("--auth-secret-file"),
        "the refusal should name --auth-secret-file and --insecure: {stderr}"
    );

    // With --insecure: starts, with a warning about authentication.
    args.push("--insecure");
    let process = ServerProcess::start(BIN, &args);
    let log = process.log().join("\n");
    assert!(
        warnings(&log)
            .iter()
            .any(|l| l.contains("without authentication")),
        "expected a warning about running without authentication; log:\n{log}"
    );
    let channel = connect(
        &tls_endpoint(loopback_addr(&process.addr)),
        Some(certs.client()),
    )
    .await
    .expect("connect");
    session_round_trip(&channel, "insecure-tls").await;
    drop(process);

    // TLS and a secret: starts without any warning, and wants tokens.
    let secret_dir = TempDir::new("secret");
    let secret = secret_dir.join("secret");
    std::fs::write(&secret, SECRET).expect("write secret");
    let mut args = vec!["--addr", "0.0.0.0:0"];
    args.extend(tls);
    args.extend(["--auth-secret-file", secret.to_str().unwrap()]);
    let process = ServerProcess::start(BIN, &args);
    let log = process.log().join("\n");
    assert!(warnings(&log).is_empty(), "unexpected warnings:\n{log}");
    let channel = connect(
        &tls_endpoint(loopback_addr(&process.addr)),
        Some(certs.client()),
    )
    .await
    .expect("connect");
    health_check(&channel).await.expect("health needs no token");
    let status = get_snapshot(&channel, None, "s")
        .await
        .expect_err("GetSnapshot without a token");
    assert_code(&status, Code::Unauthenticated, "no token");
    let token = token("ann", Role::Author, None, 60);
    let (mut p, _) = Participant::join(&channel, Some(&token), "secured", "ann").await;
    let sequence = p.edit(Op::Replace, "f.txt", 0, "with token").await;
    p.outcome(sequence).await.ack();
    drop(process);
}

// ---------------------------------------------------------------------------
// Plaintext on the TLS port.

#[tokio::test]
async fn http1_text_on_the_tls_port_gets_400() {
    let certs = Certs::generate("plain-http1");
    let server = tls_server(&certs, false, server_config()).await;
    let mut canary = Canary::start(&server).await;

    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let response = read_to_close(&mut tcp, STEP).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
    assert!(text.contains("requires TLS"), "{text:?}");
    canary.check().await;
}

#[tokio::test]
async fn h2c_on_the_tls_port_gets_goaway_inadequate_security() {
    let certs = Certs::generate("plain-h2c");
    let server = tls_server(&certs, false, server_config()).await;
    let mut canary = Canary::start(&server).await;

    let mut conn = h2raw::Conn::connect(server.addr).await;
    conn.read_until_eof(STEP).await;
    let goaway = conn
        .goaway
        .clone()
        .unwrap_or_else(|| panic!("no GOAWAY: {}", conn.describe_log()));
    const INADEQUATE_SECURITY: u32 = 0xc;
    assert_eq!(goaway.code, INADEQUATE_SECURITY, "{goaway:?}");

    // Our client reports it as PERMISSION_DENIED.
    let status = match connect(&plaintext_endpoint(server.addr), None).await {
        Err(status) => status,
        Ok(channel) => health_check(&channel)
            .await
            .expect_err("plaintext h2 was served on the TLS port"),
    };
    assert_code(&status, Code::PermissionDenied, "h2c on the TLS port");
    canary.check().await;
}

// ---------------------------------------------------------------------------
// Gaps found (ignored until the server is fixed; see the ignore reasons).

#[tokio::test]
async fn handshake_timeout_counts_from_accept_not_per_phase() {
    let handshake_timeout = Duration::from_secs(2);
    let certs = Certs::generate("budget");
    let config = ServerConfig {
        handshake_timeout,
        ..server_config()
    };
    let server = tls_server(&certs, false, config).await;
    let mut canary = Canary::start(&server).await;

    // Silent for most of the budget, then the start of a ClientHello.
    let opened = Instant::now();
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tokio::time::sleep(handshake_timeout * 9 / 10).await;
    let _ = tcp.write_all(&[0x16, 0x03, 0x01]).await;
    read_to_close(&mut tcp, handshake_timeout * 4).await;
    let lived = opened.elapsed();
    assert!(
        lived < handshake_timeout + handshake_timeout * 2 / 5,
        "a connection without a working HTTP/2 connection lived {lived:?} with \
         handshake_timeout {handshake_timeout:?}"
    );
    canary.check().await;
}
