//! Small inner loops run two iterations per check.
//!
//! A loop's check is a load of the flag (whose address, in a large
//! function, the register allocator keeps on the stack), a test and a
//! branch: in a tight loop of a few dozen instructions that was 7% of its
//! time. The rewrite therefore writes a small innermost loop twice, checked
//! once:
//!
//! ```wat
//! block $out (type of the loop)      ;; the loop, with no parameters:
//!   loop $loop (type of the loop)    ;;   loop $loop
//!     <check>                        ;;     <check>
//!     block $next                    ;;     body
//!       body'                        ;;   end
//!       br $out
//!     end
//!     body''
//!   end
//! end
//! ```
//!
//! `body'` is the body with its branches to the loop sent to `$next` (the
//! same label index: `$next` encloses `body'` as the loop enclosed the
//! body) and branches further out shifted past the two added labels; its
//! fall-through leaves the loop's results, which `br $out` carries out.
//! `body''` is the body with branches further out shifted past `$out`.
//! Every path through the loop passes the check at least every second
//! iteration, and the code does exactly what the original did.
//!
//! A module that carries DWARF (the engine reads it: file and line in
//! backtraces, native debuggers) is not unrolled: its line table and
//! variable locations describe each instruction at one place. Only loops
//! the relabelling covers are unrolled: no nested loops, no
//! instruction other than `br`, `br_if` and `br_table` that names a label,
//! no loop parameters (`$next` would need a type of its own), and branch
//! depths whose encoded length the shift does not change, so that the two
//! copies are the same bytes apart from those depths and the offset map can
//! tell the first copy as the second ([`super::OffsetMap`]).

use super::checks::{Instr, Op};
use super::offsets::leb_len;
use wasmparser::{BlockType, Operator};

/// The longest loop body (in instructions) that is unrolled: the check is
/// worth halving only in a short body, and the module grows by at most this
/// much per loop. Every unrolled instruction is compiled twice, and
/// Cranelift's time grows faster than the code: at 96, ripgrep's 20 MB
/// module (3 769 innermost loops of at most 96 instructions, 115 000
/// instructions in their bodies) cost 10-20% more CPU time to compile than the
/// same module not unrolled (user CPU time of `Module::new`, 2026-12-06);
/// at 48 the bodies unrolled hold 71 000 instructions, 38% fewer, and the
/// loops left out are those where a check is 5 instructions among 50 or
/// more.
pub const MAX_BODY: usize = 48;

/// Functions larger than this (in bytes) keep their loops as they are:
/// unrolled, a function could pass the engine's limit on a function's size
/// (wasmparser's 7,654,321 bytes), and a valid module would be refused.
pub const MAX_FUNCTION: usize = 1 << 20;

/// Whether the loops of a function body of `len` bytes may be unrolled.
pub fn function_fits(len: usize) -> bool {
    len <= MAX_FUNCTION
}

/// The labels the unrolled loop adds around the first copy of its body
/// (`$next`, `$out`) and around the second (`$out`).
pub const FIRST_COPY_SHIFT: u32 = 2;
pub const SECOND_COPY_SHIFT: u32 = 1;

/// If the loop at `ops[at]` is unrolled, its type and the index of its
/// `end`.
pub fn unrolled_end(ops: &[Operator<'_>], at: usize) -> Option<(BlockType, usize)> {
    let Some(Operator::Loop { blockty }) = ops.get(at) else {
        return None;
    };
    if !matches!(blockty, BlockType::Empty | BlockType::Type(_)) {
        return None;
    }
    // Blocks opened within the body around the instruction at hand.
    let mut depth = 0u32;
    let first = at + 1;
    for (i, op) in ops.iter().enumerate().skip(first).take(MAX_BODY + 1) {
        match op {
            Operator::End if depth == 0 => return (i > first).then_some((*blockty, i)),
            Operator::End => depth -= 1,
            Operator::Block { .. } | Operator::If { .. } => depth += 1,
            Operator::Br { relative_depth } | Operator::BrIf { relative_depth }
                if !shifts_cleanly([*relative_depth], depth) =>
            {
                return None;
            }
            Operator::BrTable { targets }
                if !shifts_cleanly(
                    targets
                        .targets()
                        .map(|k| k.unwrap_or(u32::MAX))
                        .chain([targets.default()]),
                    depth,
                ) =>
            {
                return None;
            }
            // Everything else that opens a block or names a label.
            Operator::Loop { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll
            | Operator::Delegate { .. }
            | Operator::Rethrow { .. }
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
            | Operator::BrOnCastDescEq { .. }
            | Operator::BrOnCastDescEqFail { .. }
            | Operator::Resume { .. }
            | Operator::ResumeThrow { .. }
            | Operator::ResumeThrowRef { .. } => return None,
            _ => {}
        }
    }
    None
}

/// Whether every label index of `labels`, named at `depth` blocks within the
/// body, is a valid index in both copies with the same encoded length.
fn shifts_cleanly(labels: impl IntoIterator<Item = u32>, depth: u32) -> bool {
    labels.into_iter().all(|k| {
        k <= depth
            || k.checked_add(FIRST_COPY_SHIFT).is_some_and(|first| {
                leb_len(first as usize) == leb_len((k + SECOND_COPY_SHIFT) as usize)
            })
    })
}

/// The instructions of the unrolled loop whose body is `body`, as the
/// placement of entry checks sees them in the rewritten module (less the
/// check, which weighs nothing): what a module to rewrite is weighed as.
pub fn as_written(body: impl Iterator<Item = Instr> + Clone) -> impl Iterator<Item = Instr> {
    let instr = |op| Instr { op, counts: true };
    let open = |is_loop| instr(Op::Open { is_loop });
    [open(false), open(true), open(false)]
        .into_iter()
        .chain(body.clone())
        .chain([instr(Op::Other), instr(Op::End)])
        .chain(body)
        .chain([instr(Op::End), instr(Op::End)])
}

/// The label index `k`, named at `depth` blocks within the body of a loop,
/// once `shift` labels enclose the loop's body in its copy.
pub fn relabel(k: u32, depth: u32, shift: u32) -> u32 {
    if k > depth { k + shift } else { k }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(wat: &str) -> Vec<Operator<'static>> {
        let wasm: &'static [u8] = wat::parse_str(wat).unwrap().leak();
        let mut out = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            if let wasmparser::Payload::CodeSectionEntry(body) = payload.unwrap() {
                let mut reader = body.get_operators_reader().unwrap();
                while !reader.eof() {
                    out.push(reader.read().unwrap());
                }
            }
        }
        out
    }

    fn first_loop(ops: &[Operator<'_>]) -> usize {
        ops.iter()
            .position(|op| matches!(op, Operator::Loop { .. }))
            .unwrap()
    }

    #[test]
    fn which_loops_are_unrolled() {
        let unrolled = |body: &str| {
            let ops = ops(&format!(
                "(module (func (param i32) (result i32) (block $b {body}) (i32.const 0)))"
            ));
            unrolled_end(&ops, first_loop(&ops)).is_some()
        };
        assert!(unrolled("(loop $l (br_if $l (local.get 0)))"));
        assert!(unrolled(
            "(loop $l (block (br_table $l $b 0 (local.get 0))))"
        ));
        assert!(unrolled(
            "(loop $l (result i32) (if (local.get 0) (then (br $b))) (i32.const 1))"
        ));
        // Nested loops, labels of other kinds, parameters, empty and long
        // bodies are not.
        assert!(!unrolled("(loop $l (loop $m (br_if $m (local.get 0))))"));
        assert!(!unrolled(
            "(loop $l (param i32) (br_if $l (local.get 0)) (drop (local.get 0)))"
        ));
        assert!(!unrolled("(loop $l)"));
        let long = "(drop (local.get 0))".repeat(MAX_BODY / 2);
        assert!(!unrolled(&format!(
            "(loop $l {long} (br_if $l (local.get 0)))"
        )));
        let short = "(drop (local.get 0))".repeat(MAX_BODY / 2 - 2);
        assert!(unrolled(&format!(
            "(loop $l {short} (br_if $l (local.get 0)))"
        )));
    }

    #[test]
    fn depths_whose_length_the_shift_changes_are_left() {
        // 126 blocks around the loop: its parent is label 126 from within
        // the body, 128 in the first copy (two bytes instead of one).
        let open = "(block ".repeat(126);
        let close = ")".repeat(126);
        let branch = |k: u32| {
            let ops = ops(&format!(
                "(module (func (param i32) {open} (loop (br_if {k} (local.get 0))) {close}))"
            ));
            unrolled_end(&ops, first_loop(&ops)).is_some()
        };
        assert!(branch(125));
        assert!(!branch(126));
        assert!(branch(0));
    }

    #[test]
    fn branches_out_of_the_loop_are_shifted() {
        assert_eq!(relabel(0, 0, FIRST_COPY_SHIFT), 0);
        assert_eq!(relabel(1, 0, FIRST_COPY_SHIFT), 3);
        assert_eq!(relabel(1, 1, SECOND_COPY_SHIFT), 1);
        assert_eq!(relabel(2, 1, SECOND_COPY_SHIFT), 3);
    }
}
