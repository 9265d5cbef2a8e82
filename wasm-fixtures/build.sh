#!/usr/bin/env bash
# Rebuild every wasi-threads test fixture from source into wasm-fixtures/*.wasm,
# and native x86_64 builds of the C programs into wasm-fixtures/native/.
#
#   ./build.sh                 everything (installs clang-19 etc. via apt and
#                              the C sysroot under .sysroot/ when missing)
#   ./build.sh --native-only   only the native builds (gcc, and rustc for the Rust benchmarks)
#   ./build.sh NAME...         only the named fixtures (e.g. c-term rust-rayon)
#
# Idempotent: apt / rustup / sysroot work is skipped when already present.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$HERE"

NATIVE_ONLY=0
ONLY=()
for a in "$@"; do
  case "$a" in
    --native-only) NATIVE_ONLY=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "unknown option $a" >&2; exit 2 ;;
    *) ONLY+=("${a%.wasm}") ;;
  esac
done

MIB=1048576
# C fixtures and their --max-memory (default 64 MiB)
C_FIXTURES=(c-pthreads c-exit-thread c-trap-thread c-main-return c-exit-code
            c-term c-shared-file c-sleep-writer c-torn-lines c-exit-midwrite
            bench-spawn bench-burst bench-cpu bench-pingpong bench-idle bench-fdwrite
            c-spawn-limit c-churn c-many-live c-grow c-stack-overflow c-infinite
            bench-wasi-calls)
# C fixtures linked with zstd's C library (see zstd_lib below)
ZSTD_FIXTURES=(bench-zstd)
RUST_FIXTURES=(rust-threads rust-rayon rust-panic-thread bench-pipeline bench-compute sched-counter)
# Rust fixtures that also get a native build (benchmark baselines)
RUST_NATIVE=(bench-pipeline bench-compute)
# Built with full DWARF (C: -g -O0, Rust: the dev profile) for the tests of
# backtraces and debug info.
C_DEBUG_FIXTURES=(c-debug-trap)
RUST_DEBUG_FIXTURES=(rust-debug-trap)
max_memory() {
  case "$1" in
    c-many-live) echo $((128 * MIB)) ;;
    bench-idle) echo $((256 * MIB)) ;;
    bench-zstd) echo $((512 * MIB)) ;;
    *) echo $((64 * MIB)) ;;
  esac
}
wanted() {
  [ ${#ONLY[@]} -eq 0 ] && return 0
  local x; for x in "${ONLY[@]}"; do [ "$x" = "$1" ] && return 0; done
  return 1
}
log() { echo "== $*" >&2; }
any_wanted() {
  local x; for x in "$@"; do wanted "$x" && return 0; done
  return 1
}

# ---------------------------------------------------------------- zstd
# zstd's C library is not vendored here: the zstd-sys crate in the cargo
# registry carries zstd 1.5.7's sources (BSD). Only the compressor and
# decompressor, multithreaded (zstd's own pthread pool) and without the x86-64
# assembly decoder, which the wasm build cannot have either, so the native
# baseline runs the same C code.
ZSTD_VERSION=1.5.7
ZSTD_CFLAGS=(-O2 -pthread -DZSTD_MULTITHREAD -DZSTD_DISABLE_ASM)
zstd_lib() {
  local d
  for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/zstd-sys-*+zstd."$ZSTD_VERSION"/zstd/lib; do
    [ -f "$d/zstd.h" ] && { echo "$d"; return 0; }
  done
  echo "zstd $ZSTD_VERSION sources not found: expected ${CARGO_HOME:-$HOME/.cargo}/registry/src/*/zstd-sys-*+zstd.$ZSTD_VERSION/zstd/lib" >&2
  echo "('cargo fetch' in the repository root gets them: its Cargo.lock pins zstd-sys 2.1.2+zstd.$ZSTD_VERSION)" >&2
  return 1
}
# zstd_objects KIND CC FLAGS...: compiles zstd's sources once per compiler and
# flags into target/zstd-KIND/ (reused while the stamp matches) and prints the
# object files.
zstd_objects() {
  local kind=$1 cc=$2; shift 2
  local lib out stamp f
  lib=$(zstd_lib) || return 1
  out="$HERE/target/zstd-$kind"
  stamp="$lib | $("$cc" --version | head -1) | $*"
  if [ "$(cat "$out/.stamp" 2>/dev/null)" != "$stamp" ]; then
    log "compiling zstd $ZSTD_VERSION ($kind) from $lib"
    rm -rf "$out"; mkdir -p "$out"
    for f in "$lib"/common/*.c "$lib"/compress/*.c "$lib"/decompress/*.c; do
      "$cc" "$@" -I"$lib" -c -o "$out/$(basename "${f%.c}").o" "$f" || return 1
    done
    echo "$stamp" > "$out/.stamp"
  fi
  printf '%s\n' "$out"/*.o
}

# ---------------------------------------------------------------- native (gcc)
build_native() {
  mkdir -p native
  local n
  for n in "${C_FIXTURES[@]}"; do
    wanted "$n" || continue
    gcc -O2 -pthread -Wall -Wextra -o "native/$n" "c/$n.c"
  done
  if any_wanted "${ZSTD_FIXTURES[@]}"; then
    local objs
    objs=$(zstd_objects native gcc "${ZSTD_CFLAGS[@]}")
    for n in "${ZSTD_FIXTURES[@]}"; do
      wanted "$n" || continue
      # shellcheck disable=SC2086 # object paths contain no spaces
      gcc "${ZSTD_CFLAGS[@]}" -Wall -Wextra -I"$(zstd_lib)" -o "native/$n" "c/$n.c" $objs
    done
  fi
  local host
  host=$(rustc -vV | sed -n 's/^host: //p')
  for n in "${RUST_NATIVE[@]}"; do
    wanted "$n" || continue
    (cd "rust/$n" && env -u RUSTFLAGS CARGO_TARGET_DIR="$HERE/target" \
      cargo build --quiet --release --locked --target "$host")
    cp "$HERE/target/$host/release/$n" "native/$n"
  done
  log "native builds in $HERE/native/"
}

build_native
[ "$NATIVE_ONLY" = 1 ] && exit 0

# ---------------------------------------------------------------- toolchain
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

APT_PKGS=(clang-19 lld-19 libclang-rt-19-dev-wasm32 llvm-19 unzip python3-pip)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-wasip1-threads; then
  log "rustup target add wasm32-wasip1-threads"
  rustup target add wasm32-wasip1-threads
fi

# The sysroot's libc.a comes from the Rust toolchain: rebuild it when rustc changes.
SYSROOT="$HERE/.sysroot"
STAMP="$(rustc --version) | $(sha256sum setup-wasi-threads-sysroot.sh | cut -c1-16)"
if [ ! -f "$SYSROOT/lib/wasm32-wasi-threads/libc.a" ] || [ "$(cat "$SYSROOT/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  log "assembling C sysroot in $SYSROOT"
  SKIP_APT=1 RUST_TOOLCHAIN="$(rustup show active-toolchain | cut -d' ' -f1)" \
    bash ./setup-wasi-threads-sysroot.sh "$SYSROOT" >&2
  echo "$STAMP" > "$SYSROOT/.stamp"
fi

# ---------------------------------------------------------------- C -> wasm
for n in "${C_FIXTURES[@]}"; do
  wanted "$n" || continue
  clang-19 --target=wasm32-wasi-threads -pthread --sysroot="$SYSROOT" -O2 -Wall -Wextra \
    -o "$n.wasm" "c/$n.c" \
    -Wl,--import-memory,--export-memory,--max-memory="$(max_memory "$n")" -Wl,--strip-debug
done
if any_wanted "${ZSTD_FIXTURES[@]}"; then
  objs=$(zstd_objects wasm clang-19 --target=wasm32-wasi-threads --sysroot="$SYSROOT" "${ZSTD_CFLAGS[@]}")
  for n in "${ZSTD_FIXTURES[@]}"; do
    wanted "$n" || continue
    # shellcheck disable=SC2086 # object paths contain no spaces
    clang-19 --target=wasm32-wasi-threads --sysroot="$SYSROOT" "${ZSTD_CFLAGS[@]}" -Wall -Wextra -I"$(zstd_lib)" \
      -o "$n.wasm" "c/$n.c" $objs \
      -Wl,--import-memory,--export-memory,--max-memory="$(max_memory "$n")" -Wl,--strip-debug
  done
fi
for n in "${C_DEBUG_FIXTURES[@]}"; do
  wanted "$n" || continue
  # Relative source paths in the DWARF, so the file names no build directory.
  (cd c && clang-19 --target=wasm32-wasi-threads -pthread --sysroot="$SYSROOT" -g -O0 -Wall -Wextra -fdebug-prefix-map="$HERE/c"=. \
    -o "../$n.wasm" "$n.c" -Wl,--import-memory,--export-memory,--max-memory="$(max_memory "$n")")
done
log "C fixtures built"

# ---------------------------------------------------------------- Rust -> wasm
# Each crate is its own workspace; .cargo/config.toml sets target + rustflags.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_TARGET
export CARGO_TARGET_DIR="$HERE/target"
for n in "${RUST_FIXTURES[@]}"; do
  wanted "$n" || continue
  (cd "rust/$n" && cargo build --quiet --release --locked)
  cp "$CARGO_TARGET_DIR/wasm32-wasip1-threads/release/$n.wasm" "$n.wasm"
done
for n in "${RUST_DEBUG_FIXTURES[@]}"; do
  wanted "$n" || continue
  (cd "rust/$n" && cargo build --quiet --locked)
  cp "$CARGO_TARGET_DIR/wasm32-wasip1-threads/debug/$n.wasm" "$n.wasm"
done
log "Rust fixtures built"

# ---------------------------------------------------------------- check
INSPECT="$HERE/../../shared/toolchain/wasm_inspect.py"
if [ -f "$INSPECT" ] && command -v python3 >/dev/null; then
  for f in *.wasm; do
    wanted "${f%.wasm}" || continue
    python3 "$INSPECT" "$f" --check-wasi-threads >/dev/null || { echo "wasi-threads check failed: $f" >&2; exit 1; }
  done
  log "wasm_inspect --check-wasi-threads: all OK"
fi
ls -l *.wasm >&2
