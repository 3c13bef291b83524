//! The wire layer: gRPC over HTTP/2 on the `h2` crate, written here. It knows
//! nothing of code review.
//!
//! Follow one inbound message: socket → [`sniff`] (what protocol?) → [`tls`]
//! → h2 connection ([`server::connection`]) → stream ([`server::dispatch`]:
//! HTTP checks, `grpc-timeout`, routing) → [`inbound`] (flow control) →
//! [`codec`] (envelope) → [`compression`] (gzip, bounded) → prost → the
//! handler. And back: handler →
//! [`server::ResponseSink`] → [`outbound`] (capacity, coalescing) → h2.

pub mod base64;
#[cfg(feature = "client")]
pub mod client;
pub mod codec;
pub mod compression;
pub mod health;
pub mod inbound;
pub mod metadata;
pub mod observe;
pub mod outbound;
pub mod percent;
pub mod reflection;
pub mod server;
pub mod shutdown;
pub mod sniff;
pub mod status;
pub mod timeout;
pub mod tls;
pub mod web;

pub use metadata::Metadata;
pub use status::{Code, Status};
