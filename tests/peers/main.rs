//! Independent implementations against our server: the official gRPC
//! interop cases driven by Python grpcio and Node grpc-js (`interop`),
//! clients generated from the article's original proto (`seed`),
//! `codereview load` against the article's own server (`seed_server`), and
//! standard tooling: gzip with every peer, reflection, grpcurl, bombs
//! (`ecosystem`). Set the peers up with scripts/setup-peers; scripts/test
//! does that and runs these with the peers required.

mod ecosystem;
mod interop;
mod seed;
mod seed_server;

use kit::binary;
use kit::process::Binary;

const BIN: Binary = binary!();
