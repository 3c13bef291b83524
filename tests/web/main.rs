//! The web front end: gRPC-Web over HTTP/1.1 and HTTP/2 from raw clients
//! (`grpc_web`: framing, the page's assets, CORS, limits, and a browser
//! participant beside a bidi one), and the review page in a real Chromium
//! with a `codereview join` in the same session (`browser`, the Node script
//! tests/web/browser_test.js on playwright-core).

mod browser;
mod grpc_web;

use kit::binary;
use kit::process::Binary;

const BIN: Binary = binary!();
