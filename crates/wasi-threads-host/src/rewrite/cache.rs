//! A cache of compiled guest modules, so that a run of a module seen before
//! neither parses, rewrites nor compiles it again.
//!
//! Wasmtime's own cache is keyed by the bytes it compiles, which are the
//! rewritten ones: consulting it would still cost a full rewrite of the
//! module on every run (for a 20 MB program, most of the startup). This
//! cache is keyed by the module the user gave, every byte of the rewrite's
//! source, the engine's compatibility hash and the mode (normal, or the
//! schedule mode's granularity), and holds what the rewrite
//! and the compiler produced: the serialized `Module` and the
//! [`OffsetMap`]. It is bounded: beyond its size, the entries used least
//! recently are removed.

use super::{CompiledModule, Granularity, OffsetMap, compile, compile_scheduled};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wasmtime::{Engine, Module, Result};

// `REWRITE_SOURCES`: every file under `src/rewrite/` (this one included),
// listed by the build script from the directory itself. All of them are
// part of every key: a build whose rewrite differs in any way never loads
// what another build cached.
include!(concat!(env!("OUT_DIR"), "/rewrite_sources.rs"));

/// The most bytes a [`ModuleCache`] keeps in its directory unless told
/// otherwise: 512 MiB.
pub const DEFAULT_CACHE_SIZE: u64 = 512 << 20;

/// Temporary files older than this are left over from a process that died
/// while writing an entry.
const STALE_TEMPORARY: Duration = Duration::from_secs(600);

/// A directory of compiled guest modules, bounded in size.
///
/// `dir` must be writable only by the user running the host, as Wasmtime's
/// own cache directory must: compiled code loaded from it runs as is. A
/// cache entry that cannot be read or written is only logged at `debug`
/// level; the module is then compiled as without a cache.
///
/// ```no_run
/// # fn main() -> wasmtime::Result<()> {
/// use wasi_threads_host::{ModuleCache, engine_config};
/// let engine = wasmtime::Engine::new(&engine_config())?;
/// let cache = ModuleCache::new("/home/me/.cache/my-host").max_size(64 << 20);
/// let guest = cache.compile(&engine, &std::fs::read("app.wasm")?)?;
/// # let _ = guest; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ModuleCache {
    dir: PathBuf,
    max_size: u64,
}

impl ModuleCache {
    /// The cache in `dir` (created when first written), bounded by
    /// [`DEFAULT_CACHE_SIZE`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ModuleCache {
            dir: dir.into(),
            max_size: DEFAULT_CACHE_SIZE,
        }
    }

    /// The most bytes the directory keeps: after an entry is written, the
    /// entries used least recently are removed until the rest fit (the new
    /// entry is always kept).
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// [`compile`], with what it produces kept in the cache and reused
    /// by later calls for the same module and engine settings.
    pub fn compile(&self, engine: &Engine, bytes: &[u8]) -> Result<CompiledModule> {
        self.compile_as(engine, bytes, None)
    }

    /// `compile_scheduled`, cached like
    /// [`compile`](Self::compile). The granularity (or the normal mode) is
    /// part of the key: the two modes' modules import different host
    /// functions, and one is never handed out for the other.
    pub fn compile_scheduled(
        &self,
        engine: &Engine,
        bytes: &[u8],
        granularity: Granularity,
    ) -> Result<CompiledModule> {
        self.compile_as(engine, bytes, Some(granularity))
    }

    fn compile_as(
        &self,
        engine: &Engine,
        bytes: &[u8],
        schedule: Option<Granularity>,
    ) -> Result<CompiledModule> {
        let dir = &self.dir;
        let key = cache_key(REWRITE_SOURCES, engine, schedule, bytes);
        let module_path = dir.join(format!("{key}.cwasm"));
        let map_path = dir.join(format!("{key}.map"));
        if let Some(guest) = load(engine, &module_path, &map_path) {
            // The key says which mode the entry was compiled for.
            let guest = guest.with_granularity(schedule);
            log::debug!("module loaded from the cache ({})", module_path.display());
            // Its last use, for the eviction order.
            let touched = std::fs::File::options()
                .write(true)
                .open(&module_path)
                .and_then(|f| f.set_modified(SystemTime::now()));
            if let Err(e) = touched {
                log::debug!("cannot mark {} as used: {e}", module_path.display());
            }
            return Ok(guest);
        }
        // `compile` leaves out DWARF the engine does not read. The key
        // needs no more for it: whether the engine reads DWARF is part of its
        // compatibility hash.
        let guest = match schedule {
            None => compile(engine, bytes)?,
            Some(granularity) => compile_scheduled(engine, bytes, granularity)?,
        };
        match store(&guest, dir, &module_path, &map_path) {
            Ok(()) => {
                log::debug!("module compiled and cached ({})", module_path.display());
                evict(dir, self.max_size, &key, "module cache", module_cache_file);
            }
            Err(e) => log::debug!(
                "cannot cache the compiled module in {}: {e:#}",
                dir.display()
            ),
        }
        Ok(guest)
    }
}

/// The key of `bytes` compiled by `engine` with the rewrite whose source is
/// `sources` (path and contents of each file), for the normal mode
/// (`schedule` `None`) or schedule mode at that granularity.
fn cache_key(
    sources: &[(&str, &[u8])],
    engine: &Engine,
    schedule: Option<Granularity>,
    bytes: &[u8],
) -> String {
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(sources.len() as u64).to_le_bytes());
    for (path, contents) in sources {
        // Lengths first: no two lists of files hash alike.
        hasher.update(&(path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update(&(contents.len() as u64).to_le_bytes());
        hasher.update(contents);
    }
    hasher.update(&engine_hash.finish().to_le_bytes());
    // One byte, before the module's: no mode's key is another's.
    hasher.update(&[match schedule {
        None => 0,
        Some(Granularity::Atomics) => 1,
        Some(Granularity::Accesses) => 2,
    }]);
    hash_module(&mut hasher, bytes);
    hasher.finalize().to_hex().to_string()
}

/// What a file in a cache directory is, to the cache that owns it.
pub(super) enum CacheFile {
    /// Part of the entry with this key (an entry may be several files).
    Entry(String),
    /// A file being written, or one a dead process left half written.
    Temporary,
    /// Not the cache's: left alone.
    Other,
}

/// Removes the entries of `dir` used least recently (by the newest
/// modification time of their files, which a cache hit renews) until the
/// rest fit in `max_size` bytes, never `keep`; and temporary files a dead
/// process left. `classify` tells the cache's own files from the rest.
/// Anything that cannot be read or removed is skipped: another process may
/// be evicting too. Shared by the module cache and the function cache.
pub(super) fn evict(
    dir: &Path,
    max_size: u64,
    keep: &str,
    cache: &str,
    classify: impl Fn(&str) -> CacheFile,
) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    // key -> (last use, bytes, files)
    let mut entries: std::collections::HashMap<String, (SystemTime, u64, Vec<PathBuf>)> =
        Default::default();
    let mut total = 0u64;
    for file in listing.filter_map(|e| e.ok()) {
        let Ok(meta) = file.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let path = file.path();
        let modified = meta.modified().unwrap_or(now);
        let key = match classify(&file.file_name().to_string_lossy()) {
            CacheFile::Entry(key) => key,
            CacheFile::Temporary => {
                if now.duration_since(modified).unwrap_or_default() > STALE_TEMPORARY {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            CacheFile::Other => continue,
        };
        total += meta.len();
        let entry = entries
            .entry(key)
            .or_insert((SystemTime::UNIX_EPOCH, 0, Vec::new()));
        entry.0 = entry.0.max(modified);
        entry.1 += meta.len();
        entry.2.push(path);
    }
    if total <= max_size {
        return;
    }
    let mut oldest_first: Vec<_> = entries
        .into_iter()
        .filter(|(key, _)| key != keep)
        .map(|(_, entry)| entry)
        .collect();
    oldest_first.sort_by_key(|(used, _, _)| *used);
    let mut removed = 0;
    for (_, size, files) in oldest_first {
        if total <= max_size {
            break;
        }
        // A module before its map: a map alone is never loaded.
        let mut files = files;
        files.sort_by_key(|f| f.extension().is_some_and(|x| x == "map"));
        for file in &files {
            let _ = std::fs::remove_file(file);
        }
        total = total.saturating_sub(size);
        removed += 1;
    }
    log::debug!("{cache} over {max_size} bytes: removed {removed} least recently used entries");
}

/// The module cache's files: a BLAKE3 key in hex, then the kind.
fn module_cache_file(name: &str) -> CacheFile {
    let Some((key, extension)) = name.split_once('.') else {
        return CacheFile::Other;
    };
    if !(key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())) {
        return CacheFile::Other;
    }
    match extension {
        x if x.starts_with("tmp") => CacheFile::Temporary,
        "cwasm" | "map" => CacheFile::Entry(key.to_string()),
        _ => CacheFile::Other,
    }
}

/// Adds the module's bytes to the key: on all cores when there are enough
/// of them to be worth it (BLAKE3 is a tree hash: the result is the same).
fn hash_module(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    #[cfg(feature = "parallel-compilation")]
    if bytes.len() >= 1 << 20 {
        hasher.update_rayon(bytes);
        return;
    }
    hasher.update(bytes);
}

fn load(engine: &Engine, module_path: &Path, map_path: &Path) -> Option<CompiledModule> {
    let map = OffsetMap::decode(&std::fs::read(map_path).ok()?)?;
    // SAFETY: `Module::deserialize_file` requires bytes that
    // `Module::serialize` produced for a compatible engine. The file is
    // named by a hash that covers the engine's compatibility hash, and it is
    // only ever written by `store` below, from `Module::serialize`, through
    // a rename that makes it appear complete; Wasmtime also checks its
    // header against this engine and refuses a mismatch. The cache directory
    // is trusted as Wasmtime's own cache directory is (see the function's
    // documentation).
    let module = match unsafe { Module::deserialize_file(engine, module_path) } {
        Ok(module) => module,
        Err(e) => {
            log::debug!("ignoring cache entry {}: {e:#}", module_path.display());
            return None;
        }
    };
    Some(CompiledModule::new(module, Arc::new(map)))
}

fn store(guest: &CompiledModule, dir: &Path, module_path: &Path, map_path: &Path) -> Result<()> {
    let Some(map) = guest.offsets().encode() else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    // The map first: a module file is only ever found next to its map.
    write_atomically(map_path, &map)?;
    write_atomically(module_path, &guest.module().serialize()?)?;
    Ok(())
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: &[u8] = include_bytes!("../../../../wasm-fixtures/c-debug-trap.wasm");

    #[test]
    fn a_cached_module_is_loaded_not_rewritten() {
        let engine = Engine::new(&crate::engine_config()).unwrap();
        let dir = std::env::temp_dir().join(format!("wth-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = ModuleCache::new(&dir).compile(&engine, GUEST).unwrap();
        let encoded = first.offsets().encode().unwrap();
        let decoded = OffsetMap::decode(&encoded).unwrap();
        assert_eq!(decoded.encode().unwrap(), encoded, "the map round-trips");

        // Replace the cached map by a different valid one: what the next
        // call returns must be the cached entry, not a fresh rewrite.
        let key = cache_key(REWRITE_SOURCES, &engine, None, GUEST);
        let map_path = dir.join(format!("{key}.map"));
        assert_eq!(std::fs::read(&map_path).unwrap(), encoded);
        std::fs::write(&map_path, OffsetMap::identity().encode().unwrap()).unwrap();
        let second = ModuleCache::new(&dir).compile(&engine, GUEST).unwrap();
        assert!(second.offsets().is_identity(), "loaded from the cache");

        // A damaged entry is ignored: the module is compiled again.
        std::fs::write(&map_path, b"garbage").unwrap();
        let third = ModuleCache::new(&dir).compile(&engine, GUEST).unwrap();
        assert!(!third.offsets().is_identity());
        std::fs::write(dir.join(format!("{key}.cwasm")), b"garbage").unwrap();
        let fourth = ModuleCache::new(&dir).compile(&engine, GUEST).unwrap();
        assert_eq!(fourth.offsets().encode().unwrap(), encoded);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Whether the engine reads DWARF decides what is compiled (see
    /// `dwarf::without_unread_dwarf`), so it must decide the key: it does,
    /// through the engine's compatibility hash.
    #[test]
    fn the_key_separates_engines_that_read_dwarf_from_those_that_do_not() {
        use wasmtime::WasmBacktraceDetails::{Disable, Enable};
        let key = |details, native| {
            let mut config = crate::engine_config();
            config.wasm_backtrace_details(details).debug_info(native);
            cache_key(REWRITE_SOURCES, &Engine::new(&config).unwrap(), None, GUEST)
        };
        let plain = key(Disable, false);
        assert_eq!(plain, key(Disable, false));
        assert_ne!(plain, key(Enable, false));
        assert_ne!(plain, key(Disable, true));
        assert_ne!(key(Enable, false), key(Disable, true));
    }

    /// The key covers every file under `src/rewrite/` as it is on disk now,
    /// and a change to any byte of any of them changes it.
    #[test]
    fn the_key_covers_every_byte_of_every_rewrite_source() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rewrite");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let relative = path.strip_prefix(&root).unwrap();
                    let relative = relative.to_str().unwrap().replace('\\', "/");
                    on_disk.push((relative, std::fs::read(&path).unwrap()));
                }
            }
        }
        on_disk.sort();
        let built: Vec<(String, Vec<u8>)> = REWRITE_SOURCES
            .iter()
            .map(|(path, bytes)| (path.to_string(), bytes.to_vec()))
            .collect();
        assert_eq!(
            built.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            on_disk.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
        assert!(built == on_disk, "the key's sources are those on disk");
        assert!(built.iter().any(|(p, _)| p == "unroll.rs"));

        let engine = Engine::new(&crate::engine_config()).unwrap();
        let key_of = |sources: &[(String, Vec<u8>)]| {
            let borrowed: Vec<(&str, &[u8])> = sources
                .iter()
                .map(|(p, b)| (p.as_str(), b.as_slice()))
                .collect();
            cache_key(&borrowed, &engine, None, GUEST)
        };
        let original = key_of(&built);
        assert_eq!(original, cache_key(REWRITE_SOURCES, &engine, None, GUEST));
        for i in 0..built.len() {
            let len = built[i].1.len();
            for at in [0, len / 2, len - 1] {
                let mut changed = built.clone();
                changed[i].1[at] ^= 1;
                assert_ne!(key_of(&changed), original, "{} byte {at}", built[i].0);
            }
            let mut renamed = built.clone();
            renamed[i].0.push('x');
            assert_ne!(key_of(&renamed), original, "{} renamed", built[i].0);
            let mut dropped = built.clone();
            dropped.remove(i);
            assert_ne!(key_of(&dropped), original, "{} left out", built[i].0);
        }
    }

    #[test]
    fn the_cache_keeps_to_its_size_least_recently_used_first() {
        let engine = Engine::new(&crate::engine_config()).unwrap();
        let dir = std::env::temp_dir().join(format!("wth-cache-evict-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Three different modules (text, each exporting another name).
        let module =
            |n: u32| wat::parse_str(format!(r#"(module (func (export "f{n}")))"#)).unwrap();
        let size_of_dir = || -> u64 {
            std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum()
        };
        let keys: Vec<String> = (0..3)
            .map(|n| cache_key(REWRITE_SOURCES, &engine, None, &module(n)))
            .collect();
        let cached = |n: usize| dir.join(format!("{}.cwasm", keys[n])).is_file();
        let unbounded = ModuleCache::new(&dir).max_size(u64::MAX);
        unbounded.compile(&engine, &module(0)).unwrap();
        let one = size_of_dir();
        assert!(one > 0);
        // Room for two entries, not three.
        let cache = ModuleCache::new(&dir).max_size(one * 2 + one / 2);
        let past = |secs| SystemTime::now() - Duration::from_secs(secs);
        let age = |n: usize, secs| {
            for ext in ["cwasm", "map"] {
                let file = std::fs::File::options()
                    .write(true)
                    .open(dir.join(format!("{}.{ext}", keys[n])))
                    .unwrap();
                file.set_modified(past(secs)).unwrap();
            }
        };
        age(0, 300);
        cache.compile(&engine, &module(1)).unwrap();
        age(1, 200);
        assert!(cached(0) && cached(1));
        // A hit on 0 makes it the most recently used: 1 goes first.
        cache.compile(&engine, &module(0)).unwrap();
        cache.compile(&engine, &module(2)).unwrap();
        assert!(cached(0) && cached(2), "the recently used are kept");
        assert!(!cached(1), "the least recently used is evicted");
        assert!(!dir.join(format!("{}.map", keys[1])).exists());
        assert!(size_of_dir() <= one * 2 + one / 2);
        // Files that are not the cache's own are never touched.
        std::fs::write(dir.join("notes.map"), b"mine").unwrap();
        // The entry just written is kept even when it alone is too large.
        ModuleCache::new(&dir)
            .max_size(1)
            .compile(&engine, &module(1))
            .unwrap();
        assert!(cached(1) && !cached(0) && !cached(2));
        assert!(dir.join("notes.map").is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn damaged_maps_are_refused() {
        let engine = Engine::new(&crate::engine_config()).unwrap();
        let guest = compile(&engine, GUEST).unwrap();
        let encoded = guest.offsets().encode().unwrap();
        for cut in [0, 8, 9, 20, encoded.len() - 1] {
            assert!(OffsetMap::decode(&encoded[..cut]).is_none(), "cut at {cut}");
        }
        let mut swapped = encoded.clone();
        let n = swapped.len();
        // The last point's original offset far past the code.
        swapped[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(OffsetMap::decode(&swapped).is_none());
    }
}
