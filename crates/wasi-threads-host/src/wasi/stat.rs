//! `path_filestat_get` and `fd_filestat_get`, answered as `wasmtime-wasi`
//! 48's preview1 answers them, with one path resolution (one `statx`)
//! instead of two.
//!
//! `wasmtime-wasi` 48 resolves the path twice in the sandbox (once for the
//! stat, once more for the "metadata hash" that becomes the `ino`): six
//! syscalls where `wasmtime run` 36 made three, and the call cost 1.8× as
//! much. Here one `stat` of the path, resolved in the directory's sandbox by
//! the same `cap-primitives` code, gives every field: the type, link count,
//! size and times as `wasmtime-wasi` converts them (`ctim` is its
//! *creation* time, zero where the file system has none), `dev` 1, and
//! `ino` the same hash of the device and inode (see
//! [`super::readdir::identity_hash`]).
//!
//! `fd_filestat_get` is answered likewise, with one `statx` of the file, for
//! the files [`super::files`] adopted and the directories it found.
//!
//! The calls this answers are those whose answer is certain: a directory
//! found behind the descriptor, a path no longer than `PATH_MAX`, and
//! either a stat that succeeded with times it can represent or one of the
//! plain errors a walk meets (`ENOENT`, `ENOTDIR`, `ELOOP`, `EACCES`, which
//! `wasmtime-wasi` maps one to one). Everything else (a sandbox escape, a
//! time before 1970, an unusual error) goes to the context, which answers
//! it as it always did.

use rustix::fs::FileType;
use std::time::SystemTime;
use wasmtime_wasi::p1::types;

/// `path_filestat_get` of `path` in the directory `dir`, as the context
/// would answer it, or `None` if the context must answer.
pub(crate) fn path_filestat_get(
    dir: &std::fs::File,
    path: &str,
    follow: bool,
) -> Option<Result<types::Filestat, types::Error>> {
    use cap_primitives::fs::FollowSymlinks;
    let follow = if follow {
        FollowSymlinks::Yes
    } else {
        FollowSymlinks::No
    };
    let meta = match cap_primitives::fs::stat(dir, std::path::Path::new(path), follow) {
        Ok(meta) => meta,
        Err(e) => {
            let errno = match rustix::io::Errno::from_io_error(&e)? {
                rustix::io::Errno::NOENT => types::Errno::Noent,
                rustix::io::Errno::NOTDIR => types::Errno::Notdir,
                rustix::io::Errno::LOOP => types::Errno::Loop,
                rustix::io::Errno::ACCESS => types::Errno::Acces,
                _ => return None,
            };
            return Some(Err(errno.into()));
        }
    };
    // A path names no file without links: the one found was unlinked or
    // replaced (a rename over it) while this looked, which a call under
    // the context's lock cannot see. The context answers, after that.
    if cap_primitives::fs::MetadataExt::nlink(&meta) == 0 {
        return None;
    }
    Some(Ok(filestat(&meta)?))
}

/// `fd_filestat_get` of the open file or directory `file`, as the context
/// would answer it (one `statx` where it takes two: the stat and the
/// "metadata hash"), or `None` if the context must answer.
pub(crate) fn fd_filestat_get(file: &std::fs::File) -> Option<types::Filestat> {
    filestat(&cap_primitives::fs::Metadata::from_file(file).ok()?)
}

/// What `wasmtime-wasi` 48 makes of `meta`, or `None` where that is not
/// plain (a socket, a time it cannot convert).
fn filestat(meta: &cap_primitives::fs::Metadata) -> Option<types::Filestat> {
    use cap_primitives::fs::MetadataExt as _;
    let filetype = match FileType::from_raw_mode(meta.mode()) {
        FileType::RegularFile => types::Filetype::RegularFile,
        FileType::Directory => types::Filetype::Directory,
        FileType::Symlink => types::Filetype::SymbolicLink,
        FileType::BlockDevice => types::Filetype::BlockDevice,
        FileType::CharacterDevice => types::Filetype::CharacterDevice,
        // `wasmtime-wasi` has no code for a FIFO; a socket is an error there.
        FileType::Fifo | FileType::Unknown => types::Filetype::Unknown,
        FileType::Socket => return None,
    };
    Some(types::Filestat {
        dev: 1,
        ino: super::readdir::identity_hash(meta.dev(), meta.ino()),
        filetype,
        nlink: meta.nlink(),
        size: meta.len(),
        atim: timestamp(meta.accessed().ok().map(|t| t.into_std()))?,
        mtim: timestamp(meta.modified().ok().map(|t| t.into_std()))?,
        ctim: timestamp(meta.created().ok().map(|t| t.into_std()))?,
    })
}

/// A time as `wasmtime-wasi` gives it: nanoseconds since 1970, zero if the
/// file system has none; `None` where its conversion is not plain (before
/// 1970, or past what a `u64` of nanoseconds holds).
fn timestamp(time: Option<SystemTime>) -> Option<u64> {
    let Some(time) = time else { return Some(0) };
    let since = time.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_secs()).ok()?;
    since
        .as_secs()
        .checked_mul(1_000_000_000)?
        .checked_add(u64::from(since.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use wasmtime_wasi::p1::types;
    use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1 as _;
    use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
    use wiggle::{GuestMemory, GuestPtr};

    /// Every answer given here is the context's, field for field; the
    /// calls not answered here are ones the context answers itself.
    #[test]
    fn answers_what_the_context_answers() {
        let root = std::env::temp_dir().join(format!("wasi-threads-stat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let inside = root.join("inside");
        std::fs::create_dir_all(inside.join("sub")).unwrap();
        std::fs::write(inside.join("file"), b"twelve bytes").unwrap();
        std::fs::write(root.join("outside"), b"").unwrap();
        std::fs::hard_link(inside.join("file"), inside.join("sub/hard")).unwrap();
        std::os::unix::fs::symlink("file", inside.join("link")).unwrap();
        std::os::unix::fs::symlink("nowhere", inside.join("dangling")).unwrap();
        std::os::unix::fs::symlink("loop", inside.join("loop")).unwrap();
        std::os::unix::fs::symlink(root.join("outside"), inside.join("abs")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            inside.join("fifo").as_path(),
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let mut ctx = WasiCtxBuilder::new()
            .preopened_dir(&inside, "/d", FsPerms::ReadWrite)
            .unwrap()
            .allow_blocking_current_thread(true)
            .build_p1();
        let dir = std::fs::File::open(&inside).unwrap();
        let paths = [
            "file",
            "sub",
            "sub/hard",
            ".",
            "",
            "link",
            "dangling",
            "loop",
            "fifo",
            "missing",
            "file/x",
            "sub/../file",
            "../outside",
            "../inside/file",
            "abs",
            "/etc/passwd",
            "sub/",
            "file/",
        ];
        let mut answered = 0;
        for path in paths {
            for follow in [true, false] {
                let mut bytes = path.as_bytes().to_vec();
                bytes.resize(64, 0);
                let memory = &mut GuestMemory::Unshared(&mut bytes);
                let ptr = GuestPtr::<str>::new((0, path.len() as u32));
                let flags = if follow {
                    types::Lookupflags::SYMLINK_FOLLOW
                } else {
                    types::Lookupflags::empty()
                };
                ctx.set_hostcall_fuel(1 << 20);
                let theirs = wasmtime_wasi::runtime::in_tokio(ctx.path_filestat_get(
                    memory,
                    3.into(),
                    flags,
                    ptr,
                ));
                let Some(ours) = super::path_filestat_get(&dir, path, follow) else {
                    continue;
                };
                answered += 1;
                let show = |r: Result<types::Filestat, types::Error>| match r {
                    Ok(stat) => format!("{stat:?}"),
                    Err(e) => match e.downcast() {
                        Ok(errno) => format!("errno {errno:?}"),
                        Err(trap) => format!("trap {trap}"),
                    },
                };
                assert_eq!(show(ours), show(theirs), "{path:?}, follow {follow}");
            }
        }
        // The plain cases are all answered here.
        assert!(answered >= 24, "{answered}");
        // fd_filestat_get of the preopen (a directory) and of an opened file.
        let mut bytes = b"file".to_vec();
        let memory = &mut GuestMemory::Unshared(&mut bytes);
        ctx.set_hostcall_fuel(1 << 20);
        let fd = wasmtime_wasi::runtime::in_tokio(ctx.path_open(
            memory,
            3.into(),
            types::Lookupflags::empty(),
            GuestPtr::<str>::new((0, 4)),
            types::Oflags::empty(),
            types::Rights::FD_READ,
            types::Rights::empty(),
            types::Fdflags::empty(),
        ))
        .unwrap();
        let file = std::fs::File::open(inside.join("file")).unwrap();
        for (fd, host) in [(3.into(), &dir), (fd, &file)] {
            ctx.set_hostcall_fuel(1 << 20);
            let theirs = wasmtime_wasi::runtime::in_tokio(ctx.fd_filestat_get(memory, fd));
            let ours = super::fd_filestat_get(host).unwrap();
            assert_eq!(format!("{ours:?}"), format!("{:?}", theirs.unwrap()));
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
