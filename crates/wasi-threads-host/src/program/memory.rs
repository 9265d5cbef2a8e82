//! The shared memory a wasi-threads module imports.
//!
//! Every thread's instance must see one and the same memory, so the host
//! creates it once and satisfies the module's memory import with it, whatever
//! the import is called: toolchains use `env.memory`, but `"".memory` and
//! `foo.bar` occur in the wild.

use wasmtime::{Engine, ExternType, MemoryTypeBuilder, Module, Result, SharedMemory, bail};

/// What a module needs in the way of memory.
#[derive(Debug, Clone)]
pub(crate) enum MemoryPlan {
    /// The module imports a shared memory under `module`.`name`.
    Imported(ImportedMemory),
    /// The module brings its own memory, or none: nothing to provide.
    None,
}

/// A shared memory import, validated and ready to be created.
#[derive(Debug, Clone)]
pub(crate) struct ImportedMemory {
    /// The import's module name.
    pub module: String,
    /// The import's field name.
    pub name: String,
    /// The memory type the import declares.
    pub ty: wasmtime::MemoryType,
}

impl ImportedMemory {
    /// Creates the one shared memory all of the program's threads will use,
    /// with a maximum of at most `limit` bytes (the module's own maximum if
    /// that is smaller). A memory at its maximum fails `memory.grow` with -1,
    /// as the guest expects; a module whose *minimum* exceeds `limit` cannot
    /// run at all.
    pub fn create(&self, engine: &Engine, limit: Option<u64>) -> Result<SharedMemory> {
        let mut ty = self.ty.clone();
        if let Some(limit) = limit {
            let page = ty.page_size();
            let limit_pages = limit / page;
            if ty.minimum() > limit_pages {
                bail!(
                    "memory import `{}.{}` needs at least {} bytes ({} pages), more than the \
                     memory limit of {limit} bytes",
                    self.module,
                    self.name,
                    ty.minimum().saturating_mul(page),
                    ty.minimum(),
                );
            }
            let maximum = ty.maximum().map_or(limit_pages, |max| max.min(limit_pages));
            ty = MemoryTypeBuilder::new()
                .min(ty.minimum())
                .max(Some(maximum))
                .shared(true)
                .memory64(ty.is_64())
                .page_size_log2(ty.page_size_log2())
                .build()?;
        }
        SharedMemory::new(engine, ty).map_err(|e| {
            e.context(format!(
                "cannot create shared memory `{}.{}`",
                self.module, self.name
            ))
        })
    }
}

/// Finds and checks `module`'s memory import.
///
/// A threaded module must import its memory, shared and with a maximum: a
/// memory the module defines itself would be created anew for every thread's
/// instance, so the threads would silently not share memory.
pub(crate) fn plan(module: &Module, spawns_threads: bool) -> Result<MemoryPlan> {
    let mut imported = None;
    for import in module.imports() {
        let ExternType::Memory(ty) = import.ty() else {
            continue;
        };
        // The stop flag: the host's own memory, not the program's.
        if import.module() == crate::rewrite::HOST_MODULE {
            continue;
        }
        let what = format!("memory import `{}.{}`", import.module(), import.name());
        if imported.is_some() {
            bail!("{what}: the module imports more than one memory; wasi-threads supports one");
        }
        if !ty.is_shared() {
            bail!(
                "{what} is not shared: a wasi-threads module must import a shared memory \
                 (build with atomics, e.g. `-pthread` or the wasm32-wasip1-threads target)"
            );
        }
        if ty.maximum().is_none() {
            bail!("{what} is shared but has no maximum size (link with --max-memory=N)");
        }
        if ty.is_64() {
            bail!("{what} is a 64-bit memory; wasi-threads is defined for 32-bit memories");
        }
        imported = Some(ImportedMemory {
            module: import.module().to_string(),
            name: import.name().to_string(),
            ty,
        });
    }
    if let Some(imported) = imported {
        return Ok(MemoryPlan::Imported(imported));
    }
    // A memory the module defines (and, as every toolchain does, exports)
    // would be created anew for every thread's instance.
    let defines_memory = module
        .exports()
        .any(|e| matches!(e.ty(), ExternType::Memory(_)));
    if spawns_threads && defines_memory {
        bail!(
            "the module imports `wasi.thread-spawn` but defines its own memory instead of \
             importing a shared one, so every thread would get a separate memory \
             (link with --import-memory --export-memory --shared-memory --max-memory=N)"
        );
    }
    Ok(MemoryPlan::None)
}
