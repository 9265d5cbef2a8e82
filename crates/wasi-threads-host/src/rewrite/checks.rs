//! Where the rewrite puts stop checks: at every loop header, and at the
//! entry of the functions this analysis picks.
//!
//! A check costs a few loads and a branch; at the entry of a small function
//! called in a hot loop that is a large share of its time (Wasmtime's epoch
//! checks, at every entry, cost call-heavy code 10–60%). So entry checks
//! go only where they are needed to bound the work a thread can do between
//! two checks:
//!
//! - **Recursion.** Every cycle of direct calls passes a check: the depth
//!   first search over the call graph marks the target of every back edge,
//!   unless the call that closes the cycle sits inside a loop of its
//!   function (the loop's own check then runs before it).
//! - **Calls the analysis cannot see through.** A function that calls
//!   through a table or a reference, or calls an import (which could be
//!   wasm of another instance), outside its loops, is checked.
//! - **Call trees.** Without loops or recursion, a tree of calls can still
//!   run for exponentially long (`f0` calls `f1` four times, which calls
//!   `f2` four times, ...). For each function the analysis bounds the work
//!   of one call that passes no check: its own instructions plus that bound
//!   of every unchecked callee it calls (a loop cannot be entered without
//!   a check). Where that exceeds [`LIMIT`], the heavy callees get entry
//!   checks, and if that is not enough, the function itself.
//!
//! Between two checks a thread thus runs at most a function's instructions
//! plus, per call site, [`LIMIT`] / [`HEAVY`] instructions of callees (and
//! the unwinding of the frames below it), microseconds on today's
//! machines, while small leaves and helpers called from hot loops run with
//! no check at all.
//!
//! The analysis is deterministic and monotone: given a module whose checks
//! are already in place, run with those functions taken as checked, it asks
//! for no check that is not there, so the rewrite can verify its own output
//! instead of trusting a marker (see [`Placement::covered_by`]).

/// The most instructions one unchecked call may run, callees included.
pub const LIMIT: u64 = 4096;
/// Callees whose bound exceeds `LIMIT / HEAVY` are the ones given entry
/// checks first when a caller's bound is over `LIMIT`.
pub const HEAVY: u64 = 16;

/// One instruction of a body, as far as the placement is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// `block`, `if`, `try_table` (or `try`), or a `loop`.
    Open { is_loop: bool },
    /// `else` (or `catch`, `catch_all`): one arm ends, the next begins.
    Arm,
    /// The `end` of a block or of the body (or `delegate`).
    End,
    /// A direct call or tail call of the defined function with this index
    /// (among the defined functions).
    Call(u32),
    /// A call through a table or reference, or of a (non-host) import.
    Opaque,
    /// Anything else.
    Other,
}

/// An instruction and whether it counts as work: the host's own calls and
/// the instructions of checks already in place do not, so a rewritten body
/// weighs what the original did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Instr {
    pub op: Op,
    pub counts: bool,
}

/// A direct call site.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Call {
    /// The callee, by its index among the defined functions.
    pub callee: u32,
    /// Whether the call sits inside a loop of its function, behind the
    /// loop's check.
    pub looped: bool,
}

/// What the placement needs to know of one function body.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Body {
    /// Instructions, not counting calls of the host's own functions or the
    /// instructions of checks already in place.
    pub weight: u64,
    /// Direct calls (and tail calls) of defined functions, one entry per
    /// call site.
    pub callees: Vec<Call>,
    /// A call through a table or reference, or of a (non-host) import,
    /// outside every loop.
    pub opaque: bool,
}

/// What the placement needs to know of the body `instrs`: its weight, and
/// its calls, each with whether it sits inside a loop.
///
/// Linear in the body; a malformed body (more `end`s than blocks) gives
/// some answer and no panic, and is refused by validation anyway.
pub fn body(instrs: &[Instr]) -> Body {
    let mut body = Body::default();
    // Whether each open block is a loop, and how many are.
    let mut open: Vec<bool> = Vec::new();
    let mut loops = 0usize;
    for instr in instrs {
        body.weight += u64::from(instr.counts);
        match instr.op {
            Op::Open { is_loop } => {
                open.push(is_loop);
                loops += usize::from(is_loop);
            }
            // An arm of an `if` or a `try` is never a loop's.
            Op::Arm => {}
            Op::End => loops -= usize::from(open.pop().unwrap_or(false)),
            Op::Call(callee) => body.callees.push(Call {
                callee,
                looped: loops > 0,
            }),
            Op::Opaque => body.opaque |= loops == 0,
            Op::Other => {}
        }
    }
    body
}

/// Which functions get a check at their entry.
#[derive(Debug, PartialEq)]
pub struct Placement {
    pub entry: Vec<bool>,
}

impl Placement {
    /// Places entry checks in `bodies`, those in `already` counting as
    /// checked from the start.
    pub fn new(bodies: &[Body], already: &[bool]) -> Placement {
        let n = bodies.len();
        let mut checked: Vec<bool> = (0..n)
            .map(|f| already.get(f).copied().unwrap_or(false))
            .collect();
        let mut cost = vec![0u64; n];
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            New,
            OnStack,
            Done,
        }
        let mut state = vec![State::New; n];
        // (function, index of its next call site to follow): an explicit
        // stack, since call chains can be as deep as the module is long.
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for root in 0..n {
            if state[root] != State::New {
                continue;
            }
            state[root] = State::OnStack;
            stack.push((root, 0));
            while let Some(top) = stack.last_mut() {
                let (f, next) = *top;
                if let Some(&call) = bodies[f].callees.get(next) {
                    top.1 += 1;
                    let g = call.callee as usize;
                    match state.get(g) {
                        Some(State::New) => {
                            state[g] = State::OnStack;
                            stack.push((g, 0));
                        }
                        // A back edge: every cycle has one, and either it
                        // is behind a loop's check or its target is
                        // checked, so recursion always passes a check.
                        Some(State::OnStack) if !call.looped => checked[g] = true,
                        _ => {}
                    }
                    continue;
                }
                stack.pop();
                state[f] = State::Done;
                cost[f] = finish(f, bodies, &mut checked, &cost);
            }
        }
        Placement { entry: checked }
    }

    /// Whether every entry check this placement asks for is in `present`.
    pub fn covered_by(&self, present: &[bool]) -> bool {
        self.entry
            .iter()
            .enumerate()
            .all(|(f, &needed)| !needed || present.get(f).copied().unwrap_or(false))
    }
}

/// Decides on `f`'s callees and `f` once all its callees are done (or on
/// the stack, and then checked), and returns the bound of one unchecked
/// call of `f`.
fn finish(f: usize, bodies: &[Body], checked: &mut [bool], cost: &[u64]) -> u64 {
    let body = &bodies[f];
    if body.opaque {
        checked[f] = true;
    }
    let bound = |checked: &[bool]| {
        body.callees.iter().fold(body.weight, |sum, call| {
            let g = call.callee as usize;
            if checked.get(g).copied().unwrap_or(true) {
                sum
            } else {
                sum.saturating_add(cost[g])
            }
        })
    };
    let mut own = bound(checked);
    if own > LIMIT {
        for call in &body.callees {
            let g = call.callee as usize;
            if g < checked.len() && !checked[g] && cost[g] > LIMIT / HEAVY {
                checked[g] = true;
            }
        }
        own = bound(checked);
        if own > LIMIT {
            checked[f] = true;
        }
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(weight: u64, callees: &[u32]) -> Body {
        Body {
            weight,
            callees: callees
                .iter()
                .map(|&callee| Call {
                    callee,
                    looped: false,
                })
                .collect(),
            opaque: false,
        }
    }

    #[test]
    fn leaves_and_small_helpers_stay_unchecked() {
        // 0 calls 1 calls 2, all small.
        let bodies = [body(10, &[1]), body(10, &[2]), body(10, &[])];
        assert_eq!(Placement::new(&bodies, &[]).entry, [false, false, false]);
    }

    #[test]
    fn every_cycle_is_checked() {
        // 0 -> 1 -> 2 -> 0, and 3 -> 3.
        let bodies = [body(1, &[1]), body(1, &[2]), body(1, &[0]), body(1, &[3])];
        let placed = Placement::new(&bodies, &[]);
        assert_eq!(placed.entry, [true, false, false, true]);
    }

    #[test]
    fn opaque_calls_are_checked() {
        let mut b = body(1, &[]);
        b.opaque = true;
        assert_eq!(Placement::new(&[b], &[]).entry, [true]);
    }

    #[test]
    fn a_call_tree_is_cut_into_bounded_pieces() {
        // Level i calls level i+1 four times; 30 levels.
        let levels = 30;
        let bodies: Vec<Body> = (0..levels)
            .map(|i| {
                if i + 1 < levels {
                    body(5, &[i + 1, i + 1, i + 1, i + 1])
                } else {
                    body(5, &[])
                }
            })
            .collect();
        let placed = Placement::new(&bodies, &[]);
        assert!(placed.entry.iter().any(|&c| c));
        // No unchecked run from any function's entry exceeds the limit: walk
        // the unchecked calls.
        fn unchecked(f: usize, bodies: &[Body], entry: &[bool]) -> u64 {
            bodies[f].callees.iter().fold(bodies[f].weight, |s, call| {
                let g = call.callee as usize;
                if entry[g] {
                    s
                } else {
                    s + unchecked(g, bodies, entry)
                }
            })
        }
        for f in 0..levels as usize {
            if !placed.entry[f] {
                assert!(unchecked(f, &bodies, &placed.entry) <= LIMIT, "{f}");
            }
        }
    }

    #[test]
    fn the_placement_covers_itself() {
        let levels = 12;
        let mut bodies: Vec<Body> = (0..levels)
            .map(|i| {
                if i + 1 < levels {
                    body(40, &[i + 1, i + 1, i + 1])
                } else {
                    body(40, &[0])
                }
            })
            .collect();
        bodies.push(body(3, &[5, 7]));
        let placed = Placement::new(&bodies, &[]);
        let again = Placement::new(&bodies, &placed.entry);
        assert!(again.covered_by(&placed.entry));
        assert!(!Placement::new(&bodies, &[]).covered_by(&vec![false; bodies.len()]));
    }

    /// Parses a body written as one letter per instruction: `b` block or
    /// if, `l` loop, `e` else, `E` end, `c` a call of function 0, `o` an
    /// opaque call, `.` anything else.
    fn instrs(text: &str) -> Vec<Instr> {
        text.chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| Instr {
                op: match c {
                    'b' => Op::Open { is_loop: false },
                    'l' => Op::Open { is_loop: true },
                    'e' => Op::Arm,
                    'E' => Op::End,
                    'c' => Op::Call(0),
                    'o' => Op::Opaque,
                    _ => Op::Other,
                },
                counts: true,
            })
            .collect()
    }

    #[test]
    fn calls_inside_loops_are_told_apart() {
        let body = super::body(&instrs(". c l . c b c e o E E c b o E E"));
        let looped: Vec<bool> = body.callees.iter().map(|c| c.looped).collect();
        assert_eq!(looped, [false, true, true, false]);
        // The only opaque call outside a loop is the last.
        assert!(body.opaque);
        assert!(!super::body(&instrs("l o E E")).opaque);
        assert_eq!(body.weight, 16);
        // Malformed bodies give an answer, not a panic.
        for text in ["E E c", "e c", "E c E", "l c E E E c"] {
            let _ = super::body(&instrs(text));
        }
    }

    #[test]
    fn recursion_behind_a_loop_check_needs_no_other() {
        // 0 calls itself inside a loop; 1 -> 2 -> 1 with 2's call looped.
        let mut bodies = [body(5, &[0]), body(5, &[2]), body(5, &[1])];
        bodies[0].callees[0].looped = true;
        bodies[2].callees[0].looped = true;
        let placed = Placement::new(&bodies, &[]);
        assert_eq!(placed.entry, [false, false, false]);
        // The same without the loops.
        bodies[0].callees[0].looped = false;
        bodies[2].callees[0].looped = false;
        assert_eq!(Placement::new(&bodies, &[]).entry, [true, true, false]);
    }
}
