//! A real `redis-server` (the Debian package) for the shared-mode tests: on
//! a free loopback port, in its own temporary directory, with the
//! append-only file on and fsynced on every write (so a restart keeps what
//! was acknowledged), stopped by pid. The same instance can be stopped and
//! started again on the same port and files.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{TempDir, free_port};

/// Where the server binary is: `$REDIS_SERVER`, else the Debian path.
pub fn redis_server_binary() -> Option<PathBuf> {
    let path = std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"));
    path.exists().then_some(path)
}

pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Settings beyond the defaults, given on its command line.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one; panics (with how to get it) when the binary is missing.
    pub fn start() -> RedisServer {
        RedisServer::start_with(Vec::new())
    }

    /// Starts one with more settings (`--user ...`, `--tls-port ...`).
    pub fn start_with(extra: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
            extra,
        };
        server.start_again();
        server
    }

    /// Starts one that also serves TLS (with the certificates in `certs`,
    /// not asking clients for theirs) on the port returned.
    pub fn start_tls(certs: &crate::tls::Certs) -> (RedisServer, u16) {
        let tls_port = free_port();
        let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
        let server = RedisServer::start_with(vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(certs.server_cert()),
            "--tls-key-file".into(),
            path(certs.server_key()),
            "--tls-ca-cert-file".into(),
            path(certs.ca()),
            "--tls-auth-clients".into(),
            "no".into(),
        ]);
        (server, tls_port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server (again) on the same port and files; waits until
    /// it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is running already");
        let binary = redis_server_binary().expect(
            "redis-server is not installed: apt-get install redis-server (.ci/run does), \
             or set REDIS_SERVER",
        );
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--protected-mode", "no"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Whether it answers PING (a raw RESP exchange).
    pub fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        conn.write_all(b"PING\r\n").is_ok()
            && conn.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// One command's raw reply (RESP), for checks of what Redis holds.
    pub fn command(&self, args: &[&str]) -> String {
        self.commands(&[args])
    }

    /// The raw replies (RESP) of commands sent on one connection, in order
    /// (`SELECT` then a query of that database).
    pub fn commands(&self, commands: &[&[&str]]) -> String {
        use std::io::{Read, Write};
        let mut conn =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to redis");
        conn.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("a read timeout");
        let mut request = String::new();
        for args in commands {
            request.push_str(&format!("*{}\r\n", args.len()));
            for arg in *args {
                request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
        }
        conn.write_all(request.as_bytes())
            .expect("sending to redis");
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the server pauses (replies here are small).
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// Stops it: SIGKILL (as a crash) or SIGTERM; waits for the exit.
    pub fn stop(&mut self, kill: bool) {
        if let Some(mut child) = self.child.take() {
            crate::process::send_signal(child.id(), if kill { "KILL" } else { "TERM" });
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
