//! Lists every file under `src/rewrite/` for the compiled-module cache: the
//! cache key covers each of them, byte for byte (see
//! `src/rewrite/cache.rs`), so that a build whose rewrite differs in any way
//! never loads what another build cached. The list is made here, from the
//! directory itself, rather than kept by hand.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.join("src").join("rewrite");
    // A directory: cargo reruns this script when anything under it changes.
    println!("cargo:rerun-if-changed=src/rewrite");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut out = String::from(
        "/// Every file under `src/rewrite/`: its path there and its bytes.\n\
         pub(crate) const REWRITE_SOURCES: &[(&str, &[u8])] = &[\n",
    );
    for file in &files {
        let relative = file
            .strip_prefix(&root)
            .expect("under src/rewrite")
            .to_str()
            .expect("UTF-8 file names under src/rewrite")
            .replace('\\', "/");
        // Relative to the crate as it is compiled, not as this script saw it:
        // a checkout moved (or a second one sharing the target directory)
        // must not read another's files.
        out.push_str(&format!(
            "    ({relative:?}, include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {:?}))),\n",
            format!("/src/rewrite/{relative}")
        ));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"))
        .join("rewrite_sources.rs");
    std::fs::write(dest, out).expect("write rewrite_sources.rs");
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/rewrite") {
        let path = entry.expect("read src/rewrite").path();
        // Editors' hidden files (swap files, lock links) are not the rewrite.
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}
