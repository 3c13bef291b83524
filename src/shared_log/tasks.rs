//! The tasks that talk to Redis: the worker (jobs and the lease), the
//! reader (blocking reads of the followed streams) and the subscriber
//! (ephemeral news).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};

use super::{Answer, Event, Job, LoadError, SharedLogConfig, keys, query, reply, scripts};
use crate::review::ids::Text;

/// How long a command may take before Redis counts as unreachable.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one blocking read waits for entries.
const READ_BLOCK: Duration = Duration::from_secs(5);
/// Entries per read.
const READ_COUNT: usize = 1000;
/// How often the lease is renewed (and Redis tried, while it fails).
const LEASE_RETRY: Duration = Duration::from_secs(1);
/// Wait before connecting again after a failure.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

pub async fn connect(
    client: &redis::Client,
    response_timeout: Duration,
) -> Result<MultiplexedConnection, String> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())
}

/// Sets (or renews) this instance's lease.
pub async fn renew_lease(
    conn: &mut MultiplexedConnection,
    config: &SharedLogConfig,
) -> Result<(), String> {
    let mut set = redis::cmd("SET");
    set.arg(keys::lease(&config.instance))
        .arg(1)
        .arg("PX")
        .arg(config.lease_ttl.as_millis() as u64);
    query(conn, &set, COMMAND_TIMEOUT).await.map(|_| ())
}

pub struct Worker {
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    config: SharedLogConfig,
    events: mpsc::UnboundedSender<Event>,
    follow: watch::Sender<BTreeMap<Text, u64>>,
    healthy: bool,
}

impl Worker {
    pub fn new(
        client: redis::Client,
        conn: Option<MultiplexedConnection>,
        healthy: bool,
        config: SharedLogConfig,
        events: mpsc::UnboundedSender<Event>,
        follow: watch::Sender<BTreeMap<Text, u64>>,
    ) -> Worker {
        Worker {
            client,
            conn,
            config,
            events,
            follow,
            healthy,
        }
    }

    /// Runs jobs until the registry goes away, renewing the lease at a
    /// third of its time to live; then gives the lease up.
    pub async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        let mut lease = tokio::time::interval(LEASE_RETRY.min(self.config.lease_ttl / 3));
        lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => self.run_job(job).await,
                    None => break,
                },
                _ = lease.tick() => {
                    let config = self.config.clone();
                    let result = match self.connection().await {
                        Ok(conn) => renew_lease(conn, &config).await,
                        Err(error) => Err(error),
                    };
                    let _ = self.note(result.map(|_| Value::Nil));
                }
            }
        }
        let mut del = redis::cmd("DEL");
        del.arg(keys::lease(&self.config.instance));
        let _ = self.run_query(&del).await;
    }

    async fn connection(&mut self) -> Result<&mut MultiplexedConnection, String> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.client, COMMAND_TIMEOUT).await?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Notes whether Redis answered; reports changes of health. A failed
    /// connection is dropped (the next query connects again).
    fn note(&mut self, answer: Answer) -> Answer {
        match &answer {
            Ok(_) if !self.healthy => {
                self.healthy = true;
                let _ = self.events.send(Event::Health(Ok(())));
            }
            Err(error) if is_connection_error(error) => {
                self.conn = None;
                if self.healthy {
                    self.healthy = false;
                    let _ = self.events.send(Event::Health(Err(error.clone())));
                }
            }
            _ => {}
        }
        answer
    }

    async fn run_query(&mut self, command: &impl super::QueryAsync) -> Answer {
        let answer = match self.connection().await {
            Ok(conn) => query(conn, command, COMMAND_TIMEOUT).await,
            Err(error) => Err(error),
        };
        self.note(answer)
    }

    async fn run_job(&mut self, job: Job) {
        let retention = self.config.retention.as_millis() as u64;
        match job {
            Job::Append(batch) => {
                let mut pipe = redis::pipe();
                for append in &batch {
                    let command = pipe
                        .cmd("EVAL")
                        .arg(scripts::APPEND)
                        .arg(2)
                        .arg(keys::log(&append.session))
                        .arg(keys::snapshot(&append.session))
                        .arg(append.first)
                        .arg(retention);
                    for record in &append.records {
                        command.arg(record.as_slice());
                    }
                }
                let result = self.run_query(&pipe).await.and_then(|answers| {
                    let answers = match answers {
                        Value::Array(answers) if answers.len() == batch.len() => answers,
                        _ => return Err("a pipeline answer of the wrong shape".to_string()),
                    };
                    Ok(batch
                        .iter()
                        .zip(answers)
                        .map(|(append, answer)| (append.session.clone(), reply::appended(&answer)))
                        .collect())
                });
                let _ = self.events.send(Event::Appended(result));
            }
            Job::Load(session) => {
                let mut load = redis::cmd("EVAL");
                load.arg(scripts::LOAD)
                    .arg(2)
                    .arg(keys::log(&session))
                    .arg(keys::snapshot(&session));
                let result = match self.run_query(&load).await {
                    Ok(answer) => reply::stored(&answer).map_err(LoadError::Damaged),
                    Err(error) => Err(LoadError::Unavailable(error)),
                };
                let _ = self.events.send(Event::Loaded { session, result });
            }
            Job::Follow(sessions) => {
                let _ = self.follow.send(sessions);
            }
            Job::ReadFrom { session, from } => {
                let mut range = redis::cmd("XRANGE");
                range
                    .arg(keys::log(&session))
                    .arg(keys::entry_id(from))
                    .arg("+")
                    .arg("COUNT")
                    .arg(READ_COUNT);
                let records = self
                    .run_query(&range)
                    .await
                    .and_then(|answer| reply::entries(&answer));
                let _ = self.events.send(Event::Entries { session, records });
            }
            Job::Snapshot {
                session,
                next,
                data,
            } => {
                let mut store = redis::cmd("EVAL");
                store
                    .arg(scripts::SNAPSHOT)
                    .arg(2)
                    .arg(keys::log(&session))
                    .arg(keys::snapshot(&session))
                    .arg(next)
                    .arg(data)
                    .arg(retention);
                if let Err(error) = self.run_query(&store).await {
                    crate::log!(
                        Warn,
                        "storing a snapshot in Redis failed",
                        session_id = &*session,
                        error = error.as_str()
                    );
                }
            }
            Job::Publish(news) => {
                let mut pipe = redis::pipe();
                for (session, payload) in &news {
                    pipe.cmd("PUBLISH")
                        .arg(keys::channel(session))
                        .arg(payload.as_slice())
                        .ignore();
                }
                let _ = self.run_query(&pipe).await;
            }
            Job::CheckLeases(instances) => {
                let mut pipe = redis::pipe();
                for instance in &instances {
                    pipe.cmd("EXISTS").arg(keys::lease(instance));
                }
                if let Ok(Value::Array(found)) = self.run_query(&pipe).await {
                    let dead = instances
                        .into_iter()
                        .zip(found)
                        .filter(|(_, exists)| matches!(exists, Value::Int(0)))
                        .map(|(instance, _)| instance)
                        .collect::<Vec<_>>();
                    if !dead.is_empty() {
                        let _ = self.events.send(Event::Dead(dead));
                    }
                }
            }
            Job::Touch(sessions) => {
                let mut pipe = redis::pipe();
                for session in &sessions {
                    pipe.cmd("PEXPIRE")
                        .arg(keys::log(session))
                        .arg(retention)
                        .ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(keys::snapshot(session))
                        .arg(retention)
                        .ignore();
                }
                let _ = self.run_query(&pipe).await;
            }
        }
    }
}

/// Whether an error means Redis cannot be reached (not a refused command).
fn is_connection_error(error: &str) -> bool {
    !(error.starts_with("ERR")
        || error.contains("NOSCRIPT")
        || error.contains("WRONGTYPE")
        || error.contains("An error was signalled by the server"))
}

/// Follows the streams of the sessions held here: a blocking XREAD of all
/// of them; when the set changes, the read is abandoned (its connection
/// dropped) and a new one starts with the new set.
pub async fn read_loop(
    client: redis::Client,
    mut follow: watch::Receiver<BTreeMap<Text, u64>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut positions: BTreeMap<Text, u64> = BTreeMap::new();
    let mut conn: Option<MultiplexedConnection> = None;
    loop {
        {
            let wanted = follow.borrow_and_update();
            positions.retain(|session, _| wanted.contains_key(session));
            for (session, from) in wanted.iter() {
                let at = positions.entry(session.clone()).or_insert(*from);
                *at = (*at).max(*from);
            }
        }
        if positions.is_empty() {
            if follow.changed().await.is_err() {
                return;
            }
            continue;
        }
        if conn.is_none() {
            match connect(&client, READ_BLOCK + COMMAND_TIMEOUT).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            }
        }
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for session in positions.keys() {
            read.arg(keys::log(session));
        }
        for from in positions.values() {
            read.arg(keys::read_after(*from));
        }
        let connection = conn.as_mut().expect("connected above");
        let answer = tokio::select! {
            answer = read.query_async::<Value>(connection) => answer,
            changed = follow.changed() => {
                if changed.is_err() {
                    return;
                }
                // Abandon the blocked read: a new connection reads the new set.
                conn = None;
                continue;
            }
        };
        match answer
            .map_err(|e| e.to_string())
            .and_then(|v| reply::read(&v))
        {
            Ok(streams) => {
                for (session, records) in streams {
                    let session = Text::from(session.as_str());
                    if let (Some(last), Some(at)) = (records.last(), positions.get_mut(&session)) {
                        *at = (*at).max(last.index + 1);
                    }
                    let records = Ok(records);
                    let _ = events.send(Event::Entries { session, records });
                }
            }
            Err(_) => {
                conn = None;
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

/// Hands over every instance's ephemeral news (the registry skips its own).
pub async fn subscribe_loop(client: redis::Client, events: mpsc::UnboundedSender<Event>) {
    loop {
        if events.is_closed() {
            return;
        }
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(_) => {
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        if pubsub.psubscribe(keys::channel_pattern()).await.is_err() {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        }
        let mut messages = pubsub.into_on_message();
        while let Some(message) =
            std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut messages), cx))
                .await
        {
            let Some(session) = keys::session_of_channel(message.get_channel_name().as_bytes())
            else {
                continue;
            };
            let event = Event::Ephemeral {
                session: Text::from(session),
                payload: Bytes::copy_from_slice(message.get_payload_bytes()),
            };
            if events.send(event).is_err() {
                return;
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}
