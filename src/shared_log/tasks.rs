//! The tasks that talk to Redis: the worker (jobs and the lease), the
//! reader (blocking reads of the followed streams) and the subscriber
//! (ephemeral news).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{Answer, Event, Job, LoadError, SharedLogConfig, keys, query, reply, scripts};
use crate::resp::{self, Client, Command, Connection, Value};
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
/// A subscribed connection that has been quiet this long is asked for a
/// PING, and dropped if that goes unanswered as long again.
const SUBSCRIBER_QUIET: Duration = Duration::from_secs(30);

/// Sets (or renews) this instance's lease.
pub async fn renew_lease(
    conn: &mut Connection,
    config: &SharedLogConfig,
) -> Result<(), resp::Error> {
    let mut set = Command::new("SET");
    set.arg(keys::lease(&config.instance))
        .arg("1")
        .arg("PX")
        .arg(config.lease_ttl.as_millis() as u64);
    query(conn, &[set], COMMAND_TIMEOUT).await.map(|_| ())
}

pub struct Worker {
    client: Client,
    conn: Option<Connection>,
    config: SharedLogConfig,
    events: mpsc::UnboundedSender<Event>,
    follow: watch::Sender<BTreeMap<Text, u64>>,
    healthy: bool,
}

impl Worker {
    pub fn new(
        client: Client,
        conn: Option<Connection>,
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
                    let _ = self.note(result.map(|_| Vec::new()), true);
                }
            }
        }
        let mut del = Command::new("DEL");
        del.arg(keys::lease(&self.config.instance));
        let _ = self.run_query(&[del]).await;
    }

    async fn connection(&mut self) -> Result<&mut Connection, resp::Error> {
        if self.conn.is_none() {
            self.conn = Some(self.client.connect(COMMAND_TIMEOUT).await?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Notes whether Redis answered; reports changes of health. A failed
    /// connection, or one a reply too big to take stopped mid-reply, is
    /// dropped (the next query connects again); only the first says Redis
    /// is down (a session too big to load is that session's failure). A
    /// refusal of
    /// what this instance cannot serve without (`vital`: an append, the
    /// lease) counts as Redis being down too (full memory, a failing
    /// script, a server refusing writes): the registry stops on it, and
    /// the next answer tells it that Redis serves again.
    fn note(&mut self, answer: Answer, vital: bool) -> Answer {
        match &answer {
            Ok(_) if !self.healthy => {
                self.healthy = true;
                let _ = self.events.send(Event::Health(Ok(())));
            }
            Err(error) if error.drops_connection() || vital => {
                if error.drops_connection() {
                    self.conn = None;
                }
                if (error.is_connection() || vital) && self.healthy {
                    self.healthy = false;
                    let _ = self.events.send(Event::Health(Err(error.to_string())));
                }
            }
            _ => {}
        }
        answer
    }

    async fn run_query(&mut self, commands: &[Command]) -> Answer {
        self.run_noted(commands, false).await
    }

    /// Runs commands; `vital`: see [`Worker::note`].
    async fn run_noted(&mut self, commands: &[Command], vital: bool) -> Answer {
        let answer = match self.connection().await {
            Ok(conn) => query(conn, commands, COMMAND_TIMEOUT).await,
            Err(error) => Err(error),
        };
        self.note(answer, vital)
    }

    /// Runs one command; its reply, or the failure as text.
    async fn run_one(&mut self, command: Command) -> Result<Value, String> {
        match self.run_query(&[command]).await {
            Ok(mut replies) => Ok(replies.pop().unwrap_or(Value::Nil)),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn run_job(&mut self, job: Job) {
        let retention = self.config.retention.as_millis() as u64;
        match job {
            Job::Append(batch) => {
                let pipe: Vec<Command> = batch
                    .iter()
                    .map(|append| {
                        let mut command = Command::new("EVAL");
                        command
                            .arg(scripts::APPEND)
                            .arg("2")
                            .arg(keys::log(&append.session))
                            .arg(keys::snapshot(&append.session))
                            .arg(append.first)
                            .arg(retention);
                        for record in &append.records {
                            command.arg(record);
                        }
                        command
                    })
                    .collect();
                let result = self.run_noted(&pipe, true).await.map_err(|e| e.to_string());
                let result = result.and_then(|answers| {
                    if answers.len() != batch.len() {
                        return Err("a pipeline answer of the wrong shape".to_string());
                    }
                    Ok(batch
                        .iter()
                        .zip(answers)
                        .map(|(append, answer)| (append.session.clone(), reply::appended(&answer)))
                        .collect())
                });
                let _ = self.events.send(Event::Appended(result));
            }
            Job::Load(session) => {
                let mut load = Command::new("EVAL");
                load.arg(scripts::LOAD)
                    .arg("2")
                    .arg(keys::log(&session))
                    .arg(keys::snapshot(&session));
                let result = match self.run_one(load).await {
                    Ok(answer) => reply::stored(&answer).map_err(LoadError::Damaged),
                    Err(error) => Err(LoadError::Unavailable(error)),
                };
                let _ = self.events.send(Event::Loaded { session, result });
            }
            Job::Follow(sessions) => {
                let _ = self.follow.send(sessions);
            }
            Job::ReadFrom { session, from } => {
                let mut range = Command::new("XRANGE");
                range
                    .arg(keys::log(&session))
                    .arg(keys::entry_id(from))
                    .arg("+")
                    .arg("COUNT")
                    .arg(READ_COUNT);
                let records = self
                    .run_one(range)
                    .await
                    .and_then(|answer| reply::entries(&answer))
                    .and_then(|records| match records.first() {
                        // Trimmed behind snapshots this copy never reached:
                        // reading again cannot close the gap; the session
                        // must be loaded again (its members resume).
                        Some(first) if first.index > from => Err(format!(
                            "the log in Redis was trimmed past this copy: it resumes at {}, this copy is at {from}",
                            first.index
                        )),
                        _ => Ok(records),
                    });
                let _ = self.events.send(Event::Entries { session, records });
            }
            Job::Snapshot {
                session,
                next,
                data,
            } => {
                let mut store = Command::new("EVAL");
                store
                    .arg(scripts::SNAPSHOT)
                    .arg("2")
                    .arg(keys::log(&session))
                    .arg(keys::snapshot(&session))
                    .arg(next)
                    .arg(data)
                    .arg(retention);
                if let Err(error) = self.run_one(store).await {
                    crate::log!(
                        Warn,
                        "storing a snapshot in Redis failed",
                        session_id = &*session,
                        error = error.as_str()
                    );
                }
            }
            Job::Publish(news) => {
                let pipe: Vec<Command> = news
                    .iter()
                    .map(|(session, payload)| {
                        let mut publish = Command::new("PUBLISH");
                        publish.arg(keys::channel(session)).arg(payload);
                        publish
                    })
                    .collect();
                let _ = self.run_query(&pipe).await;
            }
            Job::CheckLeases(instances) => {
                let pipe: Vec<Command> = instances
                    .iter()
                    .map(|instance| {
                        let mut exists = Command::new("EXISTS");
                        exists.arg(keys::lease(instance));
                        exists
                    })
                    .collect();
                if let Ok(found) = self.run_query(&pipe).await {
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
                let mut pipe = Vec::with_capacity(sessions.len() * 2);
                for session in &sessions {
                    for key in [keys::log(session), keys::snapshot(session)] {
                        let mut expire = Command::new("PEXPIRE");
                        expire.arg(key).arg(retention);
                        pipe.push(expire);
                    }
                }
                let _ = self.run_query(&pipe).await;
            }
        }
    }
}

/// Follows the streams of the sessions held here: a blocking XREAD of all
/// of them; when the set changes, the read is abandoned (its connection
/// dropped) and a new one starts with the new set.
pub async fn read_loop(
    client: Client,
    mut follow: watch::Receiver<BTreeMap<Text, u64>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut positions: BTreeMap<Text, u64> = BTreeMap::new();
    let mut conn: Option<Connection> = None;
    // Entries asked per stream: cut after a failed read (a reply can be
    // too big to take: many big records), grown back after good ones.
    let mut count = READ_COUNT;
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
            match client.connect(COMMAND_TIMEOUT).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            }
        }
        let mut read = Command::new("XREAD");
        read.arg("COUNT")
            .arg(count)
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
            answer = query(connection, std::slice::from_ref(&read), READ_BLOCK + COMMAND_TIMEOUT) => answer,
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
            .and_then(|mut replies| reply::read(&replies.pop().unwrap_or(Value::Nil)))
        {
            Ok(streams) => {
                count = (count * 2).min(READ_COUNT);
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
                count = (count / 8).max(1);
                conn = None;
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

/// Hands over every instance's ephemeral news (the registry skips its own),
/// read on a connection of its own subscribed to every session's channel.
pub async fn subscribe_loop(client: Client, events: mpsc::UnboundedSender<Event>) {
    while !events.is_closed() {
        tokio::select! {
            _ = events.closed() => return,
            ended = subscribed(&client, &events) => {
                if ended.is_err() {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
        }
    }
}

/// One subscribed connection, until it fails (Err) or the registry is gone
/// (Ok). A quiet connection is asked for a PING, to find one that died.
async fn subscribed(client: &Client, events: &mpsc::UnboundedSender<Event>) -> Result<(), ()> {
    let mut conn = client.connect(COMMAND_TIMEOUT).await.map_err(drop)?;
    let mut subscribe = Command::new("PSUBSCRIBE");
    subscribe.arg(keys::channel_pattern());
    conn.send(&[subscribe]).await.map_err(drop)?;
    let mut pinged = false;
    loop {
        let quiet = if pinged {
            COMMAND_TIMEOUT
        } else {
            SUBSCRIBER_QUIET
        };
        let value = match tokio::time::timeout(quiet, conn.receive()).await {
            Ok(value) => value.map_err(drop)?,
            Err(_) if pinged => return Err(()),
            Err(_) => {
                conn.send(&[Command::new("PING")]).await.map_err(drop)?;
                pinged = true;
                continue;
            }
        };
        pinged = false;
        let Some((channel, payload)) = reply::pattern_message(value).map_err(drop)? else {
            continue;
        };
        let Some(session) = keys::session_of_channel(&channel) else {
            continue;
        };
        let event = Event::Ephemeral {
            session: Text::from(session),
            payload,
        };
        if events.send(event).is_err() {
            return Ok(());
        }
    }
}
