//! Where the rewrite moved the module's code, and backtraces told in the
//! offsets of the module the user built.
//!
//! Re-encoding moves every function after the added imports, rewritten
//! waits grow, and the padded LEBs that linkers emit (wasm-ld pads call
//! indices and section sizes to 5 bytes) shrink, so even untouched functions
//! move. The map is piecewise linear: between two recorded points every
//! instruction kept its length, so a point is recorded only where the shift
//! between the rewritten and the original offset changes.

use super::Granularity;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;
use wasmparser::{FunctionBody, Parser, Payload};
use wasmtime::{FrameInfo, Module, Result, WasmBacktrace, format_err};

/// How the rewrite moved a module's code: offsets (from the start of the
/// module binary, as `FrameInfo::module_offset` gives them) in the rewritten
/// module, mapped to offsets in the original one and back.
#[derive(Debug, Clone)]
pub struct OffsetMap {
    /// `(rewritten, original)` offsets, increasing in both, at every
    /// instruction (and function entry) where the shift changes.
    points: Vec<(usize, usize)>,
    /// `(first copy, second copy)`: code the rewrite wrote twice (an
    /// unrolled loop's body, see `unroll`), in increasing order. `points`
    /// maps the second copy; an offset in the first is told as the same
    /// offset in the second.
    copies: Vec<(Range<usize>, usize)>,
    original_code: Range<usize>,
    rewritten_code: Range<usize>,
    imported_funcs: u32,
    added_funcs: u32,
    identity: bool,
}

impl OffsetMap {
    /// The map of a module the rewrite left as it was.
    pub(crate) fn identity() -> Self {
        OffsetMap {
            points: Vec::new(),
            copies: Vec::new(),
            original_code: 0..0,
            rewritten_code: 0..0,
            imported_funcs: 0,
            added_funcs: 0,
            identity: true,
        }
    }

    /// Whether the module was left as it was.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// The code section payload (function count and bodies) of the original
    /// module: DWARF code addresses are relative to its start.
    pub fn original_code(&self) -> Range<usize> {
        self.original_code.clone()
    }

    /// The code section payload of the rewritten module.
    pub fn rewritten_code(&self) -> Range<usize> {
        self.rewritten_code.clone()
    }

    /// The original offset of the instruction at `rewritten` in the rewritten
    /// module, or `None` if `rewritten` is not in its code (code the host
    /// added itself would be: there is none today, a rewritten wait is
    /// reported at the original wait).
    pub fn original_offset(&self, rewritten: usize) -> Option<usize> {
        if self.identity {
            return Some(rewritten);
        }
        if !(self.rewritten_code.start..=self.rewritten_code.end).contains(&rewritten) {
            return None;
        }
        let copy = self.copies.partition_point(|c| c.0.start <= rewritten);
        let rewritten = match copy.checked_sub(1).map(|i| &self.copies[i]) {
            Some((first, second)) if first.contains(&rewritten) => {
                second + (rewritten - first.start)
            }
            _ => rewritten,
        };
        let i = self
            .points
            .partition_point(|p| p.0 <= rewritten)
            .checked_sub(1)?;
        let (new, old) = self.points[i];
        Some(old + (rewritten - new))
    }

    /// The offset in the rewritten module of the instruction that was at
    /// `original`, or `None` if `original` is not in the original code. For
    /// a rewritten wait, the first instruction that replaced it; for an
    /// unrolled loop, the `block` around it; for the body of one, its second
    /// copy.
    pub fn rewritten_offset(&self, original: usize) -> Option<usize> {
        if self.identity {
            return Some(original);
        }
        if !(self.original_code.start..=self.original_code.end).contains(&original) {
            return None;
        }
        let mut i = self
            .points
            .partition_point(|p| p.1 <= original)
            .checked_sub(1)?;
        while i > 0 && self.points[i - 1].1 == original {
            i -= 1;
        }
        let (new, old) = self.points[i];
        Some(new + (original - old))
    }

    /// The index a function of the rewritten module had in the original,
    /// or `None` for the host functions the rewrite imported.
    pub fn original_func_index(&self, rewritten: u32) -> Option<u32> {
        if rewritten < self.imported_funcs {
            Some(rewritten)
        } else if rewritten < self.imported_funcs + self.added_funcs {
            None
        } else {
            Some(rewritten - self.added_funcs)
        }
    }

    /// Formats `backtrace` as Wasmtime does, with the offsets and function
    /// indices of frames in `module` (the rewritten module) told in the
    /// original module's coordinates. File and line come from the module's
    /// DWARF, which the rewrite carried over remapped.
    pub fn format_backtrace(&self, module: &Module, backtrace: &WasmBacktrace) -> String {
        let mut out = String::from("error while executing at wasm backtrace:");
        for (i, frame) in backtrace.frames().iter().enumerate() {
            out.push('\n');
            let _ = self.format_frame(&mut out, i, module, frame);
        }
        // Wasmtime's hint to set WASMTIME_BACKTRACE_DETAILS, when it gave one.
        let hint = "\nnote: using the `WASMTIME_BACKTRACE_DETAILS=1`";
        let original = backtrace.to_string();
        if let Some(at) = original.rfind(hint) {
            out.push_str(&original[at..]);
        }
        out
    }

    fn format_frame(
        &self,
        out: &mut String,
        i: usize,
        module: &Module,
        frame: &FrameInfo,
    ) -> std::fmt::Result {
        let ours = Module::same(frame.module(), module);
        let name = frame.module().name().unwrap_or("<unknown>");
        write!(out, "  {i:>3}: ")?;
        let mut host_code = false;
        if let Some(offset) = frame.module_offset() {
            match if ours {
                self.original_offset(offset)
            } else {
                Some(offset)
            } {
                Some(offset) => write!(out, "{offset:#8x} - ")?,
                None => {
                    host_code = true;
                    write!(out, "{:>8} - ", "<host>")?
                }
            }
        }
        let index = if ours {
            self.original_func_index(frame.func_index())
        } else {
            Some(frame.func_index())
        };
        let raw_name = |out: &mut String| match index {
            Some(index) => wasmtime_environ::demangle_function_name_or_index(
                out,
                frame.func_name(),
                index as usize,
            ),
            None => write!(
                out,
                "<host function {}>",
                frame.func_name().unwrap_or("added by the rewrite")
            ),
        };
        if frame.symbols().is_empty() {
            write!(out, "{name}!")?;
            raw_name(out)?;
        } else {
            for (j, symbol) in frame.symbols().iter().enumerate() {
                if j > 0 {
                    write!(out, "\n                - ")?;
                }
                match symbol.name() {
                    Some(name) => wasmtime_environ::demangle_function_name(out, name)?,
                    None if j == 0 => raw_name(out)?,
                    None => write!(out, "<inlined function>")?,
                }
                if let Some(file) = symbol.file() {
                    write!(out, "\n                    at {file}")?;
                    if let Some(line) = symbol.line() {
                        write!(out, ":{line}")?;
                        if let Some(col) = symbol.column() {
                            write!(out, ":{col}")?;
                        }
                    }
                }
            }
        }
        if host_code {
            write!(out, " (code added by wasi-threads-host)")?;
        }
        Ok(())
    }
}

/// Records the map while the rewrite encodes the code section.
pub(super) struct MapBuilder {
    /// `(rewritten, original)`, rewritten relative to the start of the new
    /// code section's payload until [`finish`](Self::finish).
    points: Vec<(usize, usize)>,
    /// Code written twice: see [`OffsetMap`]'s field.
    copies: Vec<(Range<usize>, usize)>,
    last_shift: Option<isize>,
    /// Length of the function count that starts the new code payload.
    count_len: usize,
    /// Length of the function count that starts the original payload.
    original_count_len: usize,
    /// Where the next original function entry (its size) starts.
    next_original_entry: Option<usize>,
    original_code: Range<usize>,
}

/// The instructions of one function, relative to its body start in the
/// rewritten module (which is known only once the body is complete, and
/// placed: see [`MapBuilder::function`]).
#[derive(Default)]
pub(super) struct FunctionMoves {
    points: Vec<(usize, usize, bool)>,
    copies: Vec<(Range<usize>, usize)>,
}

impl FunctionMoves {
    /// The instruction now at `new` (in the new body) was at `original`.
    pub fn instruction(&mut self, new: usize, original: usize) {
        self.points.push((new, original, false));
    }

    /// Like `instruction`, recorded even where the shift does not change:
    /// the first of several instructions that replace one.
    pub fn exact(&mut self, new: usize, original: usize) {
        self.points.push((new, original, true));
    }

    /// The body ends at `new` (in the new body), at `original`.
    pub fn end(&mut self, new: usize, original: usize) {
        self.points.push((new, original, false));
    }

    /// The code at `first` is a copy of the code at `second`, which is
    /// recorded as usual; nothing is recorded for `first`.
    pub fn copy(&mut self, first: Range<usize>, second: usize) {
        self.copies.push((first, second));
    }
}

/// The length of `n` encoded as an unsigned LEB128.
pub(super) fn leb_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

impl MapBuilder {
    /// `original_code` is the original code section payload, which starts
    /// with the number of function bodies, `count`, in `original_count_len`
    /// bytes.
    pub fn new(original_code: Range<usize>, original_count_len: usize, count: u32) -> Self {
        MapBuilder {
            points: Vec::new(),
            copies: Vec::new(),
            last_shift: None,
            count_len: leb_len(count as usize),
            original_count_len,
            next_original_entry: None,
            original_code,
        }
    }

    fn point(&mut self, new: usize, original: usize, exact: bool) {
        let shift = new as isize - original as isize;
        if exact || self.last_shift != Some(shift) {
            self.points.push((new, original));
            self.last_shift = Some(shift);
        }
    }

    /// Records the function whose original body is `body`, rewritten with
    /// `moves`, as the next one of the new code section, its entry starting
    /// at `code_len` bytes into the section's contents.
    pub fn function(&mut self, code_len: usize, body: &FunctionBody<'_>, moves: FunctionMoves) {
        let original_body = body.range().start;
        // The first entry follows the function count, whatever its (possibly
        // padded) length; every other one follows the previous body.
        let original_entry = self
            .next_original_entry
            .unwrap_or(self.original_code.start + self.original_count_len);
        self.next_original_entry = Some(body.range().end);
        let new_entry = self.count_len + code_len;
        let new_len = moves.points.last().map_or(0, |p| p.0);
        let new_body = new_entry + leb_len(new_len);
        self.point(new_entry, original_entry, true);
        self.point(new_body, original_body, true);
        for (new, original, exact) in moves.points {
            self.point(new_body + new, original, exact);
        }
        for (first, second) in moves.copies {
            self.copies.push((
                new_body + first.start..new_body + first.end,
                new_body + second,
            ));
        }
    }

    /// The map, once `rewritten` (the rewritten module so far) holds the
    /// whole code section.
    pub fn finish(
        self,
        rewritten: &[u8],
        imported_funcs: u32,
        added_funcs: u32,
    ) -> Result<OffsetMap> {
        let mut code = None;
        for payload in Parser::new(0).parse_all(rewritten) {
            if let Payload::CodeSectionStart { range, .. } = payload? {
                code = Some(range);
                break;
            }
        }
        let rewritten_code =
            code.ok_or_else(|| format_err!("the rewritten module has no code section"))?;
        let start = rewritten_code.start;
        // The payloads' starts match: DWARF's address 0.
        let points = std::iter::once((0, self.original_code.start))
            .chain(self.points)
            .map(|(new, old)| (start + new, old))
            .collect();
        let copies = self
            .copies
            .into_iter()
            .map(|(first, second)| (start + first.start..start + first.end, start + second))
            .collect();
        Ok(OffsetMap {
            points,
            copies,
            original_code: self.original_code,
            rewritten_code,
            imported_funcs,
            added_funcs,
            identity: false,
        })
    }
}

/// A module compiled by [`compile`](super::compile) (or
/// `compile_scheduled`): the Wasmtime `Module`
/// to run and the map back to the module the user built.
#[derive(Clone)]
pub struct CompiledModule {
    module: Module,
    map: Arc<OffsetMap>,
    granularity: Option<Granularity>,
}

impl CompiledModule {
    pub(super) fn new(module: Module, map: Arc<OffsetMap>) -> Self {
        CompiledModule {
            module,
            map,
            granularity: None,
        }
    }

    /// The module, marked as compiled for schedule mode at `granularity`
    /// (`None`: the normal mode).
    pub(super) fn with_granularity(mut self, granularity: Option<Granularity>) -> Self {
        self.granularity = granularity;
        self
    }

    /// The scheduling points the module was compiled with: `Some` for a
    /// module from `compile_scheduled`, whose
    /// imports only a schedule-mode host defines; `None` for one from
    /// [`compile`](super::compile).
    pub fn granularity(&self) -> Option<Granularity> {
        self.granularity
    }

    /// The module to instantiate.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// How the rewrite moved the module's code.
    pub fn offsets(&self) -> &Arc<OffsetMap> {
        &self.map
    }

    /// `backtrace` (of a trap in this module) as Wasmtime formats it, but
    /// with the offsets and function indices of the module the user built,
    /// which `wasm-tools addr2line`, `llvm-symbolizer` or `wasm-objdump` on
    /// the user's file understand.
    pub fn format_backtrace(&self, backtrace: &WasmBacktrace) -> String {
        self.map.format_backtrace(&self.module, backtrace)
    }
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule")
            .field("rewritten", &!self.map.is_identity())
            .field("granularity", &self.granularity)
            .finish_non_exhaustive()
    }
}

/// The serialized form of an [`OffsetMap`], for the module cache.
const MAP_MAGIC: &[u8; 8] = b"wthmap2\0";

impl OffsetMap {
    /// The map as bytes, or `None` for offsets past 4 GiB (not cached).
    pub(super) fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(40 + self.points.len() * 8);
        out.extend_from_slice(MAP_MAGIC);
        out.push(self.identity as u8);
        let mut put = |n: usize| -> Option<()> {
            out.extend_from_slice(&u32::try_from(n).ok()?.to_le_bytes());
            Some(())
        };
        put(self.imported_funcs as usize)?;
        put(self.added_funcs as usize)?;
        put(self.original_code.start)?;
        put(self.original_code.end)?;
        put(self.rewritten_code.start)?;
        put(self.rewritten_code.end)?;
        put(self.points.len())?;
        for &(new, old) in &self.points {
            put(new)?;
            put(old)?;
        }
        put(self.copies.len())?;
        for (first, second) in &self.copies {
            put(first.start)?;
            put(first.end)?;
            put(*second)?;
        }
        Some(out)
    }

    /// A map from [`encode`](Self::encode)'s bytes, or `None` if they are
    /// not a well-formed map (both coordinates increasing, inside the code).
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(MAP_MAGIC)?;
        let (&identity, rest) = rest.split_first()?;
        let mut words = rest
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize);
        if rest.len() % 4 != 0 {
            return None;
        }
        let mut next = || words.next();
        let imported_funcs = next()? as u32;
        let added_funcs = next()? as u32;
        let original_code = next()?..next()?;
        let rewritten_code = next()?..next()?;
        // Counts are checked against the bytes there are before anything
        // is allocated by them.
        let count = next()?;
        if count > rest.len() / 8 {
            return None;
        }
        let mut points = Vec::with_capacity(count);
        for _ in 0..count {
            points.push((next()?, next()?));
        }
        let copies_count = next()?;
        if copies_count > rest.len() / 12 {
            return None;
        }
        let mut copies = Vec::with_capacity(copies_count);
        for _ in 0..copies_count {
            let first = next()?..next()?;
            copies.push((first, next()?));
        }
        if next().is_some() {
            return None;
        }
        let in_code = |r: &Range<usize>| {
            r.start <= r.end && rewritten_code.start <= r.start && r.end <= rewritten_code.end
        };
        let copies_valid = copies.iter().all(|(first, second)| {
            in_code(first) && in_code(&(*second..second.saturating_add(first.len())))
        }) && copies.windows(2).all(|w| w[0].0.end <= w[1].0.start);
        let increasing = points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1);
        let inside = points.iter().all(|&(new, old)| {
            (rewritten_code.start..=rewritten_code.end).contains(&new)
                && (original_code.start..=original_code.end).contains(&old)
        });
        if identity > 1 || !increasing || !inside || !copies_valid {
            return None;
        }
        Some(OffsetMap {
            points,
            copies,
            original_code,
            rewritten_code,
            imported_funcs,
            added_funcs,
            identity: identity == 1,
        })
    }
}
