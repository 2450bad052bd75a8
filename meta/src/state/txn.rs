//! One command's changes, staged over the current state: reads see the
//! staged writes, and the whole lot (objects, watch events, revision) is
//! written in one batch or not at all.

use std::collections::BTreeMap;

use prost::Message as _;
use rocksdb::{WriteBatch, DB};

use crate::error::MetaError;
use crate::keys;
use crate::objects::{self, MetaObject};
use crate::proto::{EventType, Object, ObjectKind, WatchEvent};
use crate::state::read::{decode_object, scan_prefix};
use rocksdb::{Direction, IteratorMode};

/// Staged changes of one command.
pub struct Txn<'a> {
    db: &'a DB,
    /// The revision the changes get (the current one plus one).
    revision: u64,
    writes: BTreeMap<Vec<u8>, Option<Object>>,
    events: Vec<WatchEvent>,
}

impl<'a> Txn<'a> {
    /// Starts staging over `db`, whose revision is `current`.
    pub fn new(db: &'a DB, current: u64) -> Self {
        Txn {
            db,
            revision: current + 1,
            writes: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// The revision the staged changes will have.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether anything is staged.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// One object as the command sees it.
    pub fn get<T: MetaObject>(&self, name: &str) -> Result<Option<T>, MetaError> {
        let key = keys::object_key(T::KIND, name);
        let object = match self.writes.get(&key) {
            Some(staged) => staged.clone(),
            None => match self.db.get(&key)? {
                Some(v) => Some(decode_object(&v)?),
                None => None,
            },
        };
        Ok(object.and_then(T::from_object))
    }

    /// Every object of a kind as the command sees it, sorted by name.
    pub fn list<T: MetaObject>(&self) -> Result<Vec<T>, MetaError> {
        let prefix = keys::object_prefix(T::KIND);
        let mut all: BTreeMap<Vec<u8>, Object> = BTreeMap::new();
        scan_prefix!(self.db, &prefix, |key, value| {
            all.insert(key.to_vec(), decode_object(&value)?);
        });
        for (key, staged) in self.writes.range(prefix.clone()..keys::prefix_end(&prefix)) {
            match staged {
                Some(o) => all.insert(key.clone(), o.clone()),
                None => all.remove(key),
            };
        }
        Ok(all.into_values().filter_map(T::from_object).collect())
    }

    /// Stages a write of `object` (stamped with the new revision) and returns it.
    pub fn put<T: MetaObject>(&mut self, object: T) -> Object {
        let mut object = object.into_object();
        objects::stamp(&mut object, self.revision);
        let key = keys::object_key(T::KIND, &objects::key_name(&object));
        self.writes.insert(key, Some(object.clone()));
        self.event(EventType::Put, object.clone());
        object
    }

    /// Stages the removal of `object`.
    pub fn delete(&mut self, kind: ObjectKind, object: Object) {
        let key = keys::object_key(kind, &objects::key_name(&object));
        self.writes.insert(key, None);
        self.event(EventType::Delete, object);
    }

    fn event(&mut self, kind: EventType, object: Object) {
        self.events.push(WatchEvent {
            revision: self.revision,
            r#type: kind as i32,
            object: Some(object),
        });
    }

    /// Adds the staged changes to `batch`.
    pub fn write_into(self, batch: &mut WriteBatch) {
        for (key, staged) in self.writes {
            match staged {
                Some(o) => batch.put(key, o.encode_to_vec()),
                None => batch.delete(key),
            }
        }
        for (seq, event) in self.events.iter().enumerate() {
            let seq = u32::try_from(seq).unwrap_or(u32::MAX);
            batch.put(keys::event_key(self.revision, seq), event.encode_to_vec());
        }
        batch.put(keys::SM_REVISION, self.revision.to_be_bytes());
    }
}
