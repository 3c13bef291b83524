//! The review page in Debian's Chromium, driven by tests/web/browser_test.js
//! (playwright-core): two pages and a `codereview join` in one session, a
//! proxy between the pages and the server that this harness cuts when the
//! script asks, and an npm gRPC-Web client (connect-web) on another origin,
//! allowed by `--web-origin`. The script asserts through the DOM; here, the
//! final documents it reports must be the server's snapshot, and its
//! screenshot must exist.

use std::path::PathBuf;
use std::time::Duration;

use kit::json::Json;
use kit::process::free_port;
use kit::proxy::Proxy;
use kit::server::ServerProcess;

use super::BIN;

/// The whole browser run (it takes well under a minute; this bounds a hang).
const BROWSER_RUN: Duration = Duration::from_secs(110);

#[test]
fn two_pages_and_a_join_converge_through_a_cut_in_chromium() {
    let Some((node, chromium)) = kit::peers::browser() else {
        return;
    };
    let client_port = free_port();
    let client_origin = format!("http://127.0.0.1:{client_port}");
    let server = ServerProcess::start(BIN, &["--web-origin", &client_origin]);
    let proxy = Proxy::start(server.addr.as_str());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-browser");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("the output dir");
    let descriptors = out.join("descriptors.bin");
    std::fs::write(&descriptors, codereview::pb::DESCRIPTOR_SET).expect("the descriptor set");

    let script = kit::root().join("tests/web/browser_test.js");
    let (out_text, descriptors_text) =
        (out.display().to_string(), descriptors.display().to_string());
    let port_text = client_port.to_string();
    let mut run = node.spawn(&[
        script.to_str().expect("a UTF-8 path"),
        "--bin",
        BIN.path(),
        "--chromium",
        chromium.to_str().expect("a UTF-8 path"),
        "--page-url",
        &proxy.url(),
        "--direct-url",
        &server.url(),
        "--client-port",
        &port_text,
        "--descriptors",
        &descriptors_text,
        "--out",
        &out_text,
    ]);
    let deadline = std::time::Instant::now() + BROWSER_RUN;
    let report = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = run
            .stdout
            .next_matching(left, |_| true)
            .unwrap_or_else(|why| {
                panic!("the browser test stopped ({why}):\n{}", run.transcript())
            });
        match line.as_str() {
            "proxy cut" => {
                proxy.set_refusing(true);
                proxy.cut();
                run.send("done");
            }
            "proxy restore" => {
                proxy.set_refusing(false);
                run.send("done");
            }
            other if other.starts_with('{') => break other.to_owned(),
            _ => {}
        }
    };
    let status = run.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{}", run.transcript());
    assert!(proxy.cuts() >= 1, "the proxy was never cut");

    let report = Json::parse(&report).expect("the script's report is JSON");
    assert_eq!(report.get("ok"), Some(&Json::Bool(true)));
    let snapshot = server.snapshot("browser-e2e");
    assert_eq!(
        report.get("files"),
        snapshot.get("files"),
        "{}",
        run.transcript()
    );
    let screenshot = out.join("page.png");
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}",
        screenshot.display()
    );
}
