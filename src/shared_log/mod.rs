//! The session log shared by instances through Redis (`serve --redis`).
//!
//! Each session is a Redis stream whose entry `<index>-1` holds the
//! session's record `index`: one total order per session for every
//! instance. This module only moves records between the registry and
//! Redis; it knows nothing of what they mean:
//!
//! - a worker task runs the registry's jobs in order on one multiplexed
//!   connection: compare-and-append batches (one pipeline of scripts per
//!   batch, whatever the number of sessions in it), loads, snapshots with
//!   the trim behind them, pub/sub publishes, lease checks; and renews this
//!   instance's lease;
//! - a reader task follows the streams of the sessions this instance holds
//!   with blocking XREADs, and hands their new entries to the registry;
//! - a subscriber task hands over the other instances' ephemeral news.
//!
//! Redis failing is reported once (`Health`), and again when it answers.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::pb::store::Record;
use crate::resp::{self, Command, Connection, Value};
use crate::review::ids::Text;

pub mod keys;
pub mod reply;
pub mod scripts;
mod tasks;

pub use reply::{Appended, Stored};

/// How to reach Redis, and how this instance appears there.
#[derive(Clone, PartialEq)]
pub struct SharedLogConfig {
    /// `redis://HOST:PORT[/DB]` or `rediss://…`, a password in it or not.
    pub url: String,
    /// Overrides the URL's password (read from a file, not the command line).
    pub password: Option<String>,
    /// PEM certificates to trust for `rediss://` (none: the system's).
    pub ca_pem: Option<Vec<u8>>,
    /// This instance's name in stream identities and its lease.
    pub instance: Text,
    /// A session's keys expire after this long without a write.
    pub retention: Duration,
    /// How long a lease outlives its last renewal.
    pub lease_ttl: Duration,
}

impl std::fmt::Debug for SharedLogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLogConfig")
            .field("url", &redacted(&self.url))
            .field("instance", &self.instance)
            .field("retention", &self.retention)
            .finish()
    }
}

/// A fresh name for this process: unique among the instances sharing a
/// Redis (a restarted process is a new instance; its old streams are
/// reaped when its old lease expires).
pub fn new_instance_name() -> Text {
    let mut bytes = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Text::from(hex.as_str())
}

/// A URL with its password (if any) hidden, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl SharedLogConfig {
    /// The URL read, with the password from its file (if given) in place
    /// of the URL's.
    fn endpoint(&self) -> Result<resp::Endpoint, String> {
        let mut endpoint = resp::Endpoint::parse(&self.url)
            .map_err(|e| format!("--redis {}: {e}", redacted(&self.url)))?;
        if let Some(password) = &self.password {
            endpoint.password = Some(password.clone());
        }
        Ok(endpoint)
    }

    fn client(&self) -> Result<resp::Client, String> {
        resp::Client::new(self.endpoint()?, self.ca_pem.as_deref())
            .map_err(|e| format!("--redis {}: {e}", redacted(&self.url)))
    }
}

/// Records to append to one session's log, from index `first` on.
#[derive(Debug)]
pub struct Append {
    pub session: Text,
    pub first: u64,
    /// Each record, encoded (its index is `first` + its position).
    pub records: Vec<Vec<u8>>,
}

/// One session's part of a batch: what the append script answered (an
/// error: the answer could not be read).
pub type SessionAppended = (Text, Result<Appended, String>);

/// What the registry asks of Redis.
#[derive(Debug)]
pub enum Job {
    /// Compare-and-append, every session's batch in one pipeline.
    Append(Vec<Append>),
    /// Read a session's snapshot and the log after it.
    Load(Text),
    /// The sessions to follow, each from the index given (the reader keeps
    /// its own place when it is further).
    Follow(BTreeMap<Text, u64>),
    /// Read a session's entries from an index (after a gap).
    ReadFrom { session: Text, from: u64 },
    /// Store a snapshot covering `next` records and trim the log behind it.
    Snapshot {
        session: Text,
        next: u64,
        data: Vec<u8>,
    },
    /// Ephemeral news, per session.
    Publish(Vec<(Text, Vec<u8>)>),
    /// Which of these instances have no lease any more.
    CheckLeases(Vec<Text>),
    /// Keep these sessions' keys from expiring (they have participants).
    Touch(Vec<Text>),
}

/// Why a load failed.
#[derive(Debug, Clone)]
pub enum LoadError {
    /// Redis could not be asked: try again later.
    Unavailable(String),
    /// What Redis holds for the session cannot be read.
    Damaged(String),
}

/// What Redis answered, or sent.
#[derive(Debug)]
pub enum Event {
    /// A batch's outcome, per session (an error: the answer could not be
    /// read for that session); Err: the batch did not run.
    Appended(Result<Vec<SessionAppended>, String>),
    Loaded {
        session: Text,
        result: Result<Stored, LoadError>,
    },
    /// New entries of a followed session (Err: they cannot be read).
    Entries {
        session: Text,
        records: Result<Vec<Record>, String>,
    },
    /// Another (or this) instance's ephemeral news.
    Ephemeral { session: Text, payload: Bytes },
    /// These instances' leases are gone.
    Dead(Vec<Text>),
    /// Redis stopped answering (Err) or answers again (Ok).
    Health(Result<(), String>),
}

/// The registry's end: jobs in, events out.
pub struct SharedLog {
    pub jobs: mpsc::UnboundedSender<Job>,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Redis answered at start.
    pub healthy: bool,
}

/// Connects and takes this instance's lease, then starts the worker,
/// reader and subscriber tasks. Redis not answering is no reason to fail:
/// the log says why, `healthy` is false (readiness too), and the worker
/// keeps trying; `Health(Ok)` comes when Redis answers. Only a URL that
/// cannot work is an error.
pub async fn open(config: SharedLogConfig) -> Result<SharedLog, String> {
    let client = config.client()?;
    let connected = match client.connect(tasks::COMMAND_TIMEOUT).await {
        Ok(mut conn) => tasks::renew_lease(&mut conn, &config).await.map(|()| conn),
        Err(error) => Err(error),
    };
    let (conn, healthy) = match connected {
        Ok(conn) => (Some(conn), true),
        Err(error) => {
            crate::log!(
                Error,
                "Redis is unreachable: not ready until it answers (retrying)",
                redis = redacted(&config.url).as_str(),
                error = error.to_string().as_str()
            );
            (None, false)
        }
    };
    let (jobs, job_rx) = mpsc::unbounded_channel();
    let (event_tx, events) = mpsc::unbounded_channel();
    let (follow_tx, follow_rx) = watch::channel(BTreeMap::new());
    tokio::spawn(tasks::read_loop(
        client.clone(),
        follow_rx,
        event_tx.clone(),
    ));
    tokio::spawn(tasks::subscribe_loop(client.clone(), event_tx.clone()));
    let worker = tasks::Worker::new(client, conn, healthy, config, event_tx, follow_tx);
    tokio::spawn(worker.run(job_rx));
    Ok(SharedLog {
        jobs,
        events,
        healthy,
    })
}

/// A query's outcome: a reply per command.
type Answer = Result<Vec<Value>, resp::Error>;

/// Runs commands as one pipeline with a deadline; missing it fails the
/// connection.
async fn query(conn: &mut Connection, commands: &[Command], timeout: Duration) -> Answer {
    match tokio::time::timeout(timeout, conn.pipeline(commands)).await {
        Ok(answer) => answer,
        Err(_) => Err(resp::Error::Connection(format!(
            "Redis did not answer within {timeout:?}"
        ))),
    }
}
