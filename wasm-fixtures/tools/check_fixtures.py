#!/usr/bin/env python3
"""Run every fixture with a wasi-threads runner and check exit codes / output
against what wasm-fixtures/README.md documents. Stdlib only.

usage: check_fixtures.py [--runner CMD] [--native] [--quick] [--only NAME,...]
  --runner CMD  command prefix that runs `CMD [--dir HOST::GUEST]... FILE.wasm ARGS`
                (default: node tools/node-wasi-threads.mjs; e.g.
                 --runner /work/main/target/release/wasi-threads)
  --native      run the native gcc builds in native/ instead (C fixtures only;
                traps show up as signals there and are accepted as such)
  --quick       smaller N for the heavy ones (churn, many-live, spawn-limit)
Prints one PASS/FAIL/SKIP line per check and a final 'N passed, N failed' line.
"""
import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAP = 134


class Ctx:
    def __init__(self, args):
        self.native = args.native
        self.quick = args.quick
        self.runner = shlex.split(args.runner) if args.runner else [
            "node", os.path.join(HERE, "tools", "node-wasi-threads.mjs")]
        self.is_node = not args.runner and not args.native

    def cmd(self, name, argv, dirs=()):
        if self.native:
            return [os.path.join(HERE, "native", name)] + list(argv)
        pre = []
        for host, guest in dirs:
            pre += ["--dir", f"{host}::{guest}"]
        return self.runner + pre + [os.path.join(HERE, name + ".wasm")] + list(argv)

    def run(self, name, argv=(), dirs=(), timeout=60, stdin=subprocess.DEVNULL, cwd=None):
        """Returns (rc, stdout bytes, stderr bytes, seconds); rc None on timeout."""
        t0 = time.monotonic()
        p = subprocess.Popen(self.cmd(name, argv, dirs), stdin=stdin, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=cwd, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            rc = None
        return rc, out, err, time.monotonic() - t0

    def trap_ok(self, rc):
        if self.native:
            return rc is not None and rc < 0 and -rc in (signal.SIGILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGTRAP)
        return rc == TRAP


RESULTS = []


def report(name, ok, detail=""):
    RESULTS.append(ok)
    status = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
    print(f"{status} {name}" + (f": {detail}" if detail else ""), flush=True)


def expect(c, label, name, argv=(), rc=0, stdout=None, stdout_re=None, stderr_re=None, timeout=60, dirs=(), **kw):
    r, out, err, dt = c.run(name, argv, dirs=dirs, timeout=timeout, **kw)
    problems = []
    if rc == "trap":
        if not c.trap_ok(r):
            problems.append(f"rc={r}, expected trap")
    elif r != rc:
        problems.append(f"rc={r}, expected {rc}")
    o = out.decode(errors="replace")
    e = err.decode(errors="replace")
    if stdout is not None and o != stdout:
        problems.append(f"stdout {o[:300]!r} != {stdout[:300]!r}")
    if stdout_re is not None and not re.fullmatch(stdout_re, o, re.S):
        problems.append(f"stdout {o[:300]!r} !~ {stdout_re!r}")
    if stderr_re is not None and not re.search(stderr_re, e, re.S):
        problems.append(f"stderr {e[-300:]!r} !~ {stderr_re!r}")
    report(label, not problems, "; ".join(problems) + (f" [stderr: {e[-200:]!r}]" if problems and e else "")
           if problems else f"{dt:.2f}s")
    return r, o, e


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runner")
    ap.add_argument("--native", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only")
    c = Ctx(ap.parse_args())
    only = set(ap.parse_args().only.split(",")) if ap.parse_args().only else None
    sel = lambda n: only is None or n in only  # noqa: E731
    tmp = tempfile.mkdtemp(prefix="fixtures-")

    if not c.native:
        if sel("rust-threads"):
            expect(c, "rust-threads", "rust-threads", stdout=(
                "spawn/join: [500500, 1001000, 1501500, 2002000]\n"
                "condvar handshake: 10 rounds ok\n"
                "mpsc: 1000 messages, per producer [250, 250, 250, 250], sum 124500\n"
                "scope: sum 999000\n"
                "thread_local: threads [1, 2, 3], main 99\n"
                "rust-threads ok\n"), timeout=60)
        if sel("rust-rayon"):
            expect(c, "rust-rayon", "rust-rayon", stdout=(
                "par sum 1..=1000000: 500000500000\n"
                "par filter/map sum: 166601277579\n"
                "par sort: len 1000000 sorted true min 878 max 2147476767 median 1073456353 checksum 1073899187278715\n"
                "rayon::join fib(25): 75025\n"
                "rust-rayon ok\n"), timeout=120)
        if sel("rust-panic-thread"):
            expect(c, "rust-panic-thread", "rust-panic-thread", rc="trap", stdout="spawning panicking thread\n",
                   stderr_re="deliberate panic in spawned thread")

    if sel("c-pthreads"):
        expect(c, "c-pthreads", "c-pthreads", stdout=(
            "join results: 500500 1001000 1501500 2002000\n"
            "mutex counter: 40000\n"
            "condvar queue: received 100 values, sum 5050\n"
            "thread-local: 1000 1010 1020 1030; main still 555 555\n"
            "barrier: phase sums 10 20 30, serial threads 3\n"
            "c-pthreads ok\n"))
    if sel("c-exit-thread"):
        expect(c, "c-exit-thread", "c-exit-thread", rc=17, stdout="thread calling exit(17)\n")
    if sel("c-trap-thread"):
        expect(c, "c-trap-thread", "c-trap-thread", rc="trap", stdout="thread trapping\n")
    if sel("c-main-return"):
        r = expect(c, "c-main-return", "c-main-return", rc=0, stdout="main done\n", timeout=20)
    if sel("c-exit-code"):
        expect(c, "c-exit-code", "c-exit-code", rc=42, stdout="thread ran\njoined\n")

    if sel("c-term"):
        for who in ("main", "thread"):
            for how in ("exit", "trap", "return"):
                for others in ("busy", "sleep", "wait", "read"):
                    rc = {"exit": 99, "trap": "trap", "return": 0}[how]
                    stdin = subprocess.DEVNULL
                    if others == "read":
                        rfd, wfd = os.pipe()  # write end stays open: read() blocks
                        stdin = rfd
                    try:
                        expect(c, f"c-term {who} {how} {others}", "c-term", [who, how, others], rc=rc,
                               stdout="ready\n", timeout=20, stdin=stdin)
                    finally:
                        if others == "read":
                            os.close(rfd)
                            os.close(wfd)
        expect(c, "c-term (bad args)", "c-term", ["x", "y", "z"], rc=2, stdout="")

    if sel("c-shared-file"):
        if c.is_node:
            report("c-shared-file", None, "node runner has per-thread fd tables")
        else:
            d = tempfile.mkdtemp(dir=tmp)
            path = os.path.join(d, "out.txt") if c.native else "/data/out.txt"
            expect(c, "c-shared-file", "c-shared-file", [path], dirs=[(d, "/data")], stdout=(
                "thread A: wrote 20 bytes\n"
                "thread B: wrote 20 bytes, closed fd\n"
                "main: fd closed by B is closed here too\n"
                "--- content ---\n"
                "hello from thread A\n"
                "hello from thread B\n"
                "--- end ---\n"))
    if sel("c-sleep-writer"):
        r, o, e = expect(c, "c-sleep-writer", "c-sleep-writer", stdout="".join(f"writer line {i:03d}\n" for i in range(200)),
                         stderr_re=r"200 writes took \d+ us\nsleeper slept \d+ ms\n")
        m = re.search(r"took (\d+) us", e)
        ms = re.search(r"slept (\d+) ms", e)
        report("c-sleep-writer timing (writes < 1 s, sleep >= 2 s)",
               bool(m and ms and int(m.group(1)) < 1_000_000 and int(ms.group(1)) >= 1990),
               f"writes {m and m.group(1)} us, slept {ms and ms.group(1)} ms")
    if sel("c-torn-lines"):
        r, out, err, dt = c.run("c-torn-lines", timeout=120)
        lines = out.split(b"\n")
        problems = []
        if r != 0:
            problems.append(f"rc={r}")
        if lines[-1] != b"":
            problems.append("output does not end with a newline")
        lines = lines[:-1]
        pat = re.compile(rb"T([0-7]) L(\d{4}) ([a-h]+)")
        nxt = [0] * 8
        for ln in lines:
            m = pat.fullmatch(ln)
            t = m and int(m.group(1))
            if not m or len(ln) != 59 or set(m.group(3)) != {ord("a") + t} or int(m.group(2)) != nxt[t]:
                problems.append(f"bad/out-of-order line {ln[:80]!r}")
                break
            nxt[t] += 1
        if nxt != [2000] * 8:
            problems.append(f"line counts {nxt}")
        report("c-torn-lines", not problems, "; ".join(problems) or f"16000 intact lines, {dt:.2f}s")
    if sel("c-exit-midwrite"):
        r, out, err, dt = c.run("c-exit-midwrite", timeout=60)
        problems = [] if r == 3 else [f"rc={r}"]
        m = re.search(rb"exit\(3\) after (\d+) completed lines", err)
        if not m:
            problems.append(f"stderr {err[-200:]!r}")
        if not out.endswith(b"\n"):
            problems.append(f"partial last line {out[-20:]!r}")
        lines = out.split(b"\n")[:-1]
        for i, ln in enumerate(lines):
            if ln != b"line %08d" % i:
                problems.append(f"line {i} is {ln!r}")
                break
        if m and len(lines) < int(m.group(1)):
            problems.append(f"only {len(lines)} lines on stdout, {m.group(1)} completed")
        report("c-exit-midwrite", not problems, "; ".join(problems) or f"{len(lines)} lines, main saw {m.group(1).decode()}")

    res = lambda name: rf"(RESULT {name}=\d+\n)"  # noqa: E731
    if sel("bench-spawn"):
        expect(c, "bench-spawn 200", "bench-spawn", ["200"],
               stdout_re=r"RESULT threads=200\nRESULT total_ns=\d+\nRESULT ns_per_thread=\d+\n", timeout=120)
    if sel("bench-burst"):
        expect(c, "bench-burst 64", "bench-burst", ["64"],
               stdout_re=r"RESULT threads=64\nRESULT started_ns=\d+\nRESULT total_ns=\d+\n", timeout=120)
    if sel("bench-cpu"):
        expect(c, "bench-cpu 2 1000000", "bench-cpu", ["2", "1000000"],
               stdout_re=r"RESULT threads=2\nRESULT work=1000000\nRESULT checksum=f7c389e97fb1b53b\nRESULT elapsed_ns=\d+\n")
        expect(c, "bench-cpu 3 1000000", "bench-cpu", ["3", "1000000"],
               stdout_re=r"RESULT threads=3\nRESULT work=1000000\nRESULT checksum=f7c389e97fb1b53b\nRESULT elapsed_ns=\d+\n")
    if sel("bench-zstd"):
        # The compressed bytes do not depend on the number of workers (>= 1).
        for w in ["1", "4"]:
            expect(c, f"bench-zstd compress 8 {w}", "bench-zstd", ["compress", "8", w], timeout=120,
                   stdout_re=r"RESULT input_bytes=8388608\nRESULT compressed_bytes=2429405\n"
                             r"RESULT checksum=3401395015634588287\nRESULT elapsed_ns=\d+\n")
        expect(c, "bench-zstd decompress 8 1", "bench-zstd", ["decompress", "8", "1"], timeout=120,
               stdout_re=r"RESULT input_bytes=8388608\nRESULT compressed_bytes=2429405\n"
                         r"RESULT checksum=8332443058056013911\nRESULT elapsed_ns=\d+\n")
        expect(c, "bench-zstd bad args", "bench-zstd", ["squash", "8", "1"], rc=2, stdout="",
               stderr_re=r"usage: bench-zstd")
    if sel("bench-pingpong"):
        expect(c, "bench-pingpong 2000", "bench-pingpong", ["2000"],
               stdout_re=r"RESULT rounds=2000\nRESULT total_ns=\d+\nRESULT ns_per_roundtrip=\d+\n")
    if sel("bench-idle"):
        r, o, e = expect(c, "bench-idle 20 1", "bench-idle", ["20", "1"], stdout="ready 20\n", timeout=30)
    if sel("bench-fdwrite"):
        if c.is_node:
            report("bench-fdwrite", None, "node runner has per-thread fd tables")
        else:
            d = tempfile.mkdtemp(dir=tmp)
            path = os.path.join(d, "w.out") if c.native else "/out/w.out"
            expect(c, "bench-fdwrite 4 500", "bench-fdwrite", ["4", "500", path], dirs=[(d, "/out")],
                   stdout_re=r"RESULT threads=4\nRESULT calls=500\nRESULT bytes=64000\nRESULT file_size=64000\nRESULT elapsed_ns=\d+\n")
            data = open(os.path.join(d, "w.out"), "rb").read()
            ok = len(data) == 64000 and all(re.fullmatch(rb"t000[0-3] c\d{9} \.{14}", ln) for ln in data.split(b"\n")[:-1])
            report("bench-fdwrite file content", ok, f"{len(data)} bytes")

    if sel("c-spawn-limit"):
        if c.native:
            report("c-spawn-limit", None, "no thread limit natively (try: ulimit -v 2000000)")
        else:
            expect(c, "c-spawn-limit", "c-spawn-limit", stdout_re=r"limit reached after \d+: EAGAIN\nrecovered\n", timeout=120)
    if sel("c-churn"):
        n = "2000" if c.quick or c.is_node else "100000"
        expect(c, f"c-churn {n}", "c-churn", [n], stdout=f"churned {n}\n", timeout=600)
    if sel("c-many-live"):
        n = "100" if c.quick or c.is_node else "1000"
        expect(c, f"c-many-live {n}", "c-many-live", [n], stdout=f"live {n}\n", timeout=300)
    if sel("c-grow"):
        expect(c, "c-grow", "c-grow", stdout=(
            "thread: grew memory\n"
            "main: block[0]=0 block[1048576]=3145728 block[2097151]=6291453 sum=6597066620928\n"
            "main: raw pages ok\n"))
    if sel("c-stack-overflow"):
        expect(c, "c-stack-overflow", "c-stack-overflow", rc="trap", stdout="recursing\n")
    if sel("c-infinite"):
        r, out, err, dt = c.run("c-infinite", timeout=3)
        report("c-infinite (still running after 3 s)", r is None and out == b"spinning\n", f"rc={r} out={out!r}")

    passed = sum(1 for x in RESULTS if x is True)
    failed = sum(1 for x in RESULTS if x is False)
    skipped = sum(1 for x in RESULTS if x is None)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
