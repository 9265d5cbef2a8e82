//! The schedule mode on the command line (issue 31): `--explore` finds the
//! lost update, prints a command that replays it, and that command fails the
//! same way every time; a correct program passes; a run is the same byte
//! for byte in another process, with one CPU or many; a deadlock is exit
//! status 124, not a hang.

mod common;

use common::{Run, Stdin, fixture, run_cli};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_wasi-threads");
/// Only there so that a hang fails the test rather than stalling it.
const LIMIT: Duration = Duration::from_secs(300);

fn cli(args: &[&str]) -> Run {
    run_cli(BIN, args, Stdin::Null, LIMIT)
}

fn counter() -> String {
    fixture("sched-counter.wasm").to_str().unwrap().to_string()
}

#[track_caller]
fn assert_exit(run: &Run, code: i32) {
    assert_eq!(
        run.code,
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
}

/// Splits a command line as `replay_command` quotes it (single quotes only).
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let (mut word, mut quoted, mut any) = (String::new(), false, false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if !quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => word.push(c),
        }
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    words
}

#[test]
fn explore_finds_the_lost_update_and_the_printed_command_replays_it() {
    let counter = counter();
    let run = cli(&["--explore", "100", &counter, "load-store", "4", "50"]);
    assert_exit(&run, 1);
    assert!(run.stderr.contains(" fails: exit code 1"), "{}", run.stderr);
    assert!(run.stdout.starts_with("total "), "{}", run.stdout);
    let line = run
        .stderr
        .lines()
        .skip_while(|l| !l.contains("replay with:"))
        .nth(1)
        .expect("a replay command")
        .trim();
    let words = words(line);
    assert_eq!(words[0], "wasi-threads");
    assert!(words.contains(&"--replay".to_string()), "{line}");
    assert!(!words.contains(&"--explore".to_string()), "{line}");
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    for _ in 0..20 {
        let again = cli(&args);
        assert_exit(&again, 1);
        assert_eq!(again.stdout, run.stdout);
    }
}

#[test]
fn explore_passes_a_correct_program_and_says_how_much_it_tried() {
    let counter = counter();
    let run = cli(&["--explore", "100", &counter, "fetch-add", "4", "50"]);
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "total 200 of 200\n");
    assert!(
        run.stderr.contains("explored 100 schedules") && run.stderr.contains("none failed"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_scheduled_run_is_the_same_in_every_process_with_any_number_of_cpus() {
    let counter = counter();
    let args = ["--schedule", "seed=11", &counter, "load-store", "4", "50"];
    let first = cli(&args);
    assert!(first.stdout.starts_with("total "), "{}", first.stderr);
    for _ in 0..3 {
        let again = cli(&args);
        assert_eq!((again.code, &again.stdout), (first.code, &first.stdout));
    }
    // One CPU for every thread of the process.
    let taskset = Command::new("taskset").arg("--version").output();
    if taskset.is_ok_and(|o| o.status.success()) {
        let mut all = vec!["-c", "0", BIN];
        all.extend_from_slice(&args);
        let pinned = run_cli("taskset", &all, Stdin::Null, LIMIT);
        assert_eq!((pinned.code, &pinned.stdout), (first.code, &first.stdout));
    }
}

#[test]
fn threaded_fixtures_give_their_usual_output_under_a_schedule() {
    for (name, tail) in [
        ("rust-threads.wasm", "rust-threads ok\n"),
        ("rust-rayon.wasm", "rust-rayon ok\n"),
        ("c-pthreads.wasm", ""),
    ] {
        let path = fixture(name);
        let normal = cli(&[path.to_str().unwrap()]);
        assert_exit(&normal, 0);
        for seed in ["seed=1", "seed=2,pct"] {
            let run = cli(&["--schedule", seed, path.to_str().unwrap()]);
            assert_exit(&run, 0);
            assert_eq!(run.stdout, normal.stdout, "{name} {seed}");
            assert!(run.stdout.ends_with(tail));
        }
    }
}

#[test]
fn a_deadlock_is_exit_status_124() {
    let dir = tempdir();
    let wat = dir.join("deadlock.wat");
    std::fs::write(
        &wat,
        r#"(module
            (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
            (import "env" "memory" (memory 1 1 shared))
            (func (export "wasi_thread_start") (param i32 i32)
              (drop (memory.atomic.wait32 (i32.const 8) (i32.const 0) (i64.const -1))))
            (func (export "_start")
              (drop (call $spawn (i32.const 0)))
              (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))"#,
    )
    .unwrap();
    let run = cli(&["--schedule", "seed=3", wat.to_str().unwrap()]);
    assert_exit(&run, 124);
    assert!(run.stderr.contains("deadlock"), "{}", run.stderr);
    let explored = cli(&["--explore", "5", wat.to_str().unwrap()]);
    assert_exit(&explored, 124);
    assert!(
        explored.stderr.contains("replay with:"),
        "{}",
        explored.stderr
    );
}

#[test]
fn schedule_options_that_do_not_fit_are_usage_errors() {
    let counter = counter();
    for args in [
        vec!["--schedule", "fast", &counter],
        vec!["--schedule", "seed=x", &counter],
        vec!["--replay", "12", &counter],
        vec!["--jobs", "2", &counter],
        vec!["--explore-stdout", &counter],
        vec!["--explore", "0", &counter],
        vec!["--explore", "3", "--replay", "1:1", &counter],
    ] {
        let run = cli(&args);
        assert_exit(&run, 2);
        assert!(
            run.stderr.starts_with("error: "),
            "{args:?}: {}",
            run.stderr
        );
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wasi-threads-schedule-cli-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
