//! The open of a FIFO, waited for without the shared context.
//!
//! Opening a FIFO read-only blocks until a writer opens it, and write-only
//! until a reader does. `wasmtime-wasi`'s `path_open` runs the open inside
//! the call on the shared context (its fd table is private, so the open
//! cannot be moved out of it), and a guest thread opening a FIFO nobody
//! else opened held the context, and with it every other thread's WASI
//! calls, for as long, in a syscall no stop signal reaches.
//!
//! So `path_open` first asks what the path names (one `statx` relative to
//! the directory: a hint, see [`wait_for_other_end`]), and only for a FIFO
//! that the open would block on does it wait, without the context, for the
//! other end:
//!
//! - the FIFO is pinned by an `O_PATH` descriptor, resolved in the sandbox
//!   as `wasmtime-wasi` resolves it (`cap-primitives`), so that what is
//!   waited for is the file the path named, whatever renames follow;
//! - a helper thread does the blocking open of it (through
//!   `/proc/self/fd`), while the guest thread waits for the helper or for
//!   the program's stop;
//! - once the other end is there, two descriptors are held while the
//!   context opens the FIFO as it always did, and closed right after: the
//!   helper's own, of the guest's direction, so that the FIFO has an end of
//!   that direction from the moment the other party's open returns (without
//!   it, a reader would see end of file, or a writer `EPIPE`, in the moment
//!   before the context's open), and one of the opposite direction, opened
//!   without blocking, so that the context's open finds a partner even if
//!   the other party has closed again meanwhile. What the guest then sees is
//!   what it would have seen had its own open returned when the other end
//!   came: the other end's data, its end of file, `EPIPE`;
//! - on a stop, the helper's open is ended the same way (the opposite end
//!   opened without blocking) and the helper joined, so no thread outlives
//!   the program. Only where that opposite open is refused (a FIFO this
//!   process may read but not write, say) is the helper left to finish
//!   when a partner comes, with a warning.
//!
//! A guest that renames FIFOs while another of its threads opens one can
//! still make the context's own open block (the path then names another
//! FIFO); only its own threads wait for that, until the program stops.

use crate::program::stop::{StopSignal, Stopped};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi::p1::types;

/// How long a stopped wait keeps trying to end the helper's open (it needs
/// the helper to be inside the open first, which takes microseconds).
const RELEASE_ATTEMPTS: u32 = 200;

/// The end of a FIFO a `path_open` asks for, if the open can block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Read-only: waits for a writer.
    Read,
    /// Write-only: waits for a reader.
    Write,
}

impl End {
    /// The end `wasmtime-wasi`'s `path_open` opens with these arguments, if
    /// on a FIFO it would block: read-only or write-only, and not refused
    /// before or without the open.
    pub(crate) fn of(
        oflags: types::Oflags,
        base: types::Rights,
        fdflags: types::Fdflags,
    ) -> Option<Self> {
        // A FIFO is not a directory (refused without waiting); an exclusive
        // create fails on it; the sync flags are unsupported.
        if oflags.contains(types::Oflags::DIRECTORY)
            || oflags.contains(types::Oflags::CREAT | types::Oflags::EXCL)
            || fdflags
                .intersects(types::Fdflags::SYNC | types::Fdflags::DSYNC | types::Fdflags::RSYNC)
        {
            return None;
        }
        // As `wasmtime-wasi` 48 chooses the access mode.
        let write = oflags.intersects(types::Oflags::CREAT | types::Oflags::TRUNC)
            || base.contains(types::Rights::FD_WRITE);
        let read = base.contains(types::Rights::FD_READ) || !write;
        match (read, write) {
            (true, false) => Some(End::Read),
            (false, true) => Some(End::Write),
            // Read-write opens of a FIFO never block.
            _ => None,
        }
    }

    fn flags(self) -> OFlags {
        match self {
            End::Read => OFlags::RDONLY,
            End::Write => OFlags::WRONLY,
        }
    }

    fn opposite(self) -> Self {
        match self {
            End::Read => End::Write,
            End::Write => End::Read,
        }
    }
}

/// The ends of a FIFO held open across the context's open of it (see the
/// module docs); dropped once that open has returned.
pub(crate) struct Held {
    _ours: OwnedFd,
    _partner: Option<OwnedFd>,
}

/// If `path` (relative to the directory `dir`, symlinks followed as
/// `follow` says) names a FIFO, waits until an open of its `end` would not
/// block, and returns the descriptors that keep it so: hold them across the
/// context's open, then drop them. `Ok(None)`: nothing to wait for (not a
/// FIFO, or anything failed: the context's own open then answers, errors
/// included). `Err(Stopped)`: the program stopped first.
///
/// The first look is an unsandboxed `statx` relative to `dir`, a hint
/// only: a path the sandbox resolves resolves to the same file without it,
/// so a path it does not show as a FIFO opens without waiting (or fails)
/// in the context. Only a FIFO is resolved again, in the sandbox.
pub(crate) async fn wait_for_other_end(
    dir: &std::fs::File,
    path: &str,
    follow: bool,
    end: End,
    stop: &StopSignal,
) -> Result<Option<Held>, Stopped> {
    let nofollow = if follow {
        AtFlags::empty()
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    match rustix::fs::statat(dir, path, nofollow) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Fifo => {}
        _ => return Ok(None),
    }
    let Some(pin) = pin(dir, path, follow) else {
        return Ok(None);
    };
    let proc = format!("/proc/self/fd/{}", pin.as_raw_fd());
    let (done, mut opened) = tokio::sync::oneshot::channel();
    let helper = {
        let pin = pin.clone();
        let proc = proc.clone();
        std::thread::Builder::new()
            .name("wasi-threads-fifo".into())
            .spawn(move || {
                let opened = rustix::fs::open(&proc, end.flags() | OFlags::CLOEXEC, Mode::empty());
                // The pin outlives the open of its /proc name.
                drop(pin);
                let _ = done.send(opened);
            })
    };
    let Ok(helper) = helper else {
        return Ok(None);
    };
    match stop.race(&mut opened).await {
        Ok(opened) => {
            let _ = helper.join();
            // The other end is there: keep both ends while the context opens.
            Ok(match opened {
                Ok(Ok(ours)) => Some(Held {
                    _partner: open_nonblocking(&proc, end.opposite()).ok(),
                    _ours: ours,
                }),
                _ => None,
            })
        }
        Err(Stopped) => {
            release(&proc, end, &mut opened, helper);
            Err(Stopped)
        }
    }
}

/// An `O_PATH` descriptor of the FIFO `path` names in the sandbox of
/// `dir`, if it is one.
fn pin(dir: &std::fs::File, path: &str, follow: bool) -> Option<Arc<OwnedFd>> {
    use cap_primitives::fs::{FollowSymlinks, OpenOptions, OpenOptionsExt as _};
    let mut options = OpenOptions::new();
    options
        .read(true)
        ._cap_fs_ext_follow(if follow {
            FollowSymlinks::Yes
        } else {
            FollowSymlinks::No
        })
        .custom_flags((OFlags::PATH | OFlags::CLOEXEC).bits() as i32);
    let pinned = cap_primitives::fs::open(dir, std::path::Path::new(path), &options).ok()?;
    let stat = rustix::fs::fstat(&pinned).ok()?;
    (FileType::from_raw_mode(stat.st_mode) == FileType::Fifo)
        .then(|| Arc::new(OwnedFd::from(pinned)))
}

fn open_nonblocking(proc: &str, end: End) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        proc,
        end.flags() | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Ends the helper's blocked open of `end` by opening the other end
/// without blocking (which fails while the helper is not inside its open
/// yet: tried again), and joins it.
fn release(
    proc: &str,
    end: End,
    opened: &mut tokio::sync::oneshot::Receiver<rustix::io::Result<OwnedFd>>,
    helper: std::thread::JoinHandle<()>,
) {
    let finished = |opened: &mut tokio::sync::oneshot::Receiver<_>| {
        !matches!(
            opened.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        )
    };
    for _ in 0..RELEASE_ATTEMPTS {
        match open_nonblocking(proc, end.opposite()) {
            Ok(_partner) => {
                // With a partner open, the helper's open returns at once.
                for _ in 0..100 {
                    if finished(opened) {
                        let _ = helper.join();
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            // The helper is not inside its open yet.
            Err(rustix::io::Errno::NXIO) if !finished(opened) => {}
            Err(rustix::io::Errno::NXIO) => {
                let _ = helper.join();
                return;
            }
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    log::warn!(
        "a thread's open of a FIFO could not be ended; its helper thread stays until \
         the FIFO's other end is opened"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_opens_of_one_end_wait() {
        use types::{Fdflags as F, Oflags as O, Rights as R};
        let none = F::empty();
        assert_eq!(End::of(O::empty(), R::FD_READ, none), Some(End::Read));
        // No rights at all: read-only, as `wasmtime-wasi` opens it.
        assert_eq!(End::of(O::empty(), R::empty(), none), Some(End::Read));
        assert_eq!(End::of(O::empty(), R::FD_WRITE, none), Some(End::Write));
        assert_eq!(End::of(O::TRUNC, R::empty(), none), Some(End::Write));
        assert_eq!(End::of(O::CREAT, R::empty(), none), Some(End::Write));
        assert_eq!(End::of(O::empty(), R::FD_READ | R::FD_WRITE, none), None);
        assert_eq!(End::of(O::TRUNC, R::FD_READ, none), None);
        assert_eq!(End::of(O::DIRECTORY, R::FD_READ, none), None);
        assert_eq!(End::of(O::CREAT | O::EXCL, R::FD_WRITE, none), None);
        assert_eq!(End::of(O::empty(), R::FD_READ, F::SYNC), None);
        assert_eq!(
            End::of(O::empty(), R::FD_WRITE, F::APPEND),
            Some(End::Write)
        );
    }

    /// A FIFO is waited for only where the sandbox reaches it: not through
    /// `..` out of the directory, an absolute path or an absolute symlink,
    /// and not through a symlink when symlinks are not followed.
    #[test]
    fn only_fifos_inside_the_sandbox_are_pinned() {
        let root = std::env::temp_dir().join(format!("wasi-threads-pin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let inside = root.join("inside");
        std::fs::create_dir_all(inside.join("sub")).unwrap();
        let mkfifo = |p: &std::path::Path| {
            rustix::fs::mkfifoat(rustix::fs::CWD, p, Mode::from_raw_mode(0o600)).unwrap()
        };
        mkfifo(&root.join("outside"));
        mkfifo(&inside.join("fifo"));
        std::fs::write(inside.join("file"), b"").unwrap();
        std::os::unix::fs::symlink("fifo", inside.join("link")).unwrap();
        std::os::unix::fs::symlink(root.join("outside"), inside.join("abs")).unwrap();
        let dir = std::fs::File::open(&inside).unwrap();
        assert!(pin(&dir, "fifo", true).is_some());
        assert!(pin(&dir, "sub/../fifo", true).is_some());
        assert!(pin(&dir, "link", true).is_some());
        assert!(pin(&dir, "link", false).is_none());
        assert!(pin(&dir, "file", true).is_none());
        assert!(pin(&dir, "missing", true).is_none());
        assert!(pin(&dir, "../outside", true).is_none());
        assert!(pin(&dir, root.join("outside").to_str().unwrap(), true).is_none());
        assert!(pin(&dir, "abs", true).is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
