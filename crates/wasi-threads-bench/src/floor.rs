//! "The floor": the original module on the same Wasmtime engine
//! configuration, with no rewrite (so no stop checks) and no supervision: wasmtime-wasi's own preview1 (a context per thread) and a
//! plain `thread-spawn` that starts an OS thread. What running this wasm here
//! costs at least; the host's figures over these show what supervision costs.
//!
//! It runs in a child process (`wasi-threads-bench --floor X.wasm ARGS...`)
//! because it cannot stop its threads: the process ends when `_start`
//! returns or any thread exits or traps, as `wasmtime run` did.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Module, SharedMemory, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// The engine configuration of the host (which adds nothing for
/// supervision: the stop checks are in the rewritten module).
pub fn config() -> Config {
    wasi_threads_host::engine_config()
}

struct Setup {
    args: Vec<String>,
    dirs: Vec<(String, String)>,
}

impl Setup {
    fn wasi(&self) -> WasiP1Ctx {
        let mut b = WasiCtxBuilder::new();
        b.inherit_stdout().inherit_stderr().args(&self.args);
        b.allow_blocking_current_thread(true);
        for (host, guest) in &self.dirs {
            b.preopened_dir(host, guest, FsPerms::ReadWrite)
                .expect("preopen");
        }
        b.build_p1()
    }
}

fn finish(result: wasmtime::Result<()>) -> ! {
    use std::io::Write as _;
    let code = match result {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => exit.0,
            None => {
                eprintln!("floor: {e:?}");
                134
            }
        },
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// `--floor [--dir HOST::GUEST]... X.wasm ARGS...`: runs and exits.
pub fn main(mut args: Vec<String>) -> ! {
    let mut dirs = Vec::new();
    while args.first().map(String::as_str) == Some("--dir") {
        args.remove(0);
        let spec = args.remove(0);
        let (host, guest) = spec.split_once("::").expect("--dir HOST::GUEST");
        dirs.push((host.to_string(), guest.to_string()));
    }
    let path = args.first().expect("--floor X.wasm").clone();
    let setup = Arc::new(Setup { args, dirs });
    let engine = Engine::new(&config()).expect("engine");
    let module = Module::from_file(&engine, Path::new(&path)).expect("module");
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| s).expect("wasi");
    let pre: Arc<OnceLock<InstancePre<WasiP1Ctx>>> = Arc::new(OnceLock::new());
    let next_tid = Arc::new(AtomicI32::new(1));
    {
        let (pre, setup) = (pre.clone(), setup.clone());
        linker
            .func_wrap("wasi", "thread-spawn", move |arg: i32| -> i32 {
                let tid = next_tid.fetch_add(1, Ordering::Relaxed);
                let (pre, setup) = (pre.clone(), setup.clone());
                let spawned = std::thread::Builder::new()
                    .stack_size(8 << 20)
                    .spawn(move || {
                        let Some(pre) = pre.get() else { return };
                        let mut store = Store::new(pre.module().engine(), setup.wasi());
                        let result = pre.instantiate(&mut store).and_then(|instance| {
                            instance
                                .get_typed_func::<(i32, i32), ()>(&mut store, "wasi_thread_start")?
                                .call(&mut store, (tid, arg))
                        });
                        if result.is_err() {
                            finish(result);
                        }
                    });
                if spawned.is_ok() { tid } else { -6 }
            })
            .expect("thread-spawn");
    }
    let mut store = Store::new(&engine, setup.wasi());
    for import in module.imports() {
        if let ExternType::Memory(ty) = import.ty() {
            let memory = SharedMemory::new(&engine, ty).expect("shared memory");
            linker
                .define(&mut store, import.module(), import.name(), memory)
                .expect("define memory");
        }
    }
    let instance_pre = linker.instantiate_pre(&module).expect("instantiate_pre");
    let _ = pre.set(instance_pre.clone());
    let result = instance_pre.instantiate(&mut store).and_then(|instance| {
        instance
            .get_typed_func::<(), ()>(&mut store, "_start")?
            .call(&mut store, ())
    });
    finish(result)
}
