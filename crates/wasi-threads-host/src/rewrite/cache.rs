//! A cache of compiled guest modules, so that a run of a module seen before
//! neither parses, rewrites nor compiles it again.
//!
//! Wasmtime's own cache is keyed by the bytes it compiles, which are the
//! rewritten ones: consulting it would still cost a full rewrite of the
//! module on every run (for a 20 MB program, most of the startup). This
//! cache is keyed by the module the user gave, the rewrite's version and the
//! engine's compatibility hash, and holds what the rewrite and the compiler
//! produced: the serialized `Module` and the [`OffsetMap`].

use super::{GuestModule, OffsetMap, compile_guest};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::{Engine, Module, Result};

/// Bumped whenever the rewrite's output changes for the same input.
const REWRITE_VERSION: u32 = 4;

/// The rewrite's own source, part of every key: a build whose rewrite
/// differs in any way never loads what another build cached, even if
/// nobody bumped [`REWRITE_VERSION`].
const REWRITE_SOURCES: [&[u8]; 5] = [
    include_bytes!("mod.rs"),
    include_bytes!("checks.rs"),
    include_bytes!("offsets.rs"),
    include_bytes!("dwarf.rs"),
    include_bytes!("cache.rs"),
];

/// [`compile_guest`], with what it produces kept in `dir` (created if
/// missing) and reused by later calls for the same module and engine
/// settings.
///
/// `dir` must be writable only by the user running the host, as Wasmtime's
/// own cache directory must: compiled code loaded from it runs as is. A
/// cache entry that cannot be read or written is only logged at `debug`
/// level; the module is then compiled as without a cache.
pub fn compile_guest_cached(engine: &Engine, bytes: &[u8], dir: &Path) -> Result<GuestModule> {
    let key = cache_key(engine, bytes);
    let module_path = dir.join(format!("{key}.cwasm"));
    let map_path = dir.join(format!("{key}.map"));
    if let Some(guest) = load(engine, &module_path, &map_path) {
        log::debug!("module loaded from the cache ({})", module_path.display());
        return Ok(guest);
    }
    // `compile_guest` leaves out DWARF the engine does not read. The key
    // needs no more for it: whether the engine reads DWARF is part of its
    // compatibility hash.
    let guest = compile_guest(engine, bytes)?;
    if let Err(e) = store(&guest, dir, &module_path, &map_path) {
        log::debug!(
            "cannot cache the compiled module in {}: {e:#}",
            dir.display()
        );
    }
    Ok(guest)
}

fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&REWRITE_VERSION.to_le_bytes());
    for source in REWRITE_SOURCES {
        hasher.update(source);
    }
    hasher.update(&engine_hash.finish().to_le_bytes());
    hash_module(&mut hasher, bytes);
    hasher.finalize().to_hex().to_string()
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

fn load(engine: &Engine, module_path: &Path, map_path: &Path) -> Option<GuestModule> {
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
    Some(GuestModule::new(module, Arc::new(map)))
}

fn store(guest: &GuestModule, dir: &Path, module_path: &Path, map_path: &Path) -> Result<()> {
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
        let first = compile_guest_cached(&engine, GUEST, &dir).unwrap();
        let encoded = first.offsets().encode().unwrap();
        let decoded = OffsetMap::decode(&encoded).unwrap();
        assert_eq!(decoded.encode().unwrap(), encoded, "the map round-trips");

        // Replace the cached map by a different valid one: what the next
        // call returns must be the cached entry, not a fresh rewrite.
        let key = cache_key(&engine, GUEST);
        let map_path = dir.join(format!("{key}.map"));
        assert_eq!(std::fs::read(&map_path).unwrap(), encoded);
        std::fs::write(&map_path, OffsetMap::identity().encode().unwrap()).unwrap();
        let second = compile_guest_cached(&engine, GUEST, &dir).unwrap();
        assert!(second.offsets().is_identity(), "loaded from the cache");

        // A damaged entry is ignored: the module is compiled again.
        std::fs::write(&map_path, b"garbage").unwrap();
        let third = compile_guest_cached(&engine, GUEST, &dir).unwrap();
        assert!(!third.offsets().is_identity());
        std::fs::write(dir.join(format!("{key}.cwasm")), b"garbage").unwrap();
        let fourth = compile_guest_cached(&engine, GUEST, &dir).unwrap();
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
            cache_key(&Engine::new(&config).unwrap(), GUEST)
        };
        let plain = key(Disable, false);
        assert_eq!(plain, key(Disable, false));
        assert_ne!(plain, key(Enable, false));
        assert_ne!(plain, key(Disable, true));
        assert_ne!(key(Enable, false), key(Disable, true));
    }

    #[test]
    fn damaged_maps_are_refused() {
        let engine = Engine::new(&crate::engine_config()).unwrap();
        let guest = compile_guest(&engine, GUEST).unwrap();
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
