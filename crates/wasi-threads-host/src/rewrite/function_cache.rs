//! A cache of Cranelift-compiled functions on disk, shared by every module
//! an engine compiles: Cranelift's incremental compilation cache
//! ([`wasmtime::Config::enable_incremental_compilation`]).
//!
//! The [`ModuleCache`](super::ModuleCache) helps only the second time the
//! same module runs. A test suite run with the host as cargo's runner
//! compiles many modules once each, but they share most of their functions
//! (std, the crate under test, the test harness). Cranelift keys a compiled
//! function by its IR with callees named symbolically, so a function
//! compiled for one module is reused for another; the rewrite is
//! deterministic per function body, so the same body rewritten in two
//! modules gives the same IR unless what it refers to by number (data
//! addresses, type and global indices, the instance layout) differs.
//!
//! Layout: one *pack* file per compiled module, holding the functions that
//! compile did not find, written once after the compile ([`FunctionCache::flush`])
//! so that the compile's threads never wait on the disk: an insert only
//! appends to a buffer in memory. A pack is written to a temporary file and
//! renamed into place, so a reader (in this process or another) sees it
//! whole or not at all, and packs are never changed after that. The index
//! of every pack is read at the first lookup (64 bytes an entry); a hit
//! opens its pack (once: packs are closed again at the flush) and reads its
//! entry with one positioned read, then checks its length, key and
//! BLAKE3 checksum. An entry or pack that fails any check is a miss (and
//! Cranelift itself refuses an entry of another version of itself), never
//! a panic or wrong code.
//!
//! The directory is bounded: after a pack is written, the packs used least
//! recently (a hit renews its pack's modification time) are removed until
//! the rest fit in [`FunctionCache::max_size`] bytes. A pack larger than the
//! bound on its own is not written.

use super::cache::{CacheFile, evict};
use parking_lot::{Mutex, RwLock};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;
use wasmtime::{CacheStore, Config, Result};

/// The most bytes a [`FunctionCache`] keeps in its directory unless told
/// otherwise: 256 MiB (tokio 1.54's whole suite, 186 test binaries, fills
/// 41 MB).
pub const DEFAULT_FUNCTION_CACHE_SIZE: u64 = 256 << 20;

/// The first bytes of every pack; the digit is the format's version.
const MAGIC: [u8; 8] = *b"WTFPACK1";
/// Magic, entry count, index checksum.
const HEADER_LEN: usize = 8 + 8 + 16;
/// Key hash, offset, key length, value length, checksum.
const INDEX_ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 16;
const PACK_EXTENSION: &str = "pack";

/// Cranelift's incremental compilation cache, on disk and bounded in size.
///
/// `dir` must be writable only by the user running the host, as Wasmtime's
/// own cache directory must: the machine code in it is run as is (the
/// checksums catch corruption, not an attacker). A pack that cannot be
/// read or written is only logged at `debug` level; functions are then
/// compiled as without the cache.
///
/// Clones share one cache (buffer, index and counters).
///
/// ```no_run
/// # fn main() -> wasmtime::Result<()> {
/// use wasi_threads_host::{FunctionCache, engine_config};
/// let functions = FunctionCache::new("/home/me/.cache/my-host/functions");
/// let mut config = engine_config();
/// functions.enable(&mut config)?;
/// let engine = wasmtime::Engine::new(&config)?;
/// let guest = wasi_threads_host::compile(&engine, &std::fs::read("app.wasm")?)?;
/// // What that compile added is written now.
/// functions.flush()?;
/// # let _ = guest; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FunctionCache {
    inner: Arc<Inner>,
}

/// Counters of a [`FunctionCache`] since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FunctionCacheStats {
    /// Lookups that found a valid entry.
    pub hits: u64,
    /// Lookups that found none, or one that failed its checks.
    pub misses: u64,
    /// Entries that failed their checks (counted in `misses` too).
    pub corrupt: u64,
    /// Entries written to the directory by [`FunctionCache::flush`].
    pub written: u64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    max_size: AtomicU64,
    /// Every pack's index, read at the first lookup (`None` before), and
    /// the packs this cache wrote since.
    index: RwLock<Option<Index>>,
    pending: Mutex<Pending>,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    written: AtomicU64,
}

/// Inserts not written yet, and the packs hits came from.
#[derive(Debug, Default)]
struct Pending {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    bytes: u64,
    /// Indices into [`Index::packs`].
    used_packs: HashSet<u32>,
    /// Packs an entry of which failed its checks (indices likewise).
    corrupt_packs: HashSet<u32>,
    /// A buffer that outgrew the bound: the rest of this compile is not
    /// cached.
    overflowed: bool,
}

#[derive(Debug, Default)]
struct Index {
    packs: Vec<Pack>,
    entries: HashMap<[u8; 32], Location>,
}

/// A pack, opened at its first hit and closed at the next flush: a cache
/// of hundreds of packs must not hold hundreds of descriptors while the
/// guest runs (its own `open`s would fail).
#[derive(Debug)]
struct Pack {
    path: PathBuf,
    /// `None` once opening failed (another process evicted it).
    file: OnceLock<Option<File>>,
}

#[derive(Debug, Clone, Copy)]
struct Location {
    pack: u32,
    offset: u64,
    key_len: u32,
    value_len: u32,
    checksum: [u8; 16],
}

impl FunctionCache {
    /// The cache in `dir` (created when first written), bounded by
    /// [`DEFAULT_FUNCTION_CACHE_SIZE`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FunctionCache {
            inner: Arc::new(Inner {
                dir: dir.into(),
                max_size: AtomicU64::new(DEFAULT_FUNCTION_CACHE_SIZE),
                index: RwLock::new(None),
                pending: Mutex::new(Pending::default()),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                corrupt: AtomicU64::new(0),
                written: AtomicU64::new(0),
            }),
        }
    }

    /// The most bytes the directory keeps: after a pack is written, the
    /// packs used least recently are removed until the rest fit (the one
    /// just written is kept; one that would not fit alone is not written).
    pub fn max_size(self, bytes: u64) -> Self {
        self.inner.max_size.store(bytes, Ordering::Relaxed);
        self
    }

    /// Makes the engines built from `config` look functions up in this
    /// cache and offer it what they compile. Call [`flush`](Self::flush)
    /// after a compile to keep what it added.
    pub fn enable(&self, config: &mut Config) -> Result<()> {
        config.enable_incremental_compilation(Arc::new(self.clone()))?;
        Ok(())
    }

    /// The counters since the cache was made.
    pub fn stats(&self) -> FunctionCacheStats {
        let inner = &self.inner;
        FunctionCacheStats {
            hits: inner.hits.load(Ordering::Relaxed),
            misses: inner.misses.load(Ordering::Relaxed),
            corrupt: inner.corrupt.load(Ordering::Relaxed),
            written: inner.written.load(Ordering::Relaxed),
        }
    }

    /// Writes the functions compiled since the last flush as one pack,
    /// renews the modification time of the packs that gave hits, and
    /// removes the least recently used packs beyond the bound. Without
    /// it, nothing compiled is kept. Cheap when there is nothing to do.
    pub fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        let Pending {
            entries,
            used_packs,
            corrupt_packs,
            overflowed,
            ..
        } = std::mem::take(&mut *inner.pending.lock());
        if let Some(index) = &mut *inner.index.write() {
            for pack in &mut index.packs {
                pack.file = OnceLock::new();
            }
            // A damaged pack goes: its entry would stay a miss in every
            // later process (the first pack in name order wins a key), while
            // this compile's pack holds the function again. Its other
            // functions are compiled again once, then hit.
            for pack in &corrupt_packs {
                if let Some(Pack { path, .. }) = index.packs.get(*pack as usize) {
                    log::debug!("removing damaged pack {}", path.display());
                    let _ = std::fs::remove_file(path);
                }
            }
            for pack in used_packs.difference(&corrupt_packs) {
                let Some(Pack { path, .. }) = index.packs.get(*pack as usize) else {
                    continue;
                };
                // Its last use, for the eviction order.
                let touched = File::options()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                if let Err(e) = touched {
                    log::debug!("cannot mark {} as used: {e}", path.display());
                }
            }
        }
        if overflowed {
            log::debug!("compiled functions beyond the function cache's bound: not cached");
            return Ok(());
        }
        if entries.is_empty() {
            return Ok(());
        }
        let max_size = inner.max_size.load(Ordering::Relaxed);
        let Some((name, pack, count)) = encode_pack(entries) else {
            return Ok(());
        };
        if pack.len() as u64 > max_size {
            log::debug!(
                "a pack of {} bytes exceeds the function cache's bound",
                pack.len()
            );
            return Ok(());
        }
        let path = write_atomically(&inner.dir, &name, &pack)?;
        inner.written.fetch_add(count, Ordering::Relaxed);
        // The next module this cache compiles (in this process) finds them.
        if let Some(index) = &mut *inner.index.write() {
            match read_pack_index(&path) {
                Ok(entries) => index.add(path, entries),
                Err(e) => log::debug!("function cache pack {}: {e}", path.display()),
            }
        }
        evict(&inner.dir, max_size, &name, "function cache", pack_file);
        Ok(())
    }

    /// `f` of the index, read from the directory first if it was not yet.
    fn with_index<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        if let Some(index) = &*self.inner.index.read() {
            return f(index);
        }
        let mut index = self.inner.index.write();
        f(index.get_or_insert_with(|| load_index(&self.inner.dir)))
    }

    fn lookup(&self, key: &[u8]) -> Option<Vec<u8>> {
        let inner = &self.inner;
        let hash = key_hash(key);
        let read = self.with_index(|index| {
            let location = *index.entries.get(&hash)?;
            let pack = index.packs.get(location.pack as usize)?;
            let file = pack.file.get_or_init(|| File::open(&pack.path).ok());
            let read = match file {
                Some(file) => read_entry(file, &location, key),
                None => Err(std::io::ErrorKind::NotFound.into()),
            };
            Some((location, read, pack.path.clone()))
        });
        let (location, read, path) = read?;
        match read {
            Ok(value) => {
                inner.pending.lock().used_packs.insert(location.pack);
                Some(value)
            }
            Err(e) => {
                inner.corrupt.fetch_add(1, Ordering::Relaxed);
                inner.pending.lock().corrupt_packs.insert(location.pack);
                log::debug!("function cache entry in {}: {e}", path.display());
                None
            }
        }
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.lookup(key);
        let counter = match found {
            Some(_) => &self.inner.hits,
            None => &self.inner.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let max_size = self.inner.max_size.load(Ordering::Relaxed);
        let mut pending = self.inner.pending.lock();
        let bytes = (key.len() + value.len() + INDEX_ENTRY_LEN) as u64;
        // The buffer is bounded as the directory is: a compile larger than
        // the cache does not hold its whole output twice in memory.
        if pending.overflowed || pending.bytes + bytes > max_size {
            pending.overflowed = true;
            pending.entries = Vec::new();
            return false;
        }
        pending.bytes += bytes;
        pending.entries.push((key.to_vec(), value));
        true
    }
}

fn key_hash(key: &[u8]) -> [u8; 32] {
    *blake3::hash(key).as_bytes()
}

/// An entry's checksum: its key and value, lengths first.
fn checksum(key: &[u8], value: &[u8]) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(&(value.len() as u64).to_le_bytes());
    hasher.update(value);
    let mut out = [0; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    out
}

/// The pack of `entries` (duplicates of a key dropped) and its file name,
/// a hash of its index, and how many entries it holds; `None` when no entry
/// fits the format.
fn encode_pack(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Option<(String, Vec<u8>, u64)> {
    let mut seen = HashSet::new();
    let mut entries: Vec<_> = entries
        .into_iter()
        .filter(|(key, value)| {
            u32::try_from(key.len()).is_ok() && u32::try_from(value.len()).is_ok()
        })
        .map(|(key, value)| (key_hash(&key), key, value))
        .filter(|(hash, _, _)| seen.insert(*hash))
        .collect();
    // In key order, not in the order the compile threads finished: one
    // module's pack is then the same bytes, and the same name, in every
    // process.
    entries.sort_unstable_by_key(|(hash, _, _)| *hash);
    if entries.is_empty() {
        return None;
    }
    let data_start = HEADER_LEN + entries.len() * INDEX_ENTRY_LEN;
    let data_len: usize = entries.iter().map(|(_, k, v)| k.len() + v.len()).sum();
    let mut index = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN);
    let mut offset = data_start as u64;
    for (hash, key, value) in &entries {
        index.extend_from_slice(hash);
        index.extend_from_slice(&offset.to_le_bytes());
        index.extend_from_slice(&(key.len() as u32).to_le_bytes());
        index.extend_from_slice(&(value.len() as u32).to_le_bytes());
        index.extend_from_slice(&checksum(key, value));
        offset += (key.len() + value.len()) as u64;
    }
    let index_hash = blake3::hash(&index);
    let mut pack = Vec::with_capacity(data_start + data_len);
    pack.extend_from_slice(&MAGIC);
    pack.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    pack.extend_from_slice(&index_hash.as_bytes()[..16]);
    pack.extend_from_slice(&index);
    for (_, key, value) in &entries {
        pack.extend_from_slice(key);
        pack.extend_from_slice(value);
    }
    // Every entry's checksum is in the index: two packs of one name hold
    // the same functions, so a rename over another process's is harmless.
    let name = format!("{}.{PACK_EXTENSION}", &index_hash.to_hex()[..32]);
    Some((name, pack, entries.len() as u64))
}

/// Writes `contents` to `dir/name` through a temporary file, so that no
/// reader sees it partly written; its path.
fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!("{name}.tmp{}", std::process::id()));
    let path = dir.join(name);
    let written = File::create(&temporary)
        .and_then(|mut f| f.write_all(contents))
        .and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(e.into());
    }
    Ok(path)
}

/// The index of every pack in `dir`; a pack whose header or index fails
/// its checks is left out (and removed by eviction in time).
fn load_index(dir: &Path) -> Index {
    let mut index = Index::default();
    let Ok(listing) = std::fs::read_dir(dir) else {
        return index;
    };
    let mut names: Vec<PathBuf> = listing
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == PACK_EXTENSION))
        .collect();
    // The same entry in two packs: the first in name order wins, the same
    // in every process.
    names.sort();
    for path in names {
        match read_pack_index(&path) {
            Ok(entries) => index.add(path, entries),
            Err(e) => log::debug!("function cache pack {}: {e}", path.display()),
        }
    }
    index
}

impl Index {
    /// Adds a pack's entries; an entry already indexed keeps its first
    /// location.
    fn add(&mut self, path: PathBuf, entries: Vec<([u8; 32], Location)>) {
        let Ok(pack) = u32::try_from(self.packs.len()) else {
            return;
        };
        let file = OnceLock::new();
        self.packs.push(Pack { path, file });
        for (hash, mut location) in entries {
            location.pack = pack;
            self.entries.entry(hash).or_insert(location);
        }
    }
}

fn read_pack_index(path: &Path) -> std::io::Result<Vec<([u8; 32], Location)>> {
    use std::io::{Error, ErrorKind};
    let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_string());
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut header = [0u8; HEADER_LEN];
    read_exact_at(&file, &mut header, 0)?;
    if header[..8] != MAGIC {
        return Err(bad("not a pack of this version"));
    }
    let count = u64::from_le_bytes(header[8..16].try_into().map_err(|_| bad("header"))?);
    // Checked against the file's length before anything is allocated.
    let index_len = count
        .checked_mul(INDEX_ENTRY_LEN as u64)
        .filter(|len| HEADER_LEN as u64 + len <= file_len)
        .ok_or_else(|| bad("truncated index"))?;
    let mut raw = vec![0u8; index_len as usize];
    read_exact_at(&file, &mut raw, HEADER_LEN as u64)?;
    if blake3::hash(&raw).as_bytes()[..16] != header[16..32] {
        return Err(bad("index checksum mismatch"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for chunk in raw.chunks_exact(INDEX_ENTRY_LEN) {
        let field = |range: std::ops::Range<usize>| &chunk[range];
        let mut hash = [0; 32];
        hash.copy_from_slice(field(0..32));
        let offset = u64::from_le_bytes(field(32..40).try_into().map_err(|_| bad("entry"))?);
        let key_len = u32::from_le_bytes(field(40..44).try_into().map_err(|_| bad("entry"))?);
        let value_len = u32::from_le_bytes(field(44..48).try_into().map_err(|_| bad("entry"))?);
        let mut checksum = [0; 16];
        checksum.copy_from_slice(field(48..64));
        // An entry past the end of a truncated pack is left out here; its
        // checksum catches one whose bytes changed.
        let end = offset.checked_add(u64::from(key_len) + u64::from(value_len));
        if end.is_none_or(|end| end > file_len) {
            continue;
        }
        let location = Location {
            pack: 0,
            offset,
            key_len,
            value_len,
            checksum,
        };
        entries.push((hash, location));
    }
    Ok(entries)
}

/// The value of the entry at `location`, if its key is `key` and its
/// checksum matches.
fn read_entry(file: &File, location: &Location, key: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind};
    let key_len = location.key_len as usize;
    if key_len != key.len() {
        return Err(Error::new(ErrorKind::InvalidData, "key length mismatch"));
    }
    let mut bytes = vec![0u8; key_len + location.value_len as usize];
    read_exact_at(file, &mut bytes, location.offset)?;
    let (stored_key, value) = bytes.split_at(key_len);
    if stored_key != key || checksum(stored_key, value) != location.checksum {
        return Err(Error::new(ErrorKind::InvalidData, "checksum mismatch"));
    }
    bytes.drain(..key_len);
    Ok(bytes)
}

/// A positioned read, which leaves the file's cursor alone: the compile's
/// threads read one pack at once.
#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// The function cache's files: packs, and packs being written.
fn pack_file(name: &str) -> CacheFile {
    if name.contains(&format!(".{PACK_EXTENSION}.tmp")) {
        CacheFile::Temporary
    } else if name.ends_with(&format!(".{PACK_EXTENSION}")) {
        CacheFile::Entry(name.to_string())
    } else {
        CacheFile::Other
    }
}
