//! `wasmtime run`'s option groups (`-W`, `-S`, `-D`), `--profile`, and the
//! older spellings CI scripts still use, mapped onto our settings.
//!
//! Spelled as Wasmtime spells them: `-W KEY[=VAL[,KEY[=VAL]..]]`, booleans
//! as `y`/`yes`/`true`/`n`/`no`/`false` or no value for yes, numbers with
//! optional `_` separators or a `0x` prefix, durations as `N` (seconds),
//! `Ns`, `Nms`, `Nus` or `Nns`. Options that threads make meaningless are
//! accepted; options that would change behaviour map onto ours or are
//! refused by name, never ignored.

use std::time::Duration;
use wasmtime::ProfilingStrategy;

/// Everything the option groups asked for.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    /// `-W timeout=`.
    pub timeout: Option<Duration>,
    /// `-W max-memory-size=` in bytes.
    pub max_memory_size: Option<u64>,
    /// `-W max-wasm-stack=` in bytes.
    pub max_wasm_stack: Option<usize>,
    /// Wasm proposals switched on or off (`-W simd=n`, `--wasm-features -simd`).
    pub features: Vec<(Feature, bool)>,
    /// `-D debug-info`.
    pub debug_info: Option<bool>,
    /// `-D address-map`.
    pub address_map: Option<bool>,
    /// `-S inherit-env`: the guest sees the host's whole environment.
    pub inherit_env: bool,
    /// `--profile`.
    pub profile: Option<ProfilingStrategy>,
    /// `-W unknown-imports-trap`: imported functions nobody defines trap
    /// when called instead of failing instantiation.
    pub unknown_imports_trap: bool,
    /// `-C cache=n`: no compiled-module cache.
    pub no_cache: bool,
    /// `-C cache-config=PATH`: Wasmtime's cache configuration file.
    pub cache_config: Option<std::path::PathBuf>,
    /// `-C parallel-compilation=n`.
    pub parallel_compilation: Option<bool>,
    /// `-O opt-level=`.
    pub opt_level: Option<wasmtime::OptLevel>,
    /// `-C compiler=`: `None` is Cranelift.
    pub compiler: Option<wasmtime::Strategy>,
    /// `-D logging=n`: no log output at all.
    pub no_logging: bool,
}

/// A Wasm proposal that `-W` can switch and that is independent of threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    Simd,
    RelaxedSimd,
    MultiValue,
    TailCall,
    Memory64,
    ExtendedConst,
    WideArithmetic,
    CustomPageSizes,
}

impl Feature {
    fn from_key(key: &str) -> Option<Feature> {
        Some(match key {
            "simd" => Feature::Simd,
            "relaxed-simd" => Feature::RelaxedSimd,
            "multi-value" => Feature::MultiValue,
            "tail-call" => Feature::TailCall,
            "memory64" => Feature::Memory64,
            "extended-const" => Feature::ExtendedConst,
            "wide-arithmetic" => Feature::WideArithmetic,
            "custom-page-sizes" => Feature::CustomPageSizes,
            _ => return None,
        })
    }

    /// Applies the switch to an engine configuration.
    pub fn apply(self, config: &mut wasmtime::Config, enable: bool) {
        match self {
            Feature::Simd => config.wasm_simd(enable),
            Feature::RelaxedSimd => config.wasm_relaxed_simd(enable),
            Feature::MultiValue => config.wasm_multi_value(enable),
            Feature::TailCall => config.wasm_tail_call(enable),
            Feature::Memory64 => config.wasm_memory64(enable),
            Feature::ExtendedConst => config.wasm_extended_const(enable),
            Feature::WideArithmetic => config.wasm_wide_arithmetic(enable),
            Feature::CustomPageSizes => config.wasm_custom_page_sizes(enable),
        };
    }
}

/// Keys a wasi-threads host cannot run without: accepted when on, refused
/// when switched off.
/// (`multi-memory`: the stop flag the host adds to every module is a memory
/// of its own.)
const REQUIRED_WASM: &[&str] = &["threads", "shared-memory", "bulk-memory", "multi-memory"];

/// Keys `wasmtime run` has that change nothing here: accepted either way.
/// (`epoch-interruption`: the host stops threads without epochs.)
const IGNORED_WASM: &[&str] = &["epoch-interruption"];

/// `-S` keys about networking. A WASI preview1 guest cannot open a socket
/// (preview1 has no call for it), so under `wasmtime run` too they change
/// nothing for such a guest: accepted either way.
const NETWORK_WASI: &[&str] = &[
    "inherit-network",
    "allow-ip-name-lookup",
    "tcp",
    "udp",
    "network",
];

/// The `-W` keys we understand, for `-W help`.
pub const WASM_HELP: &str = "\
Available -W / --wasm options:
  -W threads, shared-memory, bulk-memory, multi-memory   always on (=n is refused)
  -W epoch-interruption[=y|n]   accepted: threads are stopped without epochs
  -W timeout=N|Ns|Nms|..     stop the program after this long (exit 124)
  -W max-memory-size=N       most bytes of linear memory
  -W max-wasm-stack=N        most bytes of wasm stack per thread
  -W unknown-imports-trap[=y|n]  imported functions nobody defines trap when called
  -W simd, relaxed-simd, multi-value, tail-call, memory64,
     extended-const, wide-arithmetic, custom-page-sizes[=y|n]   switch a Wasm proposal
  -W fuel=N                  refused: fuel is counted per store, and every thread
                             has a store of its own (bound a run with -W timeout=)";

/// The `-S` keys we understand, for `-S help`.
pub const WASI_HELP: &str = "\
Available -S / --wasi options:
  -S threads, cli, common    always on (=n is refused)
  -S preview2[=y|n]          accepted: WASI preview1 is always wasmtime-wasi's
  -S inherit-env[=y|n]       give the guest the host's whole environment
  -S inherit-network, allow-ip-name-lookup, tcp, udp[=y|n]
                             accepted: a preview1 guest cannot open sockets
  -S tcplisten=ADDR          refused: the host pre-opens no sockets";

/// The `-D` keys we understand, for `-D help`.
pub const DEBUG_HELP: &str = "\
Available -D / --debug options:
  -D debug-info[=y|n]        DWARF for native debuggers (lldb, gdb)
  -D address-map[=y|n]       map native code addresses back to wasm offsets
  -D logging[=y|n]           =n: no log output (levels: WASI_THREADS_LOG)
  -D coredump=PATH           refused: one thread's core dump would leave out the others";

/// The `-C` keys we understand, for `-C help`.
pub const CODEGEN_HELP: &str = "\
Available -C / --codegen options:
  -C cache[=y|n]             the compiled-module cache (=n is --no-cache)
  -C cache-config=PATH       Wasmtime's cache configuration file (TOML)
  -C parallel-compilation[=y|n]   compile a module's functions on all cores
  -C compiler=cranelift|winch  Cranelift (optimising, the default) or Winch
                             (baseline: compiles about 4x faster, runs slower)";

/// The `-O` keys we understand, for `-O help`.
pub const OPTIMIZE_HELP: &str = "\
Available -O / --optimize options:
  -O opt-level=0|1|2|s       Cranelift's optimization level (default 2)";

impl Options {
    /// One `-W`/`--wasm` value.
    pub fn wasm(&mut self, value: &str) -> Result<(), String> {
        for (key, val) in items(value) {
            let flag = || format!("-W {key}");
            if REQUIRED_WASM.contains(&key) {
                required(&flag(), val)?;
                continue;
            }
            if IGNORED_WASM.contains(&key) {
                boolean(&flag(), val)?;
                continue;
            }
            if let Some(feature) = Feature::from_key(key) {
                self.features.push((feature, boolean(&flag(), val)?));
                continue;
            }
            match key {
                "timeout" => self.timeout = Some(duration(&flag(), val)?),
                "unknown-imports-trap" => self.unknown_imports_trap = boolean(&flag(), val)?,
                "fuel" => {
                    return Err(format!(
                        "{}: not supported: fuel is counted per store and every wasi-threads \
                         thread has a store of its own; bound a run with -W timeout= instead",
                        flag()
                    ));
                }
                "max-memory-size" => self.max_memory_size = Some(number(&flag(), val)?),
                "max-wasm-stack" => {
                    let bytes: u64 = number(&flag(), val)?;
                    let bytes = usize::try_from(bytes)
                        .map_err(|_| format!("{}: {bytes} is too large", flag()))?;
                    self.max_wasm_stack = Some(bytes);
                }
                _ => return Err(unknown('W', "wasm", key)),
            }
        }
        Ok(())
    }

    /// One `-S`/`--wasi` value.
    pub fn wasi(&mut self, value: &str) -> Result<(), String> {
        for (key, val) in items(value) {
            let flag = || format!("-S {key}");
            match key {
                "threads" | "cli" | "common" => required(&flag(), val)?,
                "preview2" => {
                    boolean(&flag(), val)?;
                }
                "inherit-env" => self.inherit_env = boolean(&flag(), val)?,
                key if NETWORK_WASI.contains(&key) => {
                    boolean(&flag(), val)?;
                }
                "tcplisten" => {
                    return Err(format!(
                        "{}: not supported: this host's WASI layer pre-opens no sockets",
                        flag()
                    ));
                }
                _ => return Err(unknown('S', "wasi", key)),
            }
        }
        Ok(())
    }

    /// One `-D`/`--debug` value.
    pub fn debug(&mut self, value: &str) -> Result<(), String> {
        for (key, val) in items(value) {
            let flag = || format!("-D {key}");
            match key {
                "debug-info" => self.debug_info = Some(boolean(&flag(), val)?),
                "address-map" => self.address_map = Some(boolean(&flag(), val)?),
                "logging" => self.no_logging = !boolean(&flag(), val)?,
                "coredump" => {
                    return Err(format!(
                        "{}: not supported: a core dump is of one store, and every \
                         wasi-threads thread has a store of its own",
                        flag()
                    ));
                }
                _ => return Err(unknown('D', "debug", key)),
            }
        }
        Ok(())
    }

    /// One `-C`/`--codegen` value.
    pub fn codegen(&mut self, value: &str) -> Result<(), String> {
        for (key, val) in items(value) {
            let flag = || format!("-C {key}");
            match key {
                "cache" => self.no_cache = !boolean(&flag(), val)?,
                "cache-config" => match val {
                    Some(path) if !path.is_empty() => self.cache_config = Some(path.into()),
                    _ => return Err(format!("{}: needs a value ({}=PATH)", flag(), flag())),
                },
                "parallel-compilation" => {
                    self.parallel_compilation = Some(boolean(&flag(), val)?);
                }
                "compiler" => match val {
                    Some("cranelift") => self.compiler = Some(wasmtime::Strategy::Cranelift),
                    Some("winch") => self.compiler = Some(wasmtime::Strategy::Winch),
                    Some(other) => {
                        return Err(format!(
                            "{}={other}: unknown compiler (cranelift, winch)",
                            flag()
                        ));
                    }
                    None => return Err(format!("{}: needs a value ({}=NAME)", flag(), flag())),
                },
                _ => return Err(unknown('C', "codegen", key)),
            }
        }
        Ok(())
    }

    /// One `-O`/`--optimize` value.
    pub fn optimize(&mut self, value: &str) -> Result<(), String> {
        use wasmtime::OptLevel;
        for (key, val) in items(value) {
            match key {
                "opt-level" => {
                    self.opt_level = Some(match val {
                        Some("0") => OptLevel::None,
                        Some("1" | "2") => OptLevel::Speed,
                        Some("s") => OptLevel::SpeedAndSize,
                        _ => {
                            return Err(format!(
                                "-O opt-level={}: use 0, 1, 2 or s",
                                val.unwrap_or("")
                            ));
                        }
                    });
                }
                _ => return Err(unknown('O', "optimize", key)),
            }
        }
        Ok(())
    }

    /// `--profile STRATEGY`.
    pub fn profile(&mut self, value: &str) -> Result<(), String> {
        self.profile = Some(match value {
            "perfmap" => ProfilingStrategy::PerfMap,
            "jitdump" => ProfilingStrategy::JitDump,
            "vtune" => ProfilingStrategy::VTune,
            other => {
                return Err(format!(
                    "--profile {other}: not supported (use perfmap, jitdump or vtune)"
                ));
            }
        });
        Ok(())
    }

    /// Old `--wasm-features a,b,-c` (Wasmtime 13 and earlier).
    pub fn wasm_features(&mut self, value: &str) -> Result<(), String> {
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (enable, key) = match item.strip_prefix('-') {
                Some(key) => (false, key),
                None => (true, item),
            };
            let flag = format!("--wasm-features {item}");
            if REQUIRED_WASM.contains(&key) {
                if !enable {
                    return Err(format!("{flag}: wasi-threads cannot run without it"));
                }
            } else if IGNORED_WASM.contains(&key) {
            } else if let Some(feature) = Feature::from_key(key) {
                self.features.push((feature, enable));
            } else {
                return Err(format!("unknown --wasm-features value: {key}"));
            }
        }
        Ok(())
    }

    /// Old `--wasi-modules experimental-wasi-threads,...` (Wasmtime 13 and
    /// earlier).
    pub fn wasi_modules(&mut self, value: &str) -> Result<(), String> {
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "default" | "wasi-common" | "experimental-wasi-threads" => {}
                _ => return Err(format!("unsupported --wasi-modules value: {item}")),
            }
        }
        Ok(())
    }
}

/// `a=1,b` as `[("a", Some("1")), ("b", None)]`.
fn items(value: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    value.split(',').map(|item| match item.split_once('=') {
        Some((key, val)) => (key, Some(val)),
        None => (item, None),
    })
}

fn unknown(short: char, long: &str, key: &str) -> String {
    format!("unknown or unsupported -{short} / --{long} option: {key} (see -{short} help)")
}

fn boolean(flag: &str, val: Option<&str>) -> Result<bool, String> {
    match val {
        None | Some("y" | "yes" | "true") => Ok(true),
        Some("n" | "no" | "false") => Ok(false),
        Some(other) => Err(format!(
            "{flag}: unknown boolean `{other}` (use y, n or nothing)"
        )),
    }
}

fn required(flag: &str, val: Option<&str>) -> Result<(), String> {
    if boolean(flag, val)? {
        Ok(())
    } else {
        Err(format!("{flag}=n: wasi-threads cannot run without it"))
    }
}

fn number(flag: &str, val: Option<&str>) -> Result<u64, String> {
    let Some(val) = val else {
        return Err(format!("{flag}: needs a value ({flag}=N)"));
    };
    let digits = val.replace('_', "");
    let parsed = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse(),
    };
    parsed.map_err(|e| format!("{flag}={val}: {e}"))
}

/// Wasmtime's duration syntax: a bare integer is seconds.
fn duration(flag: &str, val: Option<&str>) -> Result<Duration, String> {
    let Some(val) = val else {
        return Err(format!("{flag}: needs a value ({flag}=N)"));
    };
    let with_unit = |suffix: &str, make: fn(u64) -> Duration| {
        val.strip_suffix(suffix)
            .and_then(|n| n.parse().ok())
            .map(make)
    };
    val.parse()
        .ok()
        .map(Duration::from_secs)
        .or_else(|| with_unit("ms", Duration::from_millis))
        .or_else(|| with_unit("us", Duration::from_micros))
        .or_else(|| with_unit("μs", Duration::from_micros))
        .or_else(|| with_unit("ns", Duration::from_nanos))
        .or_else(|| with_unit("s", Duration::from_secs))
        .ok_or_else(|| format!("{flag}={val}: not a duration such as 10, 10s or 500ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meaningless_thread_options_are_accepted() {
        let mut o = Options::default();
        o.wasm("bulk-memory=y").unwrap();
        o.wasm("threads=y,shared-memory").unwrap();
        o.wasi("threads=y").unwrap();
        o.wasi("threads").unwrap();
        o.wasm_features("threads,bulk-memory").unwrap();
        o.wasi_modules("experimental-wasi-threads").unwrap();
        assert_eq!(o, Options::default());
        assert!(o.wasm("threads=n").unwrap_err().contains("-W threads=n"));
        assert!(o.wasi("threads=maybe").unwrap_err().contains("maybe"));
    }

    #[test]
    fn behaviour_changing_options_map_onto_ours() {
        let mut o = Options::default();
        o.wasm("timeout=250ms,max-memory-size=0x1000_0000,max-wasm-stack=1_048_576")
            .unwrap();
        o.wasm("simd=n").unwrap();
        o.debug("debug-info").unwrap();
        o.wasi("inherit-env=y").unwrap();
        o.profile("perfmap").unwrap();
        assert_eq!(o.timeout, Some(Duration::from_millis(250)));
        assert_eq!(o.max_memory_size, Some(0x1000_0000));
        assert_eq!(o.max_wasm_stack, Some(1 << 20));
        assert_eq!(o.features, [(Feature::Simd, false)]);
        assert_eq!(o.debug_info, Some(true));
        assert!(o.inherit_env);
        assert!(matches!(o.profile, Some(ProfilingStrategy::PerfMap)));
    }

    #[test]
    fn durations_as_wasmtime_spells_them() {
        for (text, expected) in [
            ("10", Duration::from_secs(10)),
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("7us", Duration::from_micros(7)),
            ("9ns", Duration::from_nanos(9)),
        ] {
            assert_eq!(duration("-W timeout", Some(text)), Ok(expected));
        }
        assert!(duration("-W timeout", Some("1.5s")).is_err());
        assert!(duration("-W timeout", None).is_err());
    }

    #[test]
    fn anything_else_is_an_error_naming_it() {
        let mut o = Options::default();
        assert!(o.wasm("fuel=10").unwrap_err().contains("fuel"));
        assert!(o.wasm("threads,gc").unwrap_err().contains(": gc"));
        assert!(o.wasi("http").unwrap_err().contains("http"));
        assert!(o.debug("coredump=x").unwrap_err().contains("coredump"));
        assert!(o.profile("guest").unwrap_err().contains("guest"));
        assert!(o.wasm_features("gc").unwrap_err().contains("gc"));
        assert!(
            o.wasi_modules("experimental-wasi-nn")
                .unwrap_err()
                .contains("nn")
        );
        assert!(o.wasm("max-memory-size=lots").unwrap_err().contains("lots"));
    }
}
