//! Redis replies into records: pure and bounded (a reply is already in
//! memory; nothing here allocates more than it holds). A malformed entry is
//! an error naming what is wrong, never a panic: the log is shared with
//! other processes, and whatever sits in Redis is input.

use bytes::Bytes;
use prost::Message;

use super::keys;
use crate::pb::store::{Record, Snapshot};
use crate::resp::Value;

/// What the append script answered.
#[derive(Debug)]
pub enum Appended {
    /// The records are in the log, at the index asked for.
    Landed,
    /// The log is ahead: these entries came first (the caller applies
    /// them and tries again).
    Behind(Vec<Record>),
    /// The log ends before the caller's index: the caller's copy is not
    /// of this log any more (it expired, or was deleted).
    Lost { next: u64 },
}

/// A session as Redis holds it.
#[derive(Debug, Default)]
pub struct Stored {
    pub snapshot: Option<Snapshot>,
    pub records: Vec<Record>,
}

fn array<'a>(value: &'a Value, what: &str) -> Result<&'a [Value], String> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(format!("{what}: expected an array, got {}", kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::Bulk(_) => "a string",
        Value::Array(_) => "an array",
        Value::Status(_) => "a status",
        Value::Error(_) => "an error",
    }
}

fn bytes<'a>(value: &'a Value, what: &str) -> Result<&'a [u8], String> {
    match value {
        Value::Bulk(bytes) => Ok(bytes),
        Value::Status(s) => Ok(s.as_bytes()),
        other => Err(format!("{what}: expected a string, got {}", kind(other))),
    }
}

fn integer(value: &Value, what: &str) -> Result<i64, String> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::Bulk(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{what}: not a number")),
        other => Err(format!("{what}: expected a number, got {}", kind(other))),
    }
}

/// The index in an entry id `<index>-1`.
fn entry_index(id: &[u8]) -> Result<u64, String> {
    let id = std::str::from_utf8(id).map_err(|_| "an entry id that is not text".to_string())?;
    let (index, sub) = id
        .split_once('-')
        .ok_or_else(|| format!("entry id {id:?} without a dash"))?;
    if sub != "1" {
        return Err(format!("entry id {id:?} is not one of a session log"));
    }
    index
        .parse()
        .map_err(|_| format!("entry id {id:?} has no index"))
}

/// Stream entries (`[[id, [field, value, ...]], ...]`) into records, each
/// checked to sit at its entry's index.
pub fn entries(value: &Value) -> Result<Vec<Record>, String> {
    let items = match value {
        Value::Nil => return Ok(Vec::new()),
        other => array(other, "entries")?,
    };
    let mut records = Vec::with_capacity(items.len());
    for item in items {
        let parts = array(item, "an entry")?;
        let [id, fields] = parts else {
            return Err("an entry that is not [id, fields]".into());
        };
        let index = entry_index(bytes(id, "an entry id")?)?;
        let fields = array(fields, "an entry's fields")?;
        let encoded = fields
            .chunks(2)
            .find(|pair| {
                pair.len() == 2 && matches!(&pair[0], Value::Bulk(f) if f == b"r".as_slice())
            })
            .map(|pair| bytes(&pair[1], "a record"))
            .transpose()?
            .ok_or_else(|| format!("entry {index} holds no record"))?;
        let record = Record::decode(encoded).map_err(|e| format!("entry {index}: {e}"))?;
        if record.index != index {
            return Err(format!(
                "entry {index} holds record {} (a log written by something else)",
                record.index
            ));
        }
        records.push(record);
    }
    Ok(records)
}

/// The append script's answer.
pub fn appended(value: &Value) -> Result<Appended, String> {
    let parts = array(value, "the append reply")?;
    let next = integer(
        parts.first().ok_or("an empty append reply")?,
        "the log's end",
    )?;
    if next < 0 {
        return Ok(Appended::Landed);
    }
    match parts.get(1) {
        Some(found) => Ok(Appended::Behind(entries(found)?)),
        None => Ok(Appended::Lost { next: next as u64 }),
    }
}

/// The load script's answer.
pub fn stored(value: &Value) -> Result<Stored, String> {
    let parts = array(value, "the load reply")?;
    let [index, data, log] = parts else {
        return Err("a load reply that is not [index, data, entries]".into());
    };
    let snapshot = match (index, data) {
        (Value::Nil, _) | (_, Value::Nil) => None,
        (index, data) => {
            let index = integer(index, "the snapshot's index")?;
            let snapshot = Snapshot::decode(bytes(data, "the snapshot")?)
                .map_err(|e| format!("the snapshot: {e}"))?;
            // The snapshot names the last record it folds in.
            if snapshot.index.checked_add(1) != Some(index as u64) {
                return Err(format!(
                    "a snapshot stored as covering {index} records folds in record {}",
                    snapshot.index
                ));
            }
            Some(snapshot)
        }
    };
    let records = entries(log)?;
    Ok(Stored { snapshot, records })
}

/// One XREAD reply: per session, the entries read (nil: none in time).
pub fn read(value: &Value) -> Result<Vec<(String, Vec<Record>)>, String> {
    let streams = match value {
        Value::Nil => return Ok(Vec::new()),
        other => array(other, "the read reply")?,
    };
    let mut out = Vec::with_capacity(streams.len());
    for stream in streams {
        let [key, found] = array(stream, "a stream")? else {
            return Err("a stream that is not [key, entries]".to_string());
        };
        let key = bytes(key, "a stream key")?;
        let session = keys::session_of_log(key)
            .ok_or_else(|| format!("a reply for the key {:?}", String::from_utf8_lossy(key)))?;
        out.push((session.to_string(), entries(found)?));
    }
    Ok(out)
}

/// A message on a subscribed connection: `pmessage`'s channel and
/// payload; None for what else comes there (the subscription's
/// confirmation, a PING's answer).
pub fn pattern_message(value: Value) -> Result<Option<(Bytes, Bytes)>, String> {
    let items = match value {
        Value::Array(items) => items,
        Value::Error(why) => return Err(format!("the subscription: {why}")),
        other => {
            return Err(format!(
                "the subscription: expected an array, got {}",
                kind(&other)
            ));
        }
    };
    match <[Value; 4]>::try_from(items) {
        Ok(
            [
                Value::Bulk(kind),
                _,
                Value::Bulk(channel),
                Value::Bulk(payload),
            ],
        ) if kind.as_ref() == b"pmessage" => Ok(Some((channel, payload))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::store::{Created, record::Body};

    fn entry(index: u64, record_index: u64) -> Value {
        let record = Record {
            index: record_index,
            timestamp: 1,
            body: Some(Body::Created(Created {
                session_id: "s".into(),
                epoch: 3,
            })),
        };
        Value::Array(vec![
            Value::Bulk(keys::entry_id(index).into()),
            Value::Array(vec![
                Value::Bulk(Bytes::from_static(b"r")),
                Value::Bulk(record.encode_to_vec().into()),
            ]),
        ])
    }

    #[test]
    fn entries_are_checked_against_their_ids() {
        let good = Value::Array(vec![entry(0, 0), entry(1, 1)]);
        assert_eq!(entries(&good).unwrap().len(), 2);
        let moved = Value::Array(vec![entry(4, 5)]);
        assert!(entries(&moved).unwrap_err().contains("holds record 5"));
        let foreign = Value::Array(vec![Value::Array(vec![
            Value::Bulk(Bytes::from_static(b"1700000000000-0")),
            Value::Array(vec![]),
        ])]);
        assert!(entries(&foreign).is_err());
        assert!(entries(&Value::Int(3)).is_err());
    }

    #[test]
    fn append_replies_say_what_happened() {
        assert!(matches!(
            appended(&Value::Array(vec![Value::Int(-1)])),
            Ok(Appended::Landed)
        ));
        assert!(matches!(
            appended(&Value::Array(vec![Value::Int(2), Value::Array(vec![entry(1, 1)])])),
            Ok(Appended::Behind(r)) if r.len() == 1
        ));
        assert!(matches!(
            appended(&Value::Array(vec![Value::Int(0)])),
            Ok(Appended::Lost { next: 0 })
        ));
        assert!(appended(&Value::Status("OK".into())).is_err());
    }

    #[test]
    fn subscribed_connections_hand_over_pattern_messages_only() {
        let bulk = |b: &'static [u8]| Value::Bulk(Bytes::from_static(b));
        let message = Value::Array(vec![
            bulk(b"pmessage"),
            bulk(b"p:*"),
            bulk(b"p:s1"),
            bulk(b"news"),
        ]);
        let (channel, payload) = pattern_message(message).unwrap().unwrap();
        assert_eq!((&channel[..], &payload[..]), (&b"p:s1"[..], &b"news"[..]));
        let confirmed = Value::Array(vec![bulk(b"psubscribe"), bulk(b"p:*"), Value::Int(1)]);
        assert!(pattern_message(confirmed).unwrap().is_none());
        let pong = Value::Array(vec![bulk(b"pong"), bulk(b"")]);
        assert!(pattern_message(pong).unwrap().is_none());
        assert!(pattern_message(Value::Error("ERR no".into())).is_err());
        assert!(pattern_message(Value::Int(1)).is_err());
    }
}
