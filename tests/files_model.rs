//! Model checks, with `loom`, of the protocol by which threads read, write
//! and seek an adopted file without the shared context
//! (`crates/wasi-threads-host/src/wasi/open_file.rs`): every interleaving (up to
//! loom's preemption bound) of the protocol's locks and of the syscalls on
//! the file description, modelled here as the kernel makes them: each one
//! atomic, the offset moved by reads and writes at it.
//!
//! Each check runs a few operations on one descriptor from two threads and
//! asserts what every serial order of them would give: no byte written is
//! lost, none read twice, and a position handed back to the context is the
//! one the file description ends at.
//!
//! Run with
//! `RUSTFLAGS="--cfg wasi_threads_loom" CARGO_TARGET_DIR=target/loom cargo test -p wasi-threads-host --test lifecycle_model --test files_model`
//! (see `tests/lifecycle_model.rs`). Without `--cfg wasi_threads_loom` this file compiles
//! to nothing.

#![cfg(wasi_threads_loom)]

use loom::sync::{Arc, Mutex};
use loom::thread;
use wasi_threads_host::model_check::{At, Description, OpenFile, Whence};

/// The largest offset the model's "file system" takes (a seek past it is
/// refused, as a real one refuses one past its largest file).
const MAX_OFFSET: i64 = 1 << 20;

/// A kernel file description: contents, offset and append flag, each
/// syscall atomic under one lock.
#[derive(Default)]
struct ModelFile {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    data: Vec<u8>,
    offset: u64,
    append: bool,
}

impl Inner {
    fn put(&mut self, at: u64, bytes: &[u8]) {
        let at = at as usize;
        if self.data.len() < at + bytes.len() {
            self.data.resize(at + bytes.len(), 0);
        }
        self.data[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn get(&self, at: u64, len: usize) -> &[u8] {
        let start = (at as usize).min(self.data.len());
        let end = (start + len).min(self.data.len());
        &self.data[start..end]
    }
}

impl ModelFile {
    fn with(data: &[u8]) -> Self {
        let file = ModelFile::default();
        file.inner.lock().unwrap().data = data.to_vec();
        file
    }

    fn contents(&self) -> Vec<u8> {
        self.inner.lock().unwrap().data.clone()
    }

    fn offset(&self) -> u64 {
        self.inner.lock().unwrap().offset
    }
}

impl Description for ModelFile {
    unsafe fn write(&self, ptr: *const u8, len: usize) -> std::io::Result<usize> {
        // SAFETY: the caller's promise: `ptr..ptr+len` is readable.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        let mut f = self.inner.lock().unwrap();
        if f.append {
            f.offset = f.data.len() as u64;
        }
        let at = f.offset;
        f.put(at, bytes);
        f.offset += len as u64;
        Ok(len)
    }

    unsafe fn write_at(&self, ptr: *const u8, len: usize, offset: u64) -> std::io::Result<usize> {
        // SAFETY: as `write`.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        let mut f = self.inner.lock().unwrap();
        // Linux: `pwrite` on an append description appends.
        let at = if f.append {
            f.data.len() as u64
        } else {
            offset
        };
        if at + len as u64 > MAX_OFFSET as u64 {
            // EFBIG
            return Err(std::io::Error::from_raw_os_error(27));
        }
        f.put(at, bytes);
        Ok(len)
    }

    unsafe fn read(&self, ptr: *mut u8, len: usize) -> std::io::Result<usize> {
        let mut f = self.inner.lock().unwrap();
        let got = f.get(f.offset, len).to_vec();
        // SAFETY: the caller's promise: `ptr..ptr+len` is writable, and
        // `got` is no longer than `len`.
        unsafe { std::ptr::copy_nonoverlapping(got.as_ptr(), ptr, got.len()) };
        f.offset += got.len() as u64;
        Ok(got.len())
    }

    unsafe fn read_at(&self, ptr: *mut u8, len: usize, offset: u64) -> std::io::Result<usize> {
        let f = self.inner.lock().unwrap();
        let got = f.get(offset, len);
        // SAFETY: as `read`.
        unsafe { std::ptr::copy_nonoverlapping(got.as_ptr(), ptr, got.len()) };
        Ok(got.len())
    }

    fn seek(&self, offset: i64, whence: Whence) -> std::io::Result<u64> {
        let mut f = self.inner.lock().unwrap();
        let base = match whence {
            Whence::Set => 0,
            Whence::Cur => f.offset as i64,
            Whence::End => f.data.len() as i64,
        };
        match base.checked_add(offset) {
            Some(pos) if (0..=MAX_OFFSET).contains(&pos) => {
                f.offset = pos as u64;
                Ok(pos as u64)
            }
            _ => Err(std::io::Error::from_raw_os_error(22)),
        }
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.inner.lock().unwrap().data.len() as u64)
    }

    fn is_regular(&self) -> bool {
        true
    }

    fn set_append(&self, append: bool) -> std::io::Result<()> {
        self.inner.lock().unwrap().append = append;
        Ok(())
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

fn open(data: &[u8], append: bool) -> (Arc<OpenFile<ModelFile>>, std::sync::Arc<ModelFile>) {
    let file = std::sync::Arc::new(ModelFile::with(data));
    (Arc::new(OpenFile::new(file.clone(), append)), file)
}

/// A write, or `None` if the descriptor is no longer handled here.
fn try_write(open: &OpenFile<ModelFile>, at: At, bytes: &[u8]) -> Option<std::io::Result<usize>> {
    let written = open.write(at, || Ok((bytes.as_ptr(), bytes.len())))?;
    Some(written.map_err(|_| std::io::Error::other("write failed")))
}

fn write(open: &OpenFile<ModelFile>, at: At, bytes: &[u8]) -> usize {
    try_write(open, at, bytes)
        .expect("handled here")
        .expect("written")
}

fn read(open: &OpenFile<ModelFile>, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = open
        .read(|| Ok((buf.as_mut_ptr(), buf.len())))
        .expect("handled here")
        .expect("read");
    buf.truncate(n);
    buf
}

fn seek(open: &OpenFile<ModelFile>, offset: i64, whence: Whence) -> u64 {
    open.seek(offset, whence)
        .expect("handled here")
        .expect("seek")
}

/// What `ftell` does (a seek of 0 from the current position, or from the
/// end) racing writes at the position: no write is lost, and the position
/// the seek returns is one the writes passed through.
#[test]
fn seek_racing_writes_loses_nothing() {
    for whence in [Whence::Cur, Whence::End] {
        model(move || {
            let (open, file) = open(b"", false);
            let writer = {
                let open = open.clone();
                thread::spawn(move || {
                    write(&open, At::Cursor, b"a");
                    write(&open, At::Cursor, b"b");
                })
            };
            let told = seek(&open, 0, whence);
            writer.join().unwrap();
            assert!(told <= 2, "{whence:?} told {told}");
            assert_eq!(file.contents(), b"ab", "{whence:?}: a write was lost");
            assert_eq!(open.tell().unwrap().unwrap(), 2);
        });
    }
}

/// Reads at the position racing a seek of 0 from the current position:
/// each byte is read once, in order.
#[test]
fn seek_racing_reads_repeats_nothing() {
    model(|| {
        let (open, _file) = open(b"xy", false);
        let reader = {
            let open = open.clone();
            thread::spawn(move || {
                let mut got = read(&open, 1);
                got.extend(read(&open, 1));
                got
            })
        };
        let told = seek(&open, 0, Whence::Cur);
        assert!(told <= 2);
        assert_eq!(reader.join().unwrap(), b"xy", "a byte was read twice");
        assert_eq!(open.tell().unwrap().unwrap(), 2);
    });
}

/// In append mode, a write of nothing (which puts the position at the end
/// of the file) racing another thread's append: the position ends at the
/// end of the file, after both.
#[test]
fn empty_append_racing_append_ends_at_the_end() {
    model(|| {
        let (open, file) = open(b"0", true);
        let appender = {
            let open = open.clone();
            thread::spawn(move || write(&open, At::Cursor, b"a"))
        };
        write(&open, At::Cursor, b"");
        appender.join().unwrap();
        assert_eq!(file.contents(), b"0a");
        assert_eq!(open.tell().unwrap().unwrap(), 2);
    });
}

/// The hand-back to the context racing a write at the position: the
/// position handed back is where the file description's offset stays (no
/// write moves it afterwards), and a write after the hand-back is not done
/// here (the context does it).
#[test]
fn release_racing_write_hands_back_a_settled_position() {
    model(|| {
        let (open, file) = open(b"", false);
        let writer = {
            let open = open.clone();
            thread::spawn(move || try_write(&open, At::Cursor, b"a").map(|n| n.unwrap()))
        };
        let handed = open.release().unwrap();
        let wrote = writer.join().unwrap();
        assert_eq!(
            handed,
            file.offset(),
            "the offset moved after the hand-back"
        );
        match wrote {
            Some(1) => assert_eq!((handed, file.contents()), (1, b"a".to_vec())),
            None => assert_eq!((handed, file.contents()), (0, Vec::new())),
            other => panic!("wrote {other:?}"),
        }
    });
}

/// A position the file description refuses (past the largest file) is kept
/// beside it; a seek from there back into range, racing writes at the
/// position, gives what a serial order gives.
#[test]
fn positions_past_the_kernels_racing_writes() {
    model(|| {
        let (open, file) = open(b"", false);
        write(&open, At::Cursor, b"ab");
        let writer = {
            let open = open.clone();
            thread::spawn(move || {
                try_write(&open, At::Cursor, b"c")
                    .expect("handled here")
                    .is_ok()
            })
        };
        let far = seek(&open, MAX_OFFSET + 10, Whence::Set);
        assert_eq!(far, (MAX_OFFSET + 10) as u64);
        let back = seek(&open, -(MAX_OFFSET + 9), Whence::Cur);
        assert_eq!(back, 1);
        let wrote = writer.join().unwrap();
        let data = file.contents();
        let told = open.tell().unwrap().unwrap();
        // "c" went at 2 before the seeks (position 1 after them), failed at
        // the far position between them, or went at 1 after them.
        assert!(
            (wrote && data == b"abc" && told == 1)
                || (!wrote && data == b"ab" && told == 1)
                || (wrote && data == b"ac" && told == 2),
            "wrote {wrote}: {data:?} at {told}"
        );
    });
}

/// An append racing a seek to a position the file description refuses
/// (kept beside it): the position the seek set is not undone by the
/// append's move to the end, when the seek came after the append.
#[test]
fn append_racing_a_seek_past_the_kernels() {
    model(|| {
        let (open, _file) = open(b"0", true);
        let appender = {
            let open = open.clone();
            thread::spawn(move || write(&open, At::Cursor, b"a"))
        };
        let sought = seek(&open, MAX_OFFSET + 1, Whence::Cur);
        appender.join().unwrap();
        let told = open.tell().unwrap().unwrap();
        let far = MAX_OFFSET as u64 + 1;
        // The append first (the seek from its end), or the seek first (the
        // append then moves the position to the end).
        assert!(
            (sought == far + 2 && told == far + 2) || (sought == far && told == 2),
            "seek gave {sought}, then tell {told}"
        );
    });
}

/// A positional write on an append descriptor (which Linux appends) racing
/// the hand-back to the context (which takes the description out of append
/// mode): it appends, or is left to the context.
#[test]
fn positional_append_racing_release() {
    model(|| {
        let (open, file) = open(b"ab", true);
        let writer = {
            let open = open.clone();
            thread::spawn(move || try_write(&open, At::Offset(0), b"z").map(|n| n.unwrap()))
        };
        open.release().unwrap();
        match writer.join().unwrap() {
            Some(1) => assert_eq!(file.contents(), b"abz"),
            None => assert_eq!(file.contents(), b"ab"),
            other => panic!("wrote {other:?}"),
        }
    });
}

/// A write through a descriptor racing its renumbering: it lands before the
/// renumber returns (so before a write through the new number), or is left
/// to the context (which no longer has the old number).
#[test]
fn write_racing_renumber_lands_before_it_returns() {
    model(|| {
        let (open, file) = open(b"", false);
        let writer = {
            let open = open.clone();
            thread::spawn(move || try_write(&open, At::Cursor, b"a").map(|n| n.unwrap()))
        };
        let moved = open.renumber();
        write(&moved, At::Cursor, b"b");
        match writer.join().unwrap() {
            Some(1) => assert_eq!(file.contents(), b"ab"),
            None => assert_eq!(file.contents(), b"b"),
            other => panic!("wrote {other:?}"),
        }
    });
}
