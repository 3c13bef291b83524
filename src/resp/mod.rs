//! A small Redis client: what the shared log needs and nothing more.
//!
//! - [`value`]: RESP2 values, commands encoded, replies decoded (pure,
//!   bounded, fuzzed: whatever Redis sends is input);
//! - [`endpoint`]: `redis://` and `rediss://` URLs;
//! - [`connection`]: a connection over TCP or rustls TLS, logged in, one
//!   command or pipeline at a time.
//!
//! It knows nothing of code review or of the shared log's keys. RESP2 only
//! (no `HELLO 3`): pub/sub messages then come as arrays on a connection of
//! their own, which is how the shared log reads them.

pub mod connection;
pub mod endpoint;
pub mod value;

pub use connection::{Client, Connection, Error};
pub use endpoint::Endpoint;
pub use value::{Command, Decoder, Value};
