//! The snapshot file format and its atomic writer (the `persistence`
//! feature).
//!
//! # Format, version 1
//!
//! | bytes | content |
//! |---|---|
//! | 0..8 | magic `IDEMSNAP` |
//! | 8..10 | format version, `u16` little-endian (1) |
//! | 10..18 | body length in bytes, `u64` little-endian |
//! | 18..50 | SHA-256 of bytes 0..18 followed by the body |
//! | 50.. | body: postcard encoding of the key and value type names (two strings), then of the `Snapshot<K, V>` |
//!
//! The reader checks, in order: magic, version, that the file is exactly as
//! long as announced (shorter: truncated; longer: corrupted), the checksum,
//! the type names, and that the snapshot decodes using every byte. Nothing
//! is allocated from an unverified length: a file's body is read only
//! once its size on disk matches the header, and postcard's decoder
//! bounds every allocation by the bytes it actually has.
//!
//! postcard, because its wire format is specified and stable since 1.0,
//! compact (varint integers, no field names), and maintained; bincode, the
//! other common choice, is no longer maintained. SHA-256, because the
//! `digest` feature already brings it (no new dependency) and it catches
//! any corruption, not only burst errors.
//!
//! # Atomic replacement
//!
//! `save_to` writes a temporary file beside the target
//! (`.<name>.idemcache-tmp`, in the same directory so the rename cannot
//! cross file systems), fsyncs it, renames it over the target, and fsyncs
//! the directory so the rename itself is durable. A crash at any point
//! leaves the target either as it was or completely replaced: never a
//! partial file. A crash can leave the temporary file behind; the next
//! save removes it and creates its own (`create_new`, so never through a
//! symlink), and loads never read it. New files are `0600` on Unix (a
//! snapshot holds responses); a replaced file's permissions carry over.

use std::any::type_name;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hash};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{Cache, RestoreReport, Snapshot, SnapshotError};

/// The first eight bytes of every snapshot file.
const MAGIC: [u8; 8] = *b"IDEMSNAP";

/// The format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u16 = 1;

const VERSION_AT: usize = 8;
const LENGTH_AT: usize = 10;
const CHECKSUM_AT: usize = 18;
/// Bytes before the body.
const HEADER_LEN: usize = 50;

/// Writes are issued in pieces of this size, so that a process killed
/// mid-save has really written part of the temporary file (which the crash
/// test relies on to show that a partial file is never read).
const WRITE_CHUNK: usize = 256 * 1024;

impl<K: Serialize, V: Serialize> Snapshot<K, V> {
    /// The snapshot in the file format (see [`save_to`](Self::save_to)),
    /// in memory.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::Encode`] if a key's or value's `Serialize` fails.
    ///
    /// ```
    /// use idemcache::{Cache, Snapshot};
    ///
    /// let cache: Cache<String, u64> = Cache::new();
    /// cache.insert("key".to_string(), 7);
    /// let bytes = cache.snapshot().encode()?;
    /// assert!(bytes.starts_with(b"IDEMSNAP"));
    /// let decoded = Snapshot::<String, u64>::decode(&bytes)?;
    /// assert_eq!(decoded.len(), 1);
    /// # Ok::<(), idemcache::SnapshotError>(())
    /// ```
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut out = Vec::with_capacity(HEADER_LEN + 64 * self.len());
        out.resize(HEADER_LEN, 0);
        let out = postcard::to_extend(&TypeTag::of::<K, V>(), out).map_err(encode_error)?;
        let out = postcard::to_extend(self, out).map_err(encode_error)?;
        Ok(seal(out))
    }

    /// Writes the snapshot to `path` atomically: the file at `path` is
    /// either left as it was or replaced by the complete snapshot, whatever
    /// happens (crash, power loss, full disk). See the format in the
    /// crate's [Surviving restarts](crate#surviving-restarts) section.
    ///
    /// One process should write a given path at a time; writes within one
    /// process are serialized. A new file is readable by its owner only
    /// (`0600` on Unix); a replaced one keeps its permissions. A symlink at
    /// `path` is followed (as [`load_from`](Self::load_from) follows it):
    /// the file it leads to is replaced, and the link stays.
    ///
    /// The bytes go first to a temporary file beside the target, named
    /// `.<file name>.idemcache-tmp` (for `records.snapshot`,
    /// `.records.snapshot.idemcache-tmp`), created exclusively, fsynced, then
    /// renamed over `path`; the directory is fsynced last. A leftover
    /// temporary file (from a crash mid-save) is removed by the next save;
    /// give backup and cleanup tools an exclusion for that name.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::Encode`] if encoding fails; [`SnapshotError::Io`]
    /// if writing, syncing or renaming does, and the previous file is then
    /// untouched; or, after the rename, if syncing the directory fails:
    /// the new file is in place but its rename may not survive a power
    /// cut.
    ///
    /// # Examples
    ///
    /// ```
    /// use idemcache::{Cache, Snapshot};
    ///
    /// let dir = std::env::temp_dir().join(format!("idemcache-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("records.snapshot");
    ///
    /// let cache: Cache<String, String> = Cache::new();
    /// cache.insert("key-1".to_string(), "receipt".to_string());
    /// cache.snapshot().save_to(&path)?;
    ///
    /// let loaded = Snapshot::<String, String>::load_from(&path)?;
    /// assert_eq!(loaded.len(), 1);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_to(&self, path: impl AsRef<Path>) -> Result<(), SnapshotError> {
        let bytes = self.encode()?;
        write_atomically(path.as_ref(), &bytes)
    }

    /// For the fuzz target: `payload` framed as a well-formed file for this
    /// snapshot type (header, checksum, type tag), so that the fuzzer
    /// reaches the snapshot decoder. Compiled for tests and fuzzing only.
    #[cfg(any(test, fuzzing))]
    #[doc(hidden)]
    pub fn __frame_payload(payload: &[u8]) -> Vec<u8> {
        let mut out = postcard::to_extend(&TypeTag::of::<K, V>(), vec![0; HEADER_LEN])
            .expect("two strings always encode");
        out.extend_from_slice(payload);
        seal(out)
    }
}

impl<K: DeserializeOwned, V: DeserializeOwned> Snapshot<K, V> {
    /// Reads a snapshot written by [`save_to`](Self::save_to), verifying
    /// everything first: a file that fails any check gives an error, never
    /// a partial snapshot, and never a panic.
    ///
    /// # Errors
    ///
    /// [`Io`](SnapshotError::Io) (use
    /// [`is_not_found`](SnapshotError::is_not_found) to tell a first start),
    /// [`NotASnapshot`](SnapshotError::NotASnapshot),
    /// [`WrongVersion`](SnapshotError::WrongVersion),
    /// [`Truncated`](SnapshotError::Truncated),
    /// [`Corrupted`](SnapshotError::Corrupted),
    /// [`WrongType`](SnapshotError::WrongType) (written for other key or
    /// value types), [`Decode`](SnapshotError::Decode).
    ///
    /// ```
    /// use idemcache::{Cache, Snapshot};
    ///
    /// # let dir = std::env::temp_dir().join(format!("idemcache-doc-load-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("records.snapshot");
    /// let cache: Cache<String, u64> = Cache::new();
    /// cache.insert("key".to_string(), 7);
    /// cache.snapshot().save_to(&path)?;
    /// let loaded = Snapshot::<String, u64>::load_from(&path)?;
    /// assert_eq!(loaded.entries()[0].value, 7);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_from(path: impl AsRef<Path>) -> Result<Self, SnapshotError> {
        Self::decode(&read_verified_size(path.as_ref())?)
    }

    /// Decodes the file format from memory, with every check of
    /// [`load_from`](Self::load_from).
    ///
    /// # Errors
    ///
    /// As [`load_from`](Self::load_from), without `Io`.
    ///
    /// ```
    /// use idemcache::{Snapshot, SnapshotError};
    ///
    /// let err = Snapshot::<String, u64>::decode(b"not a snapshot").unwrap_err();
    /// assert!(matches!(err, SnapshotError::NotASnapshot | SnapshotError::Truncated { .. }));
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        decode(bytes, true)
    }

    /// [`decode`](Self::decode) without the type-name check, for a file
    /// written before `K` or `V` was renamed or moved to another module (or
    /// by a compiler that spells type names differently): type names are
    /// what the check compares, and they change with such edits although
    /// the encoding does not. The checksum and the decoder still reject
    /// damaged or undecodable data.
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode), without `WrongType`.
    ///
    /// ```
    /// use idemcache::{Cache, Snapshot};
    ///
    /// // Written when the value type had another name: the type check is skipped,
    /// // the bytes must still decode as the new types.
    /// let cache: Cache<String, u64> = Cache::new();
    /// cache.insert("key".to_string(), 7);
    /// let bytes = cache.snapshot().encode()?;
    /// assert_eq!(Snapshot::<String, u64>::decode_unchecked(&bytes)?.len(), 1);
    /// # Ok::<(), idemcache::SnapshotError>(())
    /// ```
    pub fn decode_unchecked(bytes: &[u8]) -> Result<Self, SnapshotError> {
        decode(bytes, false)
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Clone + Serialize,
    V: Clone + Serialize,
{
    /// Takes a [snapshot](Cache::snapshot) and [saves](Snapshot::save_to)
    /// it to `path` atomically. Returns how many records it saved.
    ///
    /// # Errors
    ///
    /// As [`Snapshot::save_to`].
    ///
    /// # Examples
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// let dir = std::env::temp_dir().join(format!("idemcache-doc-save-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("records.snapshot");
    ///
    /// let before: Cache<String, String> = Cache::new();
    /// before.insert("key-1".to_string(), "receipt".to_string());
    /// assert_eq!(before.save_to(&path)?, 1);
    ///
    /// // After a restart:
    /// let after: Cache<String, String> = Cache::new();
    /// let report = after.load_from(&path)?;
    /// assert_eq!(report.restored, 1);
    /// assert_eq!(after.get("key-1").as_deref(), Some("receipt"));
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_to(&self, path: impl AsRef<Path>) -> Result<usize, SnapshotError> {
        let path = path.as_ref();
        // Under the cache's save lock: an older snapshot (a periodic save
        // in progress) is never written over this one.
        let mut taken = None;
        let saved = {
            let _saving = self.engine.snapshot_lock.lock();
            let snapshot = taken.insert(self.snapshot());
            snapshot.save_to(path).map(|()| snapshot.len())
        };
        drop(taken); // user `Drop` code, after the save lock
        if saved.is_ok() {
            // The user chose to replace this file: if it is the periodic
            // one, periodic saves may replace it too.
            self.loaded_or_saved(path);
        }
        saved
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + DeserializeOwned,
    V: DeserializeOwned,
    S: BuildHasher,
{
    /// [Loads](Snapshot::load_from) the snapshot at `path` and
    /// [restores](Cache::restore) it. Nothing is restored unless the whole
    /// file verifies. Loading the cache's
    /// [periodic snapshot](crate::CacheBuilder::snapshot_every) file lets
    /// its saves replace that file (before, they refuse:
    /// [`SnapshotError::WouldOverwrite`]).
    ///
    /// # Errors
    ///
    /// As [`Snapshot::load_from`]; on a first start the file does not exist
    /// yet ([`SnapshotError::is_not_found`]).
    ///
    /// ```
    /// use idemcache::Cache;
    ///
    /// # let dir = std::env::temp_dir().join(format!("idemcache-doc-cload-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("records.snapshot");
    /// let cache: Cache<String, String> = Cache::new();
    /// match cache.load_from(&path) {
    ///     Ok(report) => println!("restored {} records", report.restored),
    ///     Err(e) if e.is_not_found() => println!("first start"),
    ///     Err(e) => return Err(e.into()), // damaged: decide, don't guess
    /// }
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_from(&self, path: impl AsRef<Path>) -> Result<RestoreReport, SnapshotError> {
        let path = path.as_ref();
        let snapshot = Snapshot::load_from(path)?;
        let report = self.restore(snapshot);
        // The periodic file's records are in the cache now: its saves may
        // replace it.
        self.loaded_or_saved(path);
        Ok(report)
    }
}

impl<K, V, S> Cache<K, V, S> {
    /// The cache has loaded `path` or saved to it explicitly: if that is
    /// its periodic snapshot file, periodic saves may replace it.
    fn loaded_or_saved(&self, path: &Path) {
        if let Some(snapshots) = &self.handles().snapshots {
            snapshots.loaded_or_saved(path);
        }
    }

    /// How the [periodic snapshots](crate::CacheBuilder::snapshot_every)
    /// are going; `None` when the cache has none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemcache::Cache;
    ///
    /// # let dir = std::env::temp_dir().join(format!("idemcache-doc-status-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("records.snapshot");
    /// let cache: Cache<String, String> = Cache::builder()
    ///     .snapshot_every(&path, Duration::from_secs(10))
    ///     .build()?;
    /// assert_eq!(cache.snapshot_status().unwrap().saved, 0);
    /// cache.shutdown()?; // the final snapshot
    /// assert_eq!(cache.snapshot_status().unwrap().saved, 1);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn snapshot_status(&self) -> Option<crate::SnapshotStatus> {
        let snapshots = self.handles().snapshots.as_ref();
        snapshots.map(|snapshots| snapshots.status())
    }
}

/// The key and value type names stored in the body.
#[derive(Serialize, serde::Deserialize, PartialEq, Eq)]
struct TypeTag<'a> {
    key: std::borrow::Cow<'a, str>,
    value: std::borrow::Cow<'a, str>,
}

impl TypeTag<'static> {
    fn of<K, V>() -> Self {
        TypeTag {
            key: type_name::<K>().into(),
            value: type_name::<V>().into(),
        }
    }
}

impl TypeTag<'_> {
    fn describe(&self) -> String {
        format!("Snapshot<{}, {}>", self.key, self.value)
    }
}

fn encode_error(e: postcard::Error) -> SnapshotError {
    SnapshotError::Encode {
        reason: e.to_string(),
    }
}

/// Fills in the header of `out` (whose body follows `HEADER_LEN` bytes).
fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let body_len = (out.len() - HEADER_LEN) as u64;
    out[..VERSION_AT].copy_from_slice(&MAGIC);
    out[VERSION_AT..LENGTH_AT].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[LENGTH_AT..CHECKSUM_AT].copy_from_slice(&body_len.to_le_bytes());
    let checksum = checksum(&out[..CHECKSUM_AT], &out[HEADER_LEN..]);
    out[CHECKSUM_AT..HEADER_LEN].copy_from_slice(&checksum);
    out
}

fn checksum(fields: &[u8], body: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(fields)
        .chain_update(body)
        .finalize()
        .into()
}

/// Checks the magic and version of `header` (at least `HEADER_LEN`
/// bytes, or all there is) and returns the body length it announces.
fn body_length(header: &[u8]) -> Result<u64, SnapshotError> {
    let found = header.len() as u64;
    let magic_len = header.len().min(MAGIC.len());
    if header[..magic_len] != MAGIC[..magic_len] {
        return Err(SnapshotError::NotASnapshot);
    }
    let truncated = SnapshotError::Truncated {
        expected: HEADER_LEN as u64,
        found,
    };
    let Some(version) = header.get(VERSION_AT..LENGTH_AT) else {
        return Err(truncated);
    };
    let version = u16::from_le_bytes([version[0], version[1]]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::WrongVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if header.len() < HEADER_LEN {
        return Err(truncated);
    }
    let mut length = [0; 8];
    length.copy_from_slice(&header[LENGTH_AT..CHECKSUM_AT]);
    Ok(u64::from_le_bytes(length))
}

fn decode<K, V>(bytes: &[u8], check_types: bool) -> Result<Snapshot<K, V>, SnapshotError>
where
    K: DeserializeOwned,
    V: DeserializeOwned,
{
    let body_len = body_length(bytes)?;
    let body = &bytes[HEADER_LEN..];
    let expected = (HEADER_LEN as u64).saturating_add(body_len);
    if (body.len() as u64) < body_len {
        return Err(SnapshotError::Truncated {
            expected,
            found: bytes.len() as u64,
        });
    }
    if (body.len() as u64) > body_len {
        return Err(SnapshotError::Corrupted {
            reason: "bytes follow the end the header announces",
        });
    }
    if checksum(&bytes[..CHECKSUM_AT], body)[..] != bytes[CHECKSUM_AT..HEADER_LEN] {
        return Err(SnapshotError::Corrupted {
            reason: "checksum mismatch",
        });
    }
    // The checksum held, so these bytes are what a writer produced.
    let (tag, rest) =
        postcard::take_from_bytes::<TypeTag<'_>>(body).map_err(|_| SnapshotError::Corrupted {
            reason: "the type tag does not decode",
        })?;
    let wanted = TypeTag::of::<K, V>();
    if check_types && tag != wanted {
        return Err(SnapshotError::WrongType {
            expected: wanted.describe(),
            found: tag.describe(),
        });
    }
    let (snapshot, rest) =
        postcard::take_from_bytes::<Snapshot<K, V>>(rest).map_err(|e| SnapshotError::Decode {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(SnapshotError::Decode {
            reason: format!("{} bytes left over after the snapshot", rest.len()),
        });
    }
    Ok(snapshot)
}

/// Reads a snapshot file, allocating for its body only once the file's
/// size on disk matches what its header announces.
fn read_verified_size(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let io_error = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    (&mut file)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut header)
        .map_err(io_error)?;
    let body_len = body_length(&header)?;
    let size = file.metadata().map_err(io_error)?.len();
    let expected = (HEADER_LEN as u64).saturating_add(body_len);
    if size < expected {
        return Err(SnapshotError::Truncated {
            expected,
            found: size,
        });
    }
    if size > expected {
        return Err(SnapshotError::Corrupted {
            reason: "bytes follow the end the header announces",
        });
    }
    let mut bytes = header;
    bytes.reserve_exact(body_len as usize);
    // `take`: a file that grows while being read does not make us read on.
    file.take(body_len)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    Ok(bytes)
}

/// Saves are serialized within the process, so two saves to one path
/// never share the temporary file. A plain std mutex: it guards file I/O
/// only, is never held together with a cache lock, and is not poisoned in
/// any way that matters (a panicking save left nothing to protect).
static SAVE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Replaces `path` with `bytes` atomically; see the module docs.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    // A symlink is followed, as `load_from` follows it: the file it points
    // to is replaced, in its own directory, and the link stays.
    let path = &follow_symlinks(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |what: &str| SnapshotError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, what.to_string()),
    };
    let name = path
        .file_name()
        .ok_or_else(|| invalid("the path names no file"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(".idemcache-tmp");
    let temp = dir.join(temp_name);

    let _serialized = SAVE_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    let written = write_and_sync(&temp, path, bytes).map_err(at(&temp));
    let renamed = written.and_then(|()| fs::rename(&temp, path).map_err(at(path)));
    if renamed.is_err() {
        // Best effort: a leftover is never read, and the next save removes it.
        let _ = fs::remove_file(&temp);
        return renamed;
    }
    sync_directory(&dir).map_err(at(&dir))
}

/// Where `path` leads through symlinks (to a file that need not exist).
fn follow_symlinks(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    // The limit Linux puts on a chain of links.
    for _ in 0..40 {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&path)?;
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(path),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Creates the temporary file afresh (`create_new`: never through a
/// symlink or into a file someone else holds open), readable by its owner
/// only until it takes the target's permissions, fills and syncs it.
fn write_and_sync(temp: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(temp) {
        // Left by a save that crashed: remove it (a symlink is removed, not
        // followed) and start over.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(temp)?;
            options.open(temp)?
        }
        opened => opened?,
    };
    // A replaced snapshot keeps the permissions it was given.
    if let Ok(previous) = fs::metadata(target) {
        file.set_permissions(previous.permissions())?;
    }
    for chunk in bytes.chunks(WRITE_CHUNK) {
        file.write_all(chunk)?;
    }
    // The data must be on disk before the rename makes it the snapshot.
    file.sync_all()
}

/// Makes a rename in `dir` durable (on Unix, a directory is synced like a
/// file; elsewhere renames are durable once they return).
fn sync_directory(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::SnapshotEntry;

    fn sample() -> Snapshot<String, u64> {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Snapshot::new(
            at,
            (0..3)
                .map(|i| SnapshotEntry {
                    key: format!("key-{i}"),
                    value: i,
                    fingerprint: (i == 1).then(|| crate::Fingerprint::from_bytes([7; 16])),
                    expires_at: at + Duration::from_secs(60 * i),
                })
                .collect(),
        )
    }

    #[test]
    fn round_trips_and_lays_out_the_header_as_documented() {
        let bytes = sample().encode().unwrap();
        assert_eq!(&bytes[..8], b"IDEMSNAP");
        assert_eq!(&bytes[8..10], &1u16.to_le_bytes());
        let body_len = u64::from_le_bytes(bytes[10..18].try_into().unwrap());
        assert_eq!(body_len as usize, bytes.len() - HEADER_LEN);
        assert_eq!(Snapshot::<String, u64>::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            let err = Snapshot::<String, u64>::decode(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, SnapshotError::Truncated { .. }),
                "cut at {len}: {err:?}"
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_an_error() {
        let bytes = sample().encode().unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Snapshot::<String, u64>::decode(&damaged).is_err(),
                "bit {bit} flipped went unnoticed"
            );
        }
    }
}
