//! The official gRPC interop cases against the real binary
//! (`codereview serve --interop`), driven by two independent implementations:
//! Python grpcio (tests/python/interop_client.py) and Node @grpc/grpc-js
//! (tests/node/interop_client.js). Set the peers up with scripts/setup-peers;
//! scripts/test does that and runs this with the peers required.

use kit::peers;
use kit::server::ServerProcess;

use crate::BIN;

const PYTHON_CLIENT: &str = "tests/python/interop_client.py";
const NODE_CLIENT: &str = "tests/node/interop_client.js";

#[test]
fn interop_cases_pass_with_grpcio_and_grpc_js() {
    let python = peers::python();
    let node = peers::node();
    if python.is_none() && node.is_none() {
        return;
    }
    let mut server = ServerProcess::start(BIN, &["--interop"]);
    let addr = server.addr.clone();

    // Both clients against one server process: it has to survive each
    // client's cancellations, deadlines and errors as well as serve them.
    for (peer, script) in [(&python, PYTHON_CLIENT), (&node, NODE_CLIENT)] {
        let Some(peer) = peer else { continue };
        let (status, stdout, stderr) = peer.run(script, &["--server", &addr]);
        let report = peer.describe(script, status, &stdout, &stderr);
        assert!(status.success(), "{report}");
        assert!(!stdout.contains("FAIL"), "{report}");
        assert!(
            stdout.contains("PASS cancel_after_first_response"),
            "not every case ran: {report}"
        );
    }

    assert_eq!(
        server.exit_status(),
        None,
        "the server exited during the interop run"
    );
    let (peer, script) = match (&python, &node) {
        (Some(python), _) => (python, PYTHON_CLIENT),
        (None, Some(node)) => (node, NODE_CLIENT),
        (None, None) => unreachable!(),
    };
    let (status, stdout, stderr) = peer.run(script, &["--server", &addr, "--cases", "health"]);
    assert!(
        status.success() && stdout.contains("PASS health"),
        "the server no longer answers after the interop run: {}",
        peer.describe(script, status, &stdout, &stderr)
    );
}
