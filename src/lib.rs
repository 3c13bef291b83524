//! codereview: a real-time collaborative code-review server and client over
//! gRPC, in one small static binary.
//!
//! Layers, dependencies pointing down only:
//! - [`cli`]: the commands (serve, join, watch, upload, snapshot, token, load, health;
//!   all but serve need the default `client` feature).
//! - [`app`]: the server assembled from one configuration, and its lifecycle.
//! - [`web`]: the review page the server serves to browsers (embedded assets).
//! - [`review`]: the domain — sessions, operational transformation, the registry.
//! - [`grpc`]: the wire — gRPC framing on h2, status, metadata, server, client, TLS.
//! - [`resp`]: a small Redis client (RESP2, TCP or TLS) under the shared log.

#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cli;
pub mod fuzz_targets;
pub mod grpc;
pub mod interop;
pub mod logging;
pub mod metrics;
pub mod pb;
pub mod protowire;
pub mod resp;
pub mod review;
pub mod shared_log;
pub mod store;
pub mod web;
