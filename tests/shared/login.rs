//! How an instance reaches Redis: a user, password and database from the
//! URL or the password file, and `rediss://` verified against a CA. A
//! login Redis refuses, or a certificate nobody vouches for, keeps the
//! instance not ready; it never serves on a Redis it could not trust.

use kit::participant::Participant;
use kit::payloads::comment;
use kit::process::{Binary, TempDir};
use kit::redis::RedisServer;
use kit::server::ServerProcess;
use kit::tls::Certs;
use kit::{LONG, WAIT, binary};

use super::instance_with;

const BINARY: Binary = binary!();

/// Redis with an ACL user `app` whose password needs escaping in a URL.
const PASSWORD: &str = "s3cr@t:x";
const PASSWORD_IN_URL: &str = "s3cr%40t%3Ax";

fn redis_with_user() -> RedisServer {
    RedisServer::start_with(vec![
        "--user".into(),
        "app".into(),
        "on".into(),
        format!(">{PASSWORD}"),
        "~*".into(),
        "&*".into(),
        "+@all".into(),
    ])
}

/// Joins `session` on `server` and has one comment acknowledged.
async fn comment_acknowledged(server: &kit::server::TestServer, session: &str) {
    let (mut ann, _) = Participant::join(&server.channel().await, None, session, "ann").await;
    let n = ann.send(comment("", 0, "shared")).await;
    ann.ack_of(n).await;
}

/// Why `server` (started with `--metrics-addr`) says it cannot use Redis;
/// checks that it is not ready.
fn not_ready_because(server: &ServerProcess) -> String {
    let said = server
        .wait_for_msg(
            "Redis is unreachable: not ready until it answers (retrying)",
            WAIT,
        )
        .expect("serve says it cannot use Redis");
    let metrics = server.metrics.clone().expect("a metrics address");
    assert_eq!(super::failures::http_status(&metrics, "/readyz"), Some(503));
    said.str_of("error").unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_password_and_database_of_the_url_are_used() {
    let redis = redis_with_user();
    let url = format!("redis://app:{PASSWORD_IN_URL}@127.0.0.1:{}/2", redis.port);
    let server = instance_with(&redis, |config| {
        config.redis.as_mut().expect("shared").url = url;
    })
    .await;
    comment_acknowledged(&server, "db2").await;
    let in_db2 = redis.commands(&[&["SELECT", "2"], &["KEYS", "codereview:{db2}:*"]]);
    assert!(in_db2.contains("codereview:{db2}:log"), "{in_db2}");
    let in_db0 = redis.command(&["KEYS", "codereview:{db2}:*"]);
    assert_eq!(in_db0, "*0\r\n", "nothing of the session in database 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_file_overrides_the_url_and_a_refused_login_is_not_ready() {
    let redis = redis_with_user();
    let wrong = format!("redis://app:wrong@127.0.0.1:{}", redis.port);
    let dir = TempDir::new("redis-login");
    let password_file = dir.join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("writing the password");
    let password_file = password_file.to_string_lossy().into_owned();

    let refused = ServerProcess::start(
        BINARY,
        &["--redis", &wrong, "--metrics-addr", "127.0.0.1:0"],
    );
    let error = not_ready_because(&refused);
    assert!(error.contains("refused the login"), "{error}");
    assert!(error.contains("WRONGPASS"), "{error}");

    let server = ServerProcess::start(
        BINARY,
        &[
            "--redis",
            &wrong,
            "--redis-password-file",
            &password_file,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let metrics = server.metrics.clone().expect("a metrics address");
    super::failures::wait_until_ready(&metrics, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_redis_against_the_ca_given() {
    let certs = Certs::generate("redis-tls");
    let (redis, tls_port) = RedisServer::start_tls(&certs);
    let ca_pem = std::fs::read(certs.ca()).expect("the CA");
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let server = instance_with(&redis, |config| {
        let shared = config.redis.as_mut().expect("shared");
        shared.url = url.clone();
        shared.ca_pem = Some(ca_pem);
    })
    .await;
    comment_acknowledged(&server, "tls").await;
    let keys = redis.command(&["KEYS", "codereview:{tls}:*"]);
    assert!(keys.contains("codereview:{tls}:log"), "{keys}");

    // Another CA did not sign Redis's certificate: no trust, not ready.
    let stranger = Certs::generate("redis-tls-stranger");
    let stranger_ca = stranger.ca().to_string_lossy().into_owned();
    let untrusting = ServerProcess::start(
        BINARY,
        &[
            "--redis",
            &url,
            "--redis-ca",
            &stranger_ca,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let error = not_ready_because(&untrusting);
    assert!(error.contains("TLS handshake"), "{error}");
}
