//! Bans: users refused by the TURN relay, `/ice-servers` and `/ws` until a
//! time or until lifted, kept in `bans.json` under `state-directory` so they
//! outlive a restart.
//!
//! A user is what quotas count ([`crate::auth::Keys::owner`]): a static
//! user's name, the user part of a TURN REST username, a token's subject.
//! Readers take the current list whole (one read lock, then no lock at
//! all), as config snapshots are read; a change copies the list, swaps it in
//! and writes the file, one change at a time.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::logging::event;
use crate::reloadable::Reloadable;

/// The file under `state-directory`.
const FILE_NAME: &str = "bans.json";

/// One user's ban, in unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ban {
    /// When it was made.
    pub(crate) since: u64,
    /// When it ends by itself; None until lifted.
    pub(crate) until: Option<u64>,
}

impl Ban {
    fn holds(&self, unix_now: u64) -> bool {
        self.until.is_none_or(|until| unix_now < until)
    }
}

/// A moment in unix seconds as logs and `icegate ctl bans` show it
/// (RFC 3339, UTC); None is a ban until lifted.
pub(crate) fn time_text(unix: Option<u64>) -> String {
    match unix {
        Some(secs) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
        .to_string(),
        None => "permanent".to_owned(),
    }
}

/// The bans at one moment; replaced whole by every change.
#[derive(Clone, Debug, Default)]
pub(crate) struct BanList {
    entries: HashMap<String, Ban>,
    /// The earliest `until`, so the once-a-second sweep costs nothing
    /// until a ban is due.
    next_expiry: Option<u64>,
}

impl BanList {
    fn from_entries(entries: HashMap<String, Ban>) -> Self {
        let next_expiry = entries.values().filter_map(|ban| ban.until).min();
        Self {
            entries,
            next_expiry,
        }
    }

    pub(crate) fn is_banned(&self, user: &str, unix_now: u64) -> bool {
        self.entries
            .get(user)
            .is_some_and(|ban| ban.holds(unix_now))
    }

    /// The bans in force at `unix_now`, by user name.
    pub(crate) fn active(&self, unix_now: u64) -> Vec<(&str, Ban)> {
        let mut list: Vec<(&str, Ban)> = self
            .entries
            .iter()
            .filter(|(_, ban)| ban.holds(unix_now))
            .map(|(user, ban)| (user.as_str(), *ban))
            .collect();
        list.sort_unstable_by(|a, b| a.0.cmp(b.0));
        list
    }

    pub(crate) fn count(&self, unix_now: u64) -> usize {
        self.entries
            .values()
            .filter(|ban| ban.holds(unix_now))
            .count()
    }
}

/// What `bans.json` holds.
#[derive(Serialize, Deserialize)]
struct FileFormat {
    bans: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    user: String,
    #[serde(flatten)]
    ban: Ban,
}

/// `bans.json` in the state directory, or nothing (bans in memory only).
#[derive(Debug)]
struct BanFile {
    path: Option<PathBuf>,
    /// A failed write was logged: the next failures are not, until one succeeds.
    warned: bool,
}

impl BanFile {
    /// Writes `list` to a temporary file beside the real one, then renames
    /// it over: a crash leaves the old file or the new, never half of one.
    fn save(&mut self, list: &BanList) {
        let Some(path) = &self.path else {
            return;
        };
        match write_atomically(path, &encode(list)) {
            Ok(()) => self.warned = false,
            Err(error) if !self.warned => {
                self.warned = true;
                log::warn!(
                    "cannot write {}: {error}; bans are kept in memory and are lost on restart",
                    path.display()
                );
            }
            Err(error) => log::debug!("cannot write {}: {error}", path.display()),
        }
    }
}

fn encode(list: &BanList) -> Vec<u8> {
    let mut bans: Vec<FileEntry> = list
        .entries
        .iter()
        .map(|(user, ban)| FileEntry {
            user: user.clone(),
            ban: *ban,
        })
        .collect();
    bans.sort_unstable_by(|a, b| a.user.cmp(&b.user));
    let mut text = serde_json::to_vec_pretty(&FileFormat { bans }).unwrap_or_default();
    text.push(b'\n');
    text
}

fn decode(text: &[u8]) -> Result<HashMap<String, Ban>, String> {
    let file: FileFormat = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let mut entries = HashMap::with_capacity(file.bans.len());
    for entry in file.bans {
        if entry.user.is_empty() {
            return Err("a ban without a user name".to_owned());
        }
        entries.insert(entry.user, entry.ban);
    }
    Ok(entries)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("json.tmp");
    let result = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        // On disk before the rename makes it the file.
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Reads `path`: no file is no bans; a file that does not parse is moved
/// aside to `bans.json.corrupt` (kept for the operator) and is no bans too.
fn load(path: &Path) -> HashMap<String, Ban> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return HashMap::new(),
        Err(error) => {
            log::warn!(
                "cannot read {}: {error}; starting without bans",
                path.display()
            );
            return HashMap::new();
        }
    };
    match decode(&text) {
        Ok(entries) => {
            if !entries.is_empty() {
                log::info!("{} bans loaded from {}", entries.len(), path.display());
            }
            entries
        }
        Err(problem) => {
            let aside = path.with_extension("json.corrupt");
            let moved = match fs::rename(path, &aside) {
                Ok(()) => format!("moved to {}", aside.display()),
                Err(error) => format!("cannot move it to {}: {error}", aside.display()),
            };
            log::error!(
                "{} is not a ban list ({problem}); {moved}; starting without bans",
                path.display()
            );
            HashMap::new()
        }
    }
}

/// A ban refused because `[admin] max-bans` bans are in force.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooManyBans;

/// The bans in force, shared by the relay, HTTP, signaling and admin.
pub(crate) struct Bans {
    list: Reloadable<BanList>,
    /// Held across a change and its write, so that writes land in order.
    file: Mutex<BanFile>,
}

impl std::fmt::Debug for Bans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bans")
            .field("entries", &self.list.get().entries.len())
            .finish_non_exhaustive()
    }
}

impl Bans {
    /// No bans, and none written anywhere.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn in_memory() -> Self {
        Self::with(HashMap::new(), None)
    }

    /// The bans of `state_directory`'s `bans.json`, which every change rewrites.
    pub(crate) fn open(state_directory: &Path) -> Self {
        let path = state_directory.join(FILE_NAME);
        Self::with(load(&path), Some(path))
    }

    fn with(entries: HashMap<String, Ban>, path: Option<PathBuf>) -> Self {
        Self {
            list: Reloadable::new(Arc::new(BanList::from_entries(entries))),
            file: Mutex::new(BanFile {
                path,
                warned: false,
            }),
        }
    }

    /// The list now, to read as long as needed.
    pub(crate) fn list(&self) -> Arc<BanList> {
        self.list.get()
    }

    pub(crate) fn is_banned(&self, user: &str, unix_now: u64) -> bool {
        self.list.get().is_banned(user, unix_now)
    }

    /// Bans `user` until `until` (None: until lifted), replacing any ban it
    /// had; refused when `max` other bans are in force.
    pub(crate) fn ban(
        &self,
        user: &str,
        until: Option<u64>,
        unix_now: u64,
        max: usize,
    ) -> Result<(), TooManyBans> {
        self.change(|entries| {
            let in_force = entries.values().filter(|ban| ban.holds(unix_now)).count();
            let replaces = entries.get(user).is_some_and(|ban| ban.holds(unix_now));
            if in_force >= max && !replaces {
                return Err(TooManyBans);
            }
            entries.insert(
                user.to_owned(),
                Ban {
                    since: unix_now,
                    until,
                },
            );
            Ok(())
        })
    }

    /// Lifts `user`'s ban; false if there was none in force.
    pub(crate) fn unban(&self, user: &str, unix_now: u64) -> bool {
        self.change(|entries| match entries.remove(user) {
            Some(ban) => Ok(ban.holds(unix_now)),
            None => Err(()),
        })
        .unwrap_or(false)
    }

    /// Drops the bans whose time is up, each logged; cheap while none is due.
    pub(crate) fn expire(&self, unix_now: u64) {
        if self
            .list
            .get()
            .next_expiry
            .is_none_or(|next| unix_now < next)
        {
            return;
        }
        let mut ended = Vec::new();
        let _ = self.change(|entries| {
            entries.retain(|user, ban| {
                let keep = ban.holds(unix_now);
                if !keep {
                    ended.push(user.clone());
                }
                keep
            });
            Ok::<(), ()>(())
        });
        for user in ended {
            event!(info, "user-unbanned", user = user, reason = "expired");
        }
    }

    /// Applies `edit` to a copy of the list; on Ok the copy becomes the
    /// list and is written.
    fn change<T, E>(
        &self,
        edit: impl FnOnce(&mut HashMap<String, Ban>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let mut entries = self.list.get().entries.clone();
        let outcome = edit(&mut entries)?;
        let list = BanList::from_entries(entries);
        file.save(&list);
        self.list.set(Arc::new(list));
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_ban_holds_until_its_end_or_until_lifted() {
        let bans = Bans::in_memory();
        bans.ban("alice", Some(NOW + 60), NOW, 10).unwrap();
        bans.ban("bob", None, NOW, 10).unwrap();
        assert!(bans.is_banned("alice", NOW + 59));
        assert!(!bans.is_banned("alice", NOW + 60));
        assert!(bans.is_banned("bob", u64::MAX));
        assert!(!bans.is_banned("carol", NOW));
        assert_eq!(bans.list().count(NOW), 2);
        assert!(bans.unban("bob", NOW));
        assert!(!bans.unban("bob", NOW), "no second lift");
        assert!(!bans.is_banned("bob", NOW));
        bans.expire(NOW + 60);
        assert_eq!(bans.list().count(NOW), 0, "the expired ban is gone");
        assert!(!bans.unban("alice", NOW));
    }

    #[test]
    fn max_bans_counts_bans_in_force_and_a_new_ban_replaces_the_old() {
        let bans = Bans::in_memory();
        bans.ban("alice", Some(NOW + 1), NOW, 2).unwrap();
        bans.ban("bob", None, NOW, 2).unwrap();
        assert_eq!(bans.ban("carol", None, NOW, 2), Err(TooManyBans));
        bans.ban("bob", Some(NOW + 5), NOW, 2).unwrap();
        assert_eq!(bans.list().active(NOW)[1].1.until, Some(NOW + 5));
        // Alice's ban ended: its place is free even before the sweep.
        bans.ban("carol", None, NOW + 1, 2).unwrap();
    }

    #[test]
    fn bans_are_written_whole_and_read_back() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_owned();
        let bans = Bans::open(&dir);
        bans.ban("alice", None, NOW, 10).unwrap();
        bans.ban("1800000000:odd \"name\"", Some(NOW + 60), NOW, 10)
            .unwrap();
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![FILE_NAME], "no temporary file is left");
        let again = Bans::open(&dir);
        assert_eq!(again.list().active(NOW), bans.list().active(NOW));
        assert!(again.is_banned("1800000000:odd \"name\"", NOW));
        assert!(again.unban("alice", NOW));
        assert!(!Bans::open(&dir).is_banned("alice", NOW));
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_no_bans_are_loaded() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_owned();
        let path = dir.join(FILE_NAME);
        for text in [
            "{\"bans\": [",
            "[]",
            "{\"bans\": [{\"user\": \"\", \"since\": 1}]}",
        ] {
            fs::write(&path, text).unwrap();
            let bans = Bans::open(&dir);
            assert_eq!(bans.list().count(NOW), 0, "{text}");
            assert!(!path.exists(), "{text}");
            assert_eq!(
                fs::read_to_string(dir.join("bans.json.corrupt")).unwrap(),
                text
            );
            // The next ban writes a good file again.
            bans.ban("alice", None, NOW, 10).unwrap();
            assert!(Bans::open(&dir).is_banned("alice", NOW));
        }
    }

    #[test]
    fn an_unwritable_directory_keeps_bans_in_memory() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_owned();
        // A file where the directory should be: nothing can be written under it.
        let blocked = dir.join("not-a-directory");
        fs::write(&blocked, "").unwrap();
        let bans = Bans::open(&blocked);
        bans.ban("alice", None, NOW, 10).unwrap();
        bans.ban("bob", None, NOW, 10).unwrap();
        assert!(bans.is_banned("alice", NOW) && bans.is_banned("bob", NOW));
        assert!(bans.file.lock().unwrap().warned, "warned once");
    }
}
