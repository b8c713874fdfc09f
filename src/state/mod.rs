//! Durable window state: snapshots of each partition's feature state in a [`StateStore`], so
//! a restart, a crash or a rebalance restores a partition from its newest snapshot and replays
//! only the records after it (see [`crate::stream::rebuild`] for the replay, and
//! [`vigil_core::features::snapshot`] for the bytes).
//!
//! # Layout in the store
//!
//! `<group>/<topic>/p<partition, 5 digits>/<offset, 20 digits>.snap`: names sort by offset, so
//! the newest snapshot at or before a committed offset is found from a listing alone. The
//! newest `keep` snapshots of each partition are kept (older ones are deleted after each
//! write), because a restore needs one at or before the *committed* offset, which can lag the
//! newest snapshot's.
//!
//! # When snapshots are written
//!
//! Every `interval` for each assigned partition whose state moved since its last snapshot,
//! when partitions are revoked (after their offsets are committed) and on a clean shutdown.
//! Encoding holds the partition's lock (its scoring pauses: `vigil_snapshot_seconds{phase=
//! "encode"}`); the write to the store does not.

mod store;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{check_duration, duration, KeyError};

pub use store::{ObjectStateStore, StateStore, StoreError};

/// The `[state]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Write and restore snapshots at all (false: every assignment replays the whole window).
    pub snapshots: bool,
    /// Local directory of the state store; empty = `<temp dir>/vigil-state`. Ignored when
    /// `url` is set.
    pub dir: String,
    /// An object store instead of a local directory: `s3://bucket/prefix` (credentials and
    /// endpoint from the `AWS_*` variables, e.g. `AWS_ENDPOINT=http://host:9000` and
    /// `AWS_ALLOW_HTTP=true` for an S3-compatible server), or `file:///dir`.
    pub url: String,
    /// How often each assigned partition is snapshotted (when its state moved).
    pub interval: String,
    /// Snapshots kept per partition (at least 1).
    pub keep: usize,
    /// What an assigned partition does when the topic cannot supply the window its state
    /// needs (records deleted by the topic's retention): `warn` (score with the state it could
    /// build, logged and counted) or `refuse` (stay paused and report not ready; nothing is
    /// scored, so nothing is skipped, until an operator decides).
    pub on_short_history: String,
}

/// What [`StateConfig::on_short_history`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShortHistory {
    Warn,
    Refuse,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            snapshots: true,
            dir: String::new(),
            url: String::new(),
            interval: "5m".into(),
            keep: 3,
            on_short_history: "warn".into(),
        }
    }
}

impl StateConfig {
    /// Keys are relative to `[state]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        check_duration("interval", &self.interval, false)?;
        if self.keep == 0 || self.keep > 1000 {
            return Err(KeyError::new(
                "keep",
                format!("{} is out of range (1..=1000)", self.keep),
            ));
        }
        if !matches!(self.on_short_history.as_str(), "warn" | "refuse") {
            return Err(KeyError::new(
                "on_short_history",
                format!("`{}` is not one of warn, refuse", self.on_short_history),
            ));
        }
        if !self.url.is_empty() && url::Url::parse(&self.url).is_err() {
            return Err(KeyError::new(
                "url",
                format!(
                    "`{}` is not a URL (e.g. s3://bucket/prefix or file:///var/lib/vigil)",
                    self.url
                ),
            ));
        }
        Ok(())
    }

    pub fn on_short_history(&self) -> OnShortHistory {
        if self.on_short_history == "refuse" {
            OnShortHistory::Refuse
        } else {
            OnShortHistory::Warn
        }
    }

    pub fn interval(&self) -> Duration {
        duration(&self.interval)
    }

    /// The local directory used when no URL is set.
    pub fn local_dir(&self) -> PathBuf {
        if self.dir.is_empty() {
            std::env::temp_dir().join("vigil-state")
        } else {
            PathBuf::from(&self.dir)
        }
    }

    /// Opens the configured store (`None` when snapshots are off).
    pub fn open(&self) -> Result<Option<Box<dyn StateStore>>, StoreError> {
        if !self.snapshots {
            return Ok(None);
        }
        let store = if self.url.is_empty() {
            ObjectStateStore::local(&self.local_dir())?
        } else {
            ObjectStateStore::from_url(&self.url)?
        };
        Ok(Some(Box::new(store)))
    }
}

/// The snapshots of one consumer group's partitions of one topic, in a store.
pub struct Snapshots {
    store: Box<dyn StateStore>,
    prefix: String,
    keep: usize,
}

/// A snapshot in the store: its name and the offset it reflects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub name: String,
    pub offset: i64,
}

impl Snapshots {
    pub fn new(store: Box<dyn StateStore>, group: &str, topic: &str, keep: usize) -> Snapshots {
        Snapshots {
            store,
            prefix: format!("{}/{}", clean(group), clean(topic)),
            keep: keep.max(1),
        }
    }

    /// Where the snapshots are, for logs.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.store.describe(), self.prefix)
    }

    fn dir(&self, partition: u32) -> String {
        format!("{}/p{partition:05}", self.prefix)
    }

    /// Writes the snapshot of `partition` at `offset`, then deletes all but the newest `keep`.
    pub fn save(&self, partition: u32, offset: i64, bytes: &[u8]) -> Result<(), StoreError> {
        let name = format!("{}/{offset:020}.snap", self.dir(partition));
        self.store.put(&name, bytes)?;
        let all = self.list(partition)?;
        for old in all.iter().rev().skip(self.keep) {
            if let Err(e) = self.store.delete(&old.name) {
                tracing::warn!(partition, "deleting an old snapshot: {e}");
            }
        }
        Ok(())
    }

    /// The snapshots of `partition`, oldest first.
    pub fn list(&self, partition: u32) -> Result<Vec<Stored>, StoreError> {
        let mut found: Vec<Stored> = self
            .store
            .list(&self.dir(partition))?
            .into_iter()
            .filter_map(|name| {
                let file = name.rsplit('/').next()?;
                let offset = file.strip_suffix(".snap")?.parse().ok()?;
                Some(Stored { name, offset })
            })
            .collect();
        found.sort_by_key(|s| s.offset);
        Ok(found)
    }

    /// The snapshots of `partition` at or before `offset`, newest first: the candidates for a
    /// restore to a partition committed at `offset`.
    pub fn candidates(&self, partition: u32, offset: i64) -> Result<Vec<Stored>, StoreError> {
        let mut all = self.list(partition)?;
        all.retain(|s| s.offset <= offset);
        all.reverse();
        Ok(all)
    }

    /// The bytes of a listed snapshot (`None`: deleted since).
    pub fn load(&self, stored: &Stored) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(&stored.name)
    }
}

/// A group or topic name as one path segment.
fn clean(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_store_keeps_the_newest_and_finds_the_one_for_an_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ObjectStateStore::local(dir.path()).expect("store");
        let snaps = Snapshots::new(Box::new(store), "my group", "tx", 2);
        for offset in [10, 250, 40] {
            snaps.save(3, offset, &[offset as u8; 5]).expect("saved");
        }
        let offsets: Vec<i64> = snaps
            .list(3)
            .expect("list")
            .iter()
            .map(|s| s.offset)
            .collect();
        assert_eq!(offsets, [40, 250], "the newest two are kept");
        assert!(snaps.list(4).expect("list").is_empty());
        let c = snaps.candidates(3, 100).expect("candidates");
        assert_eq!(c.iter().map(|s| s.offset).collect::<Vec<_>>(), [40]);
        assert_eq!(snaps.load(&c[0]).expect("load"), Some(vec![40u8; 5]));
        assert!(snaps.candidates(3, 39).expect("candidates").is_empty());
        // On disk: one directory per group/topic/partition, no staging file left behind.
        let files: Vec<_> = std::fs::read_dir(dir.path().join("my_group/tx/p00003"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
    }

    #[test]
    fn bad_state_keys_are_named() {
        let bad = StateConfig {
            keep: 0,
            ..StateConfig::default()
        };
        assert_eq!(bad.validate().expect_err("keep").key, "keep");
        let bad = StateConfig {
            url: "not a url".into(),
            ..StateConfig::default()
        };
        assert_eq!(bad.validate().expect_err("url").key, "url");
    }
}
