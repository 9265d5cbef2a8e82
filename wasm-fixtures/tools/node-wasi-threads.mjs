#!/usr/bin/env node
// Minimal wasi-threads runner on Node's built-in WASI (node >= 20), used only to
// sanity-check the fixtures when no Wasmtime-based host is at hand.
//   node node-wasi-threads.mjs [--dir HOST::GUEST]... FILE.wasm [ARGS...]
// Every wasm thread (including the one running _start) runs in its own
// worker_thread; the Node main thread only spawns workers and exits.
// Exit code: proc_exit code, 0 when _start returns, 134 on a trap.
// LIMITATION: each worker has its own WASI fd table (fds opened by one thread
// are not visible to another), unlike a real wasi-threads host.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

function memoryImportLimits(bytes) {
  let p = 8;
  const uleb = () => { let r = 0, s = 0, b; do { b = bytes[p++]; r += (b & 0x7f) * 2 ** s; s += 7; } while (b & 0x80); return r; };
  while (p < bytes.length) {
    const id = bytes[p++]; const size = uleb(); const end = p + size;
    if (id === 2) {
      const n = uleb();
      for (let i = 0; i < n; i++) {
        const ml = uleb(); p += ml; const nl = uleb(); p += nl;
        const kind = bytes[p++];
        if (kind === 0) uleb();
        else if (kind === 1) { p++; const f = bytes[p++]; uleb(); if (f & 1) uleb(); }
        else if (kind === 2) { const f = bytes[p++]; const min = uleb(); const max = (f & 1) ? uleb() : undefined; return { min, max, shared: !!(f & 2) }; }
        else if (kind === 3) { p += 2; }
      }
    }
    p = end;
  }
  return null;
}

// process.exit() waits for workers stuck in blocking host calls (e.g. nanosleep),
// so the runner runs in a child process that reports its exit code on fd 3 and
// then SIGKILLs itself; the parent exits with that code.
const hardExit = (code) => { fs.writeSync(3, `${code}\n`); process.kill(process.pid, 'SIGKILL'); };

if (isMainThread && !process.env.NODE_WASI_THREADS_CHILD) {
  const { spawn } = await import('node:child_process');
  const child = spawn(process.execPath, ['--no-warnings', fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: ['inherit', 'inherit', 'inherit', 'pipe'],
    env: { ...process.env, NODE_WASI_THREADS_CHILD: '1', NODE_NO_WARNINGS: '1' },
  });
  let out = '';
  child.stdio[3].on('data', (d) => { out += d; });
  child.on('close', (code, signal) => {
    const m = /^(\d+)/.exec(out);
    process.exit(m ? Number(m[1]) : code ?? 128 + (signal === 'SIGKILL' ? 9 : 0));
  });
  for (const s of ['SIGTERM', 'SIGINT']) process.on(s, () => child.kill('SIGKILL'));
} else if (isMainThread) {
  const argv = process.argv.slice(2);
  const preopens = {};
  while (argv[0] === '--dir') { const [h, g] = argv[1].split('::'); preopens[g ?? h] = h; argv.splice(0, 2); }
  const file = argv[0];
  const bytes = fs.readFileSync(file);
  const module = new WebAssembly.Module(bytes);
  const lim = memoryImportLimits(bytes);
  const memory = new WebAssembly.Memory({ initial: lim.min, maximum: lim.max, shared: true });
  const tidCounter = new Int32Array(new SharedArrayBuffer(4));
  const common = { module, memory, tidCounter, args: argv, preopens, env: {} };
  const self = fileURLToPath(import.meta.url);
  const spawn = (data) => {
    const w = new Worker(self, { workerData: { ...common, ...data } });
    w.on('message', (m) => {
      if (m.spawn !== undefined) spawn({ tid: m.spawn, arg: m.arg });
      else if (m.exit !== undefined) hardExit(m.exit);
      else if (m.trap !== undefined) { fs.writeSync(2, `trap in thread ${m.tid}: ${m.trap}\n`); hardExit(134); }
    });
    w.on('error', (e) => { fs.writeSync(2, `worker error: ${e}\n`); hardExit(134); });
  };
  spawn({ tid: 0 });
} else {
  const { WASI } = await import('node:wasi');
  const { module, memory, tidCounter, args, preopens, env, tid, arg } = workerData;
  const wasi = new WASI({ version: 'preview1', args, env, preopens, returnOnExit: false });
  const imports = wasi.getImportObject();
  const parkForever = () => { const a = new Int32Array(new SharedArrayBuffer(4)); for (;;) Atomics.wait(a, 0, 0); };
  imports.wasi_snapshot_preview1.proc_exit = (code) => { parentPort.postMessage({ exit: code }); parkForever(); };
  imports.env = { memory };
  imports.wasi = {
    'thread-spawn': (startArg) => {
      const t = Atomics.add(tidCounter, 0, 1) + 1;
      parentPort.postMessage({ spawn: t, arg: startArg });
      return t;
    },
  };
  const instance = new WebAssembly.Instance(module, imports);
  try {
    if (tid === 0) {
      wasi.start({ exports: { memory, _start: instance.exports._start } });
      parentPort.postMessage({ exit: 0 });
    } else {
      wasi.initialize({ exports: { memory, _initialize() {} } });
      instance.exports.wasi_thread_start(tid, arg);
    }
  } catch (e) {
    parentPort.postMessage({ trap: String(e), tid });
    parkForever();
  }
}
