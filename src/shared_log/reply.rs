//! Redis replies into records: pure and bounded (a reply is already in
//! memory; nothing here allocates more than it holds). A malformed entry is
//! an error naming what is wrong, never a panic: the log is shared with
//! other processes, and whatever sits in Redis is input.

use prost::Message;
use redis::Value;

use super::keys;
use crate::pb::store::{Record, Snapshot};

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

fn array(value: &Value, what: &str) -> Result<Vec<Value>, String> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items.clone()),
        other => Err(format!("{what}: expected an array, got {}", kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) => "a status",
        Value::Okay => "OK",
        Value::Map(_) => "a map",
        _ => "another type",
    }
}

fn bytes<'a>(value: &'a Value, what: &str) -> Result<&'a [u8], String> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(s) => Ok(s.as_bytes()),
        other => Err(format!("{what}: expected a string, got {}", kind(other))),
    }
}

fn integer(value: &Value, what: &str) -> Result<i64, String> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::BulkString(b) => std::str::from_utf8(b)
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
    for item in &items {
        let parts = array(item, "an entry")?;
        let [id, fields] = parts.as_slice() else {
            return Err("an entry that is not [id, fields]".into());
        };
        let index = entry_index(bytes(id, "an entry id")?)?;
        let fields = array(fields, "an entry's fields")?;
        let encoded = fields
            .chunks(2)
            .find(|pair| pair.len() == 2 && matches!(&pair[0], Value::BulkString(f) if f == b"r"))
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
    let [index, data, log] = parts.as_slice() else {
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
    let streams: Vec<(Value, Value)> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs.clone(),
        other => array(other, "the read reply")?
            .into_iter()
            .map(|stream| match array(&stream, "a stream")?.as_slice() {
                [key, entries] => Ok((key.clone(), entries.clone())),
                _ => Err("a stream that is not [key, entries]".to_string()),
            })
            .collect::<Result<_, String>>()?,
    };
    let mut out = Vec::with_capacity(streams.len());
    for (key, found) in &streams {
        let key = bytes(key, "a stream key")?;
        let session = keys::session_of_log(key)
            .ok_or_else(|| format!("a reply for the key {:?}", String::from_utf8_lossy(key)))?;
        out.push((session.to_string(), entries(found)?));
    }
    Ok(out)
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
            Value::BulkString(keys::entry_id(index).into_bytes()),
            Value::Array(vec![
                Value::BulkString(b"r".to_vec()),
                Value::BulkString(record.encode_to_vec()),
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
            Value::BulkString(b"1700000000000-0".to_vec()),
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
        assert!(appended(&Value::Okay).is_err());
    }
}
