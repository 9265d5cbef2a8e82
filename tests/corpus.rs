//! The wasi-threads conformance tests of the WebAssembly wasi-testsuite
//! (vendored in `tests/wasi-testsuite/`; `refresh.sh` there updates them),
//! each run through the CLI as the suite's runners do: stdin an open pipe, exit code (and stdout/stderr where
//! the `.json` gives them) checked.

mod common;

use common::{Stdin, corpus_dir, run_cli};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_wasi-threads");

fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{key}\""))?;
    let rest = json[at..].split_once(':')?.1.trim_start();
    Some(rest)
}

fn expected_exit(name: &str) -> i32 {
    let json =
        std::fs::read_to_string(corpus_dir().join(format!("{name}.json"))).unwrap_or_default();
    assert!(
        json_field(&json, "args").is_none()
            && json_field(&json, "dirs").is_none()
            && json_field(&json, "env").is_none(),
        "{name}.json asks for args, dirs or env, which this test does not pass"
    );
    json_field(&json, "exit_code")
        .map(|rest| {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().expect("exit_code")
        })
        .unwrap_or(0)
}

fn check(name: &str) {
    let wasm = corpus_dir().join(format!("{name}.wasm"));
    let run = run_cli(
        BIN,
        &[wasm.to_str().unwrap()],
        Stdin::OpenPipe,
        Duration::from_secs(20),
    );
    assert_eq!(
        run.code,
        Some(expected_exit(name)),
        "{name}: stdout {:?} stderr {:?}",
        run.stdout,
        run.stderr
    );
    // Every test ends with the program, however the other threads are
    // blocked; the guests themselves sleep up to 500 ms.
    assert!(
        run.elapsed < Duration::from_secs(3),
        "{name} took {:?}",
        run.elapsed
    );
}

macro_rules! corpus_tests {
    ($($name:ident => $file:literal,)*) => {
        $( #[test] fn $name() { check($file); } )*

        #[test]
        fn every_corpus_module_has_a_test() {
            let mut listed = vec![$($file),*];
            listed.sort();
            let mut found: Vec<String> = std::fs::read_dir(corpus_dir())
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(".wasm").map(str::to_string))
                .collect();
            found.sort();
            assert_eq!(found, listed);
        }
    };
}

corpus_tests! {
    thread_spawn_simple => "thread_spawn-simple",
    exit_main_block => "wasi_threads_exit_main_block",
    exit_main_busy => "wasi_threads_exit_main_busy",
    exit_main_wasi => "wasi_threads_exit_main_wasi",
    exit_main_wasi_read => "wasi_threads_exit_main_wasi_read",
    exit_nonmain_block => "wasi_threads_exit_nonmain_block",
    exit_nonmain_busy => "wasi_threads_exit_nonmain_busy",
    exit_nonmain_wasi => "wasi_threads_exit_nonmain_wasi",
    exit_nonmain_wasi_read => "wasi_threads_exit_nonmain_wasi_read",
    noop => "wasi_threads_noop",
    return_main_block => "wasi_threads_return_main_block",
    return_main_busy => "wasi_threads_return_main_busy",
    return_main_wasi => "wasi_threads_return_main_wasi",
    return_main_wasi_read => "wasi_threads_return_main_wasi_read",
    spawn => "wasi_threads_spawn",
}
