//! `fd_readdir`, answered as `wasmtime-wasi` 48's preview1 answers it, at
//! the cost of one `lstat` per entry it returns instead of two per entry
//! in the directory.
//!
//! `wasmtime-wasi` 48 answers every `fd_readdir` by reading the whole
//! directory again and taking two `statx` of *every* entry (one for its
//! type, one for the hash that becomes its `d_ino`), including the entries
//! before the cookie and those that do not fit in the buffer. wasi-libc's
//! `readdir` asks for 4 KiB at a time, so listing a directory of `n`
//! entries cost about `n²/60` `statx` (18 000 for 1000 entries, 3× what
//! `wasmtime run` 36 took: its `wasi-common` read lazily). Here the
//! directory is read once per call as before (names and order from the same
//! `getdents`), and only the entries whose bytes reach the guest's buffer
//! are looked at, once each.
//!
//! Every byte the guest sees is the one `wasmtime-wasi` writes: the same
//! entries in the same order, `d_next` cookies counted the same way
//! (`.` and `..` first), `d_ino` the same hash of the entry's device and
//! inode (`std`'s `DefaultHasher`, as `wasmtime-wasi` computes it with the
//! same compiler), `d_type` from the same `lstat`, names and records cut
//! where the buffer ends, written piece by piece with the same checks (so
//! a buffer out of bounds fails at the same piece, with the same error).
//! Whenever anything fails here (an entry removed between `getdents` and
//! its `lstat`, a name that is not UTF-8, a descriptor that is not a
//! directory), nothing has been written yet and the call goes to the
//! context, which answers it as it always did, errors included. What can
//! differ is only *which* race the guest loses: `wasmtime-wasi` fails when
//! any entry of the directory vanishes between its `getdents` and its
//! `statx`, this only when an entry it returns does.
//!
//! The context keeps its fd table private; the directory behind `fd` is
//! found in its resource table by identity: the hash `fd_filestat_get`
//! reports (the same the listing's `.` carries) against each open
//! directory's. Two descriptors of one directory list the same entries, so
//! either does. Only on Linux; elsewhere every call goes to the context.

use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::types;
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1 as _;
use wiggle::{GuestMemory, GuestPtr};

/// `fd_readdir` on `ctx`'s descriptor `fd`, as `ctx.fd_readdir` answers it.
pub(crate) async fn fd_readdir(
    ctx: &mut WasiP1Ctx,
    memory: &mut GuestMemory<'_>,
    fd: types::Fd,
    buf: GuestPtr<u8>,
    buf_len: types::Size,
    cookie: types::Dircookie,
) -> Result<types::Size, types::Error> {
    #[cfg(target_os = "linux")]
    if let Some(listing) = linux::list(ctx, memory, fd, buf_len, cookie).await {
        return listing.write(memory, buf, buf_len);
    }
    ctx.fd_readdir(memory, fd, buf, buf_len, cookie).await
}

#[cfg(target_os = "linux")]
pub(crate) use linux::{find_dir, identity_hash};

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use rustix::fs::{AtFlags, Dir, Mode, OFlags, StatxFlags};
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt as _;
    use std::sync::{Arc, Weak};

    /// Most resource-table entries scanned for the directory: past this
    /// many open resources the call goes to the context.
    const MAX_SCAN: usize = 1024;

    /// Size of a `dirent` record in the guest.
    const DIRENT_SIZE: u32 = 24;

    /// What one `fd_readdir` writes: the records from the cookie on, up to
    /// the first that the buffer cuts or ends at.
    pub(super) struct Listing {
        records: Vec<([u8; DIRENT_SIZE as usize], Vec<u8>)>,
    }

    /// One directory entry as `getdents` gave it.
    struct Entry {
        name: Vec<u8>,
    }

    /// The listing `ctx.fd_readdir(fd, _, buf_len, cookie)` writes, or
    /// `None` if the context must answer (not a directory here, or
    /// anything failed).
    pub(super) async fn list(
        ctx: &mut WasiP1Ctx,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
        buf_len: types::Size,
        cookie: types::Dircookie,
    ) -> Option<Listing> {
        let (dir, dir_ino) = find_dir(ctx, memory, fd).await?;
        let dir = dir.dir;
        let cookie = usize::try_from(cookie).ok()?;
        let entries = read_entries(&dir)?;
        // `wasmtime-wasi` refuses the whole listing over any name that is
        // not UTF-8, wherever it is: the context gives that error.
        if entries
            .iter()
            .any(|e| std::str::from_utf8(&e.name).is_err())
        {
            return None;
        }
        let head = [(1u64, &b"."[..]), (2, &b".."[..])];
        let all = head
            .into_iter()
            .map(|(next, name)| (next, name, None))
            .chain(
                entries
                    .iter()
                    .zip(3u64..)
                    .map(|(e, next)| (next, &e.name[..], Some(&e.name[..]))),
            );
        let mut records = Vec::new();
        let mut cap = buf_len;
        for (d_next, name, entry) in all.skip(cookie) {
            // `wasmtime-wasi` writes (part of) the first record even into
            // an empty buffer, and stops once the buffer is full.
            if cap == 0 && !records.is_empty() {
                break;
            }
            let (d_ino, d_type) = match entry {
                None => (dir_ino, types::Filetype::Directory),
                Some(entry) => lstat(&dir, entry)?,
            };
            let d_namlen = u32::try_from(name.len()).ok()?;
            let mut record = [0u8; DIRENT_SIZE as usize];
            record[0..8].copy_from_slice(&d_next.to_le_bytes());
            record[8..16].copy_from_slice(&d_ino.to_le_bytes());
            record[16..20].copy_from_slice(&d_namlen.to_le_bytes());
            record[20] = d_type as u8;
            cap = cap.saturating_sub(DIRENT_SIZE);
            let kept = name.len().min(usize::try_from(cap).unwrap_or(usize::MAX));
            cap -= kept as u32;
            records.push((record, name[..kept].to_vec()));
        }
        Some(Listing { records })
    }

    impl Listing {
        /// Writes the records as `wasmtime-wasi` does: each record and each
        /// name in turn, cut at the end of the buffer, the number of bytes
        /// written returned.
        pub(super) fn write(
            &self,
            memory: &mut GuestMemory<'_>,
            mut buf: GuestPtr<u8>,
            buf_len: types::Size,
        ) -> Result<types::Size, types::Error> {
            let mut cap = buf_len;
            for (record, name) in &self.records {
                let len = cap.min(DIRENT_SIZE);
                cap -= len;
                buf = write_bytes(memory, buf, &record[..len as usize])?;
                if cap == 0 {
                    return Ok(buf_len);
                }
                // `list` cut the name to what is left.
                cap -= name.len() as u32;
                buf = write_bytes(memory, buf, name)?;
                if cap == 0 {
                    return Ok(buf_len);
                }
            }
            Ok(buf_len - cap)
        }
    }

    /// As `wasmtime-wasi`'s own `write_bytes`: the whole piece checked, then
    /// copied, and the pointer moved past it.
    fn write_bytes(
        memory: &mut GuestMemory<'_>,
        ptr: GuestPtr<u8>,
        bytes: &[u8],
    ) -> Result<GuestPtr<u8>, types::Error> {
        let len = u32::try_from(bytes.len())?;
        memory.copy_from_slice(bytes, ptr.as_array(len))?;
        Ok(ptr.add(len)?)
    }

    /// The host directory behind `fd` and the `d_ino` of its `.`, if `fd`
    /// is a directory found in the context's resource table.
    pub(crate) async fn find_dir(
        ctx: &mut WasiP1Ctx,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
    ) -> Option<(wasmtime_wasi::filesystem::Dir, u64)> {
        use wasmtime_wasi::WasiView as _;
        use wasmtime_wasi::filesystem::Descriptor;
        // Its `ino` is the hash `fd_readdir` gives `.` and `..`.
        let stat = ctx.fd_filestat_get(memory, fd).await.ok()?;
        if stat.filetype != types::Filetype::Directory {
            return None;
        }
        let mut known = IDENTITIES.lock();
        // Forget the directories closed since.
        known.retain(|(dir, _)| dir.strong_count() > 0);
        // The table does not tell which entry is `fd`'s, only which are this
        // directory: several may be (a directory preopened twice, or opened
        // again through a path), each with permissions of its own (what
        // `path_open` through it may do; the listing and stats are the same
        // through any). Any of them serves only if all agree on those; else
        // the context answers.
        let mut found: Option<wasmtime_wasi::filesystem::Dir> = None;
        for (i, entry) in ctx.ctx().table.iter_mut().enumerate() {
            if i >= MAX_SCAN {
                return None;
            }
            let entry = &*entry as &dyn std::any::Any;
            if let Some(Descriptor::Dir(dir)) = entry.downcast_ref::<Descriptor>()
                && identity(&mut known, &dir.dir)? == stat.ino
            {
                match &found {
                    None => found = Some(dir.clone()),
                    Some(first) if first.perms == dir.perms => {}
                    Some(_) => return None,
                }
            }
        }
        found.map(|dir| (dir, stat.ino))
    }

    /// The identity hash of every open directory looked at, so that each is
    /// `fstat`ed once, not at every listing of any directory. A `Weak`
    /// keeps its allocation, so an address here is never another
    /// directory's while its entry lives.
    static IDENTITIES: parking_lot::Mutex<Vec<(Weak<std::fs::File>, u64)>> =
        parking_lot::Mutex::new(Vec::new());

    /// `dir`'s identity hash, from `known` or from an `fstat` (then kept).
    fn identity(
        known: &mut Vec<(Weak<std::fs::File>, u64)>,
        dir: &Arc<std::fs::File>,
    ) -> Option<u64> {
        if let Some((_, hash)) = known
            .iter()
            .find(|(d, _)| std::ptr::eq(d.as_ptr(), Arc::as_ptr(dir)))
        {
            return Some(*hash);
        }
        let meta = dir.metadata().ok()?;
        let hash = identity_hash(meta.dev(), meta.ino());
        // As many as the table scan looks at, at most.
        if known.len() < MAX_SCAN {
            known.push((Arc::downgrade(dir), hash));
        }
        Some(hash)
    }

    /// `wasmtime-wasi`'s `d_ino` (the low half of its "metadata hash"): the
    /// device and inode pair hashed with `std`'s `DefaultHasher`.
    pub(crate) fn identity_hash(dev: u64, ino: u64) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (dev, ino).hash(&mut hasher);
        hasher.finish()
    }

    /// The entries of `dir` but `.` and `..`, in `getdents` order, read
    /// through a descriptor of its own as `wasmtime-wasi` reads them.
    fn read_entries(dir: &std::fs::File) -> Option<Vec<Entry>> {
        let fd = rustix::fs::openat(
            dir,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let mut stream = Dir::read_from(&fd).ok()?;
        let mut entries = Vec::new();
        while let Some(entry) = stream.read() {
            let name = entry.ok()?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                entries.push(Entry { name });
            }
        }
        Some(entries)
    }

    /// `d_ino` and `d_type` of `name` in `dir`, from one `lstat` (what
    /// `wasmtime-wasi` takes two of).
    fn lstat(dir: &std::fs::File, name: &[u8]) -> Option<(u64, types::Filetype)> {
        let name = std::ffi::CString::new(name).ok()?;
        let (dev, ino, mode) = match rustix::fs::statx(
            dir,
            &name,
            AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::BASIC_STATS | StatxFlags::BTIME,
        ) {
            Ok(st) => (
                rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
                st.stx_ino,
                u32::from(st.stx_mode),
            ),
            // Kernels (or seccomp policies) without `statx`, as
            // `wasmtime-wasi` falls back.
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                let st = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
                (st.st_dev, st.st_ino, st.st_mode)
            }
            Err(_) => return None,
        };
        Some((identity_hash(dev, ino), filetype(mode)))
    }

    /// The preview1 file type `wasmtime-wasi` 48 reports for `mode` on Unix
    /// (FIFOs and sockets as unknown).
    fn filetype(mode: u32) -> types::Filetype {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => types::Filetype::Directory,
            libc::S_IFLNK => types::Filetype::SymbolicLink,
            libc::S_IFREG => types::Filetype::RegularFile,
            libc::S_IFBLK => types::Filetype::BlockDevice,
            libc::S_IFCHR => types::Filetype::CharacterDevice,
            _ => types::Filetype::Unknown,
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

    const MEMORY: usize = 64 * 1024;

    /// A directory with a bit of everything: files with names of many
    /// lengths, a subdirectory, a symlink (dangling), a FIFO.
    fn tree(name: &str, files: usize) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wth-readdir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for i in 0..files {
            std::fs::write(dir.join("f".repeat(1 + i % 37) + &i.to_string()), b"x").unwrap();
        }
        std::os::unix::fs::symlink("nowhere", dir.join("link")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            dir.join("fifo").as_path(),
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .unwrap();
        dir
    }

    fn ctx(dir: &std::path::Path) -> WasiP1Ctx {
        WasiCtxBuilder::new()
            .allow_blocking_current_thread(true)
            .preopened_dir(dir, "/d", FsPerms::ReadWrite)
            .unwrap()
            .build_p1()
    }

    /// Runs a future that never waits (blocking is allowed on this thread).
    fn now<F: std::future::Future>(future: F) -> F::Output {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(future).poll(&mut cx) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("the call waited"),
        }
    }

    /// Whether `fd_readdir` on `fd` is answered here (not by the context).
    fn answered_here(ctx: &mut WasiP1Ctx, fd: u32) -> bool {
        let mut bytes = vec![0u8; 16];
        let memory = &mut GuestMemory::Unshared(&mut bytes);
        now(linux::list(ctx, memory, fd.into(), 4096, 0)).is_some()
    }

    type Outcome = (Vec<u8>, Result<u32, String>);

    fn outcome(result: Result<u32, types::Error>, bytes: Vec<u8>) -> Outcome {
        let result = result.map_err(|e| match e.downcast() {
            Ok(errno) => format!("errno {errno:?}"),
            Err(trap) => format!("trap {trap}"),
        });
        (bytes, result)
    }

    /// What `fd_readdir(fd, buf, buf_len, cookie)` leaves in memory and
    /// returns, answered here and by the context itself.
    fn both(
        ours: &mut WasiP1Ctx,
        theirs: &mut WasiP1Ctx,
        fd: u32,
        buf: u32,
        buf_len: u32,
        cookie: u64,
    ) -> (Outcome, Outcome) {
        let mut a = vec![0xAAu8; MEMORY];
        let mut b = vec![0xAAu8; MEMORY];
        let ra = now(fd_readdir(
            ours,
            &mut GuestMemory::Unshared(&mut a),
            fd.into(),
            GuestPtr::new(buf),
            buf_len,
            cookie,
        ));
        let rb = now(theirs.fd_readdir(
            &mut GuestMemory::Unshared(&mut b),
            fd.into(),
            GuestPtr::new(buf),
            buf_len,
            cookie,
        ));
        (outcome(ra, a), outcome(rb, b))
    }

    /// Every cookie with buffers cutting records and names everywhere,
    /// extreme lengths and pointers: byte for byte what the context writes
    /// and returns.
    #[test]
    fn listings_are_the_contexts_byte_for_byte() {
        let dir = tree("exact", 60);
        let (mut ours, mut theirs) = (ctx(&dir), ctx(&dir));
        let entries = 2 + 60 + 3;
        assert!(
            answered_here(&mut ours, 3),
            "the listing falls back to the context"
        );
        let mut lens: Vec<u32> = (0..80).collect();
        lens.extend([100, 1000, 4096, 20_000, MEMORY as u32, u32::MAX]);
        for cookie in (0..=entries + 2).chain([u64::MAX, 1 << 40]) {
            for &len in &lens {
                let (a, b) = both(&mut ours, &mut theirs, 3, 0, len, cookie);
                assert_eq!(a, b, "cookie {cookie} buf_len {len}");
            }
        }
        // Out of bounds, wrapping, ending just past memory, on a non-directory
        // and on a closed descriptor.
        for (fd, buf, len) in [
            (3, MEMORY as u32, 1),
            (3, MEMORY as u32 - 10, 100),
            (3, u32::MAX, 2),
            (3, u32::MAX - 5, u32::MAX),
            (3, MEMORY as u32 + 1, 0),
            (0, 0, 100),
            (1, 0, 100),
            (9, 0, 100),
        ] {
            let (a, b) = both(&mut ours, &mut theirs, fd, buf, len, 0);
            assert_eq!(a, b, "fd {fd} buf {buf} buf_len {len}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Walking a directory with wasi-libc's loop (cookie = the last
    /// `d_next` read) sees every entry once, with the types `lstat` gives,
    /// and sees a change made between two calls as the context does.
    #[test]
    fn a_walk_sees_every_entry_and_changes_between_calls() {
        let dir = tree("walk", 200);
        let (mut ours, mut theirs) = (ctx(&dir), ctx(&dir));
        let mut seen = Vec::new();
        let mut cookie = 0;
        loop {
            let (a, b) = both(&mut ours, &mut theirs, 3, 0, 512, cookie);
            assert_eq!(a, b, "cookie {cookie}");
            let (bytes, Ok(used)) = a else {
                panic!("{a:?}")
            };
            let mut at = 0;
            let mut last = None;
            while at + 24 <= used as usize {
                let next = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
                let namlen = u32::from_le_bytes(bytes[at + 16..at + 20].try_into().unwrap());
                let end = at + 24 + namlen as usize;
                if end > used as usize {
                    break;
                }
                seen.push((
                    String::from_utf8(bytes[at + 24..end].to_vec()).unwrap(),
                    bytes[at + 20],
                ));
                last = Some(next);
                at = end;
            }
            if used < 512 {
                break;
            }
            cookie = last.expect("a 512-byte buffer holds a record");
            if cookie == 40 {
                // The directory changes between two calls.
                std::fs::write(dir.join("late"), b"").unwrap();
                std::fs::remove_file(dir.join("f1")).unwrap();
            }
        }
        let ty = |name: &str| seen.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
        assert_eq!(ty("."), Some(types::Filetype::Directory as u8));
        assert_eq!(ty("sub"), Some(types::Filetype::Directory as u8));
        assert_eq!(ty("link"), Some(types::Filetype::SymbolicLink as u8));
        assert_eq!(ty("fifo"), Some(types::Filetype::Unknown as u8));
        assert_eq!(ty("f0"), Some(types::Filetype::RegularFile as u8));
        assert!(seen.len() > 200, "{} entries", seen.len());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One host directory preopened twice with different permissions: which
    /// descriptor is which the resource table does not tell, so neither is
    /// taken for the other (the context answers both); with the same
    /// permissions either serves.
    #[test]
    fn a_directory_preopened_twice_with_different_permissions_is_not_guessed() {
        let dir = tree("twice", 3);
        let find = |ctx: &mut WasiP1Ctx, fd: u32| {
            let mut bytes = vec![0u8; 16];
            let memory = &mut GuestMemory::Unshared(&mut bytes);
            now(find_dir(ctx, memory, fd.into())).map(|(dir, _)| dir.perms)
        };
        let mut mixed = WasiCtxBuilder::new()
            .allow_blocking_current_thread(true)
            .preopened_dir(&dir, "/ro", FsPerms::ReadOnly)
            .unwrap()
            .preopened_dir(&dir, "/rw", FsPerms::ReadWrite)
            .unwrap()
            .build_p1();
        assert_eq!(find(&mut mixed, 3), None);
        assert_eq!(find(&mut mixed, 4), None);
        let mut same = WasiCtxBuilder::new()
            .allow_blocking_current_thread(true)
            .preopened_dir(&dir, "/a", FsPerms::ReadOnly)
            .unwrap()
            .preopened_dir(&dir, "/b", FsPerms::ReadOnly)
            .unwrap()
            .build_p1();
        assert_eq!(find(&mut same, 4), Some(FsPerms::ReadOnly));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A directory opened by the guest (not a preopen) and a second
    /// descriptor of the same directory list the same way; a name that is
    /// not UTF-8 gives the context's error.
    #[test]
    fn opened_directories_and_bad_names() {
        let dir = tree("opened", 5);
        std::fs::create_dir_all(dir.join("sub/inner")).unwrap();
        let (mut ours, mut theirs) = (ctx(&dir), ctx(&dir));
        let open = |ctx: &mut WasiP1Ctx, path: &str| -> u32 {
            let mut mem = vec![0u8; 64];
            mem[..path.len()].copy_from_slice(path.as_bytes());
            ctx.set_hostcall_fuel(usize::MAX);
            let fd = now(ctx.path_open(
                &mut GuestMemory::Unshared(&mut mem),
                3.into(),
                types::Lookupflags::empty(),
                GuestPtr::new((0, path.len() as u32)),
                types::Oflags::DIRECTORY,
                types::Rights::FD_READDIR | types::Rights::FD_FILESTAT_GET,
                types::Rights::empty(),
                types::Fdflags::empty(),
            ))
            .unwrap();
            fd.into()
        };
        for path in ["sub", "sub/inner", "."] {
            let (fa, fb) = (open(&mut ours, path), open(&mut theirs, path));
            assert_eq!(fa, fb);
            assert!(answered_here(&mut ours, fa), "{path}");
            for len in [0, 30, 4096] {
                let (a, b) = both(&mut ours, &mut theirs, fa, 8, len, 0);
                assert_eq!(a, b, "{path} buf_len {len}");
            }
        }
        // A closed descriptor's number, reused for another directory, lists
        // that one (the identities kept of closed directories are dropped).
        for path in ["sub", "sub/inner", "sub"] {
            let (fa, fb) = (open(&mut ours, path), open(&mut theirs, path));
            assert!(answered_here(&mut ours, fa), "{path}");
            let (a, b) = both(&mut ours, &mut theirs, fa, 0, 4096, 0);
            assert_eq!(a, b, "{path} reopened");
            let mut none = [0u8; 0];
            for (ctx, fd) in [(&mut ours, fa), (&mut theirs, fb)] {
                now(ctx.fd_close(&mut GuestMemory::Unshared(&mut none), fd.into())).unwrap();
            }
        }
        use std::os::unix::ffi::OsStrExt as _;
        std::fs::write(dir.join(std::ffi::OsStr::from_bytes(b"bad\xff")), b"").unwrap();
        let (a, b) = both(&mut ours, &mut theirs, 3, 0, 4096, 0);
        assert_eq!(a, b);
        assert!(a.1.is_err(), "{:?}", a.1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
