"""Larger than RAM: decode on the disk tier against llama.cpp (mmap, its defaults) in one run, under the
same memory cgroup (v1; the page cache is charged to it) and blkio read throttle, page cache dropped
before every run, and the throttled disk's sequential O_DIRECT read bandwidth measured in the same run,
so each result is also a share of the disk's limit (bytes read per token x tok/s / bandwidth).

    sudo KR_EXT_DIR=build/dev python bench/bench_disk_tier.py --model FILE.gguf \\
        [--mem-limit 4.5GiB --read-bps 400e6 --ram-budget 3.6GiB --tokens 48 --prompt 8 --threads 2]

Every run is a child process that first moves itself into the cgroups (so nothing of the parent is
charged). Both engines decode the same teacher-forced token ids one at a time. Our logits (sha256 of each
step) are compared with the same engine's run without the limits (no cgroup, same flags). Needs root and
cgroup v1 (`/sys/fs/cgroup/memory`, `/sys/fs/cgroup/blkio`); llama.cpp through `llama-cpp-python`
(optional: skipped with a note when it is not installed). One JSON line per run in
bench/results/disk_tier.jsonl. The K2-shaped file (13.3 GB): `kimi-runtime synth k2-slice --layers 4
--experts 384 --recipe ud-iq1_s FILE.gguf`. Use a file no other process keeps mapped: its pages survive
drop_caches (the bench reports how much of the file was still cached before each run).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

CG = "/sys/fs/cgroup"
GROUP = "kr_disk_bench"
RESULTS = Path(__file__).resolve().parent / "results" / "disk_tier.jsonl"


# ---- cgroups and the page cache (parent side)

def parse_size(text: str) -> int:
    from kimi_runtime.experts.placement import parse_size as ps

    return ps(text)


def device_of(path: str) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def setup_cgroups(mem_limit: int, read_bps: int, dev: str) -> dict[str, str]:
    mem, blk = f"{CG}/memory/{GROUP}", f"{CG}/blkio/{GROUP}"
    for d in (mem, blk):
        os.makedirs(d, exist_ok=True)
    Path(mem, "memory.limit_in_bytes").write_text(str(mem_limit))
    Path(blk, "blkio.throttle.read_bps_device").write_text(f"{dev} {read_bps}")
    return {"memory": mem, "blkio": blk}


def teardown_cgroups(groups: dict[str, str]) -> None:
    for d in groups.values():
        try:
            os.rmdir(d)
        except OSError as e:
            print(f"note: could not remove cgroup {d}: {e}", file=sys.stderr)


def drop_caches() -> Optional[str]:
    """None when the page cache was dropped, else why not (said in the results)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3")
        return None
    except OSError as e:
        return f"drop_caches failed: {e}"


def cached_fraction(path: str) -> float:
    """Share of the file's pages in the page cache (mincore over a fresh mapping). Pages another
    process keeps mapped survive drop_caches: a file shared with a running program is no cold file."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return float("nan")
        n = (size + page - 1) // page
        vec = (ctypes.c_ubyte * n)()
        rc = libc.mincore(ctypes.c_void_p(addr), size, vec)
        libc.munmap(ctypes.c_void_p(addr), size)
        if rc != 0:
            return float("nan")
        return sum(b & 1 for b in vec) / n
    finally:
        os.close(fd)


def run_child(kind: str, args: argparse.Namespace, groups: Optional[dict[str, str]]) -> dict[str, Any]:
    if groups:
        Path(groups["memory"], "memory.max_usage_in_bytes").write_text("0")
    note = drop_caches()
    cached = cached_fraction(args.model)
    cmd = [sys.executable, __file__, "--child", kind, "--model", args.model, "--tokens", str(args.tokens),
           "--prompt", str(args.prompt), "--threads", str(args.threads), "--ram-budget", args.ram_budget,
           "--seq-bytes", args.seq_bytes, "--seed", str(args.seed), "--readers", str(args.readers)]
    if args.no_prefetch:
        cmd.append("--no-prefetch")
    if groups:
        cmd += ["--join", groups["memory"], groups["blkio"]]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        res: dict[str, Any] = {"error": f"exit {r.returncode}: {r.stderr.strip()[-1500:]}"}
    else:
        res = json.loads(lines[-1])
    res.update(kind=kind, limited=bool(groups), wall_s=wall, file_cached_before=cached)
    if note:
        res["page_cache"] = note
    if groups:
        res["cgroup_peak_bytes"] = int(Path(groups["memory"], "memory.max_usage_in_bytes").read_text())
        res["cgroup_failcnt"] = int(Path(groups["memory"], "memory.failcnt").read_text())
    return res


# ---- children

def join(paths: list[str]) -> None:
    for d in paths:
        Path(d, "cgroup.procs").write_text(str(os.getpid()))


def token_ids(n_vocab: int, n: int, seed: int) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randrange(1, n_vocab) for _ in range(n)]


def peak_rss() -> int:
    from kimi_runtime.experts.tiers import peak_rss_bytes

    return peak_rss_bytes()


def child_seq_read(args: argparse.Namespace) -> dict[str, Any]:
    """One sequential stream of 8 MiB O_DIRECT reads from the start of the model file."""
    total = min(parse_size(args.seq_bytes), os.path.getsize(args.model) // (8 << 20) * (8 << 20))
    fd = os.open(args.model, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 8 << 20)
    t0 = time.perf_counter()
    done = 0
    with memoryview(buf) as mv:
        while done < total:
            n = os.preadv(fd, [mv], done)
            if n <= 0:
                break
            done += n
    dt = time.perf_counter() - t0
    os.close(fd)
    return {"bytes": done, "seconds": dt, "bytes_per_s": done / dt}


def child_stream(args: argparse.Namespace) -> dict[str, Any]:
    """The RAM tier's readers alone: prefetch 64 experts spread over the file into 64 slots and wait,
    for 1, 4 and 8 readers (different experts each time): MB/s the tier streams at."""
    from kimi_runtime.experts.cache import ExpertCache, store_from_model
    from kimi_runtime.model.weights import GGUFSource

    model = GGUFSource(args.model).model
    layers = list(model.config.moe_layers)
    keys = [(l, e) for l in layers for e in range(model.config.n_expert)]
    out = {}
    for i, readers in enumerate((1, 4, 8)):
        store = store_from_model(model, mode="direct")
        cache = ExpertCache(store, 64, n_readers=readers)
        pick = keys[i::3][::max(1, len(keys) // 3 // 64)][:64]
        t0 = time.perf_counter()
        for l, e in pick:
            cache.prefetch(l, [e])
        cache.wait_idle()
        dt = time.perf_counter() - t0
        out[str(readers)] = {"bytes": store.bytes_read, "seconds": dt, "bytes_per_s": store.bytes_read / dt,
                             "direct": store.direct_active}
        del cache, store
    return {"engine": "ram tier readers", "by_readers": out}


def child_ours(args: argparse.Namespace) -> dict[str, Any]:
    from kimi_runtime.engine import Engine

    lines: list[str] = []
    t0 = time.perf_counter()
    eng = Engine.from_gguf(args.model, ram_budget=args.ram_budget, prefetch=not args.no_prefetch,
                           n_readers=args.readers, threads=args.threads,
                           n_ctx=args.prompt + args.tokens + 8, report=lines.append)
    load_s = time.perf_counter() - t0
    ids = token_ids(eng.config.n_vocab, args.prompt + args.tokens, args.seed)
    t0 = time.perf_counter()
    eng.prefill(ids[:args.prompt])
    prefill_s = time.perf_counter() - t0
    eng.reset_stats()
    hashes = []
    r0 = _io_read_bytes()
    t0 = time.perf_counter()
    for t in ids[args.prompt:]:
        hashes.append(hashlib.sha256(eng.decode(t).numpy().tobytes()).hexdigest()[:16])
    dt = time.perf_counter() - t0
    proc_read = _io_read_bytes() - r0
    st = eng.stats()
    tiers = st["tiers"]
    n = args.tokens
    return {"engine": "kimi-runtime", "tok_s": n / dt, "decode_s": dt, "prefill_s": prefill_s, "load_s": load_s,
            "peak_rss_bytes": peak_rss(), "ram_budget_bytes": parse_size(args.ram_budget),
            "disk_bytes_per_token": tiers["disk"]["bytes"] / n, "hit_rate": st["hit_rate"],
            "proc_read_bytes_per_token": proc_read / n,  # every read of the process (page faults too)
            "prefetch_accuracy": st.get("prefetch_accuracy"), "tiers": tiers, "hashes": hashes,
            "cost_model": st["cost_model"], "placement": lines}


def child_llama(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import llama_cpp  # noqa: PLC0415
    except ImportError:
        return {"engine": "llama.cpp", "skipped": "llama-cpp-python is not installed"}

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=args.prompt + args.tokens + 8, n_threads=args.threads,
                          verbose=False)
    load_s = time.perf_counter() - t0
    ids = token_ids(llm.n_vocab(), args.prompt + args.tokens, args.seed)
    t0 = time.perf_counter()
    llm.eval(ids[:args.prompt])
    prefill_s = time.perf_counter() - t0
    r0 = _io_read_bytes()  # what this process made the block layer read (its page faults), decode only
    t0 = time.perf_counter()
    for t in ids[args.prompt:]:
        llm.eval([t])
    dt = time.perf_counter() - t0
    return {"engine": "llama.cpp", "version": llama_cpp.__version__, "tok_s": args.tokens / dt, "decode_s": dt,
            "prefill_s": prefill_s, "load_s": load_s, "peak_rss_bytes": peak_rss(),
            "disk_bytes_per_token": (_io_read_bytes() - r0) / args.tokens}


def child_main(args: argparse.Namespace) -> None:
    if args.join:
        join(args.join)
    fn = {"seqread": child_seq_read, "stream": child_stream, "ours": child_ours, "llama": child_llama}[args.child]
    before = _io_read_bytes()
    res = fn(args)
    res["process_read_bytes"] = _io_read_bytes() - before
    print(json.dumps(res))


def _io_read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


# ---- the run

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/work/bigfiles/disk/k2-4L-384E-ud-iq1_s.gguf")
    ap.add_argument("--mem-limit", default="4.5GiB", help="memory cgroup limit (page cache included)")
    ap.add_argument("--read-bps", type=float, default=400e6, help="blkio read throttle, bytes/s")
    ap.add_argument("--ram-budget", default="3.6GiB", help="our --ram-budget inside the cgroup")
    ap.add_argument("--tokens", type=int, default=48, help="decode tokens (>= 48 for a steady state)")
    ap.add_argument("--prompt", type=int, default=8, help="prompt tokens before decoding")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq-bytes", default="2GiB", help="bytes of the sequential bandwidth read")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--readers", type=int, default=4, help="our reader threads")
    ap.add_argument("--no-prefetch", action="store_true", help="ours without the next-layer prefetcher")
    ap.add_argument("--only", default=None, help="comma list of runs (seqread,stream,ours,llama)")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--skip-unlimited", action="store_true", help="skip the logits check run without limits")
    ap.add_argument("--child", choices=("seqread", "stream", "ours", "llama"), help=argparse.SUPPRESS)
    ap.add_argument("--join", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return
    if not os.path.exists(args.model):
        sys.exit(f"{args.model}: not found; write one with `kimi-runtime synth k2-slice --layers 4 --experts 384 "
                 f"--recipe ud-iq1_s {args.model}`")
    if os.geteuid() != 0 or not os.path.isdir(f"{CG}/memory") or not os.path.isdir(f"{CG}/blkio"):
        sys.exit("needs root and cgroup v1 memory + blkio controllers under /sys/fs/cgroup")
    dev = device_of(args.model)
    size = os.path.getsize(args.model)
    mem = parse_size(args.mem_limit)
    groups = setup_cgroups(mem, int(args.read_bps), dev)
    meta = {"model": args.model, "file_bytes": size, "mem_limit": mem, "read_bps_throttle": int(args.read_bps),
            "device": dev, "tokens": args.tokens, "prompt": args.prompt, "threads": args.threads,
            "ram_budget": args.ram_budget, "readers": args.readers, "prefetch": not args.no_prefetch,
            "host": platform.node(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"file {size / 1e9:.1f} GB in a {mem / 2**30:.2f} GiB memory cgroup, reads throttled to "
          f"{args.read_bps / 1e6:.0f} MB/s on {dev}", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    try:
        order = ["seqread", "stream", "ours"] + ([] if args.skip_llama else ["llama"])
        if args.only:
            order = [k for k in order if k in args.only.split(",")]
        for kind in order:
            print(f"running {kind} (limited) ...", file=sys.stderr, flush=True)
            runs.append(run_child(kind, args, groups))
            print(f"  {json.dumps({k: v for k, v in runs[-1].items() if k not in ('hashes', 'tiers', 'placement')})[:400]}",
                  file=sys.stderr)
    finally:
        teardown_cgroups(groups)
    if not args.skip_unlimited:
        print("running ours without limits (logits check) ...", file=sys.stderr, flush=True)
        runs.append(run_child("ours", args, None))
    report(meta, runs)


def report(meta: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    bw = next((r.get("bytes_per_s") for r in runs if r["kind"] == "seqread"), None)
    ours = next((r for r in runs if r["kind"] == "ours" and r["limited"]), None)
    free = next((r for r in runs if r["kind"] == "ours" and not r["limited"]), None)
    llama = next((r for r in runs if r["kind"] == "llama"), None)
    stream = next((r for r in runs if r["kind"] == "stream"), None)
    out = dict(meta)
    out["disk_bw_bytes_per_s"] = bw
    print(f"\n{meta['file_bytes'] / 1e9:.1f} GB K2-shaped file, {meta['mem_limit'] / 2**30:.2f} GiB cgroup, reads "
          f"throttled to {meta['read_bps_throttle'] / 1e6:.0f} MB/s; sequential O_DIRECT read: "
          f"{(bw or 0) / 1e6:.0f} MB/s; {meta['tokens']} decode tokens, {meta['threads']} threads")
    print("| engine | decode tok/s | disk MB/token | share of disk bw | peak RSS GiB | cgroup peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in (ours, llama):
        if r is None or "error" in r or "skipped" in r:
            if r is not None:
                print(f"| {r.get('engine', r['kind'])} | {r.get('error') or r.get('skipped')} |||||")
            continue
        per_tok = r["disk_bytes_per_token"]  # decode only: ours from the disk tier, llama.cpp from /proc/self/io
        share = per_tok * r["tok_s"] / bw if bw else float("nan")
        r["disk_share"] = share
        print(f"| {r['engine']} | {r['tok_s']:.3f} | {per_tok / 1e6:.0f} | {100 * share:.0f}% | "
              f"{r['peak_rss_bytes'] / 2**30:.2f} | {r.get('cgroup_peak_bytes', 0) / 2**30:.2f} |")
    if stream and "by_readers" in stream and bw:
        parts = [f"{k} readers {v['bytes_per_s'] / 1e6:.0f} MB/s ({100 * v['bytes_per_s'] / bw:.0f}%)"
                 for k, v in stream["by_readers"].items()]
        out["stream_share"] = {k: v["bytes_per_s"] / bw for k, v in stream["by_readers"].items()}
        print("RAM tier streaming (O_DIRECT, 64 experts): " + ", ".join(parts))
    if ours and llama and "tok_s" in ours and "tok_s" in llama:
        out["speedup_vs_llama"] = ours["tok_s"] / llama["tok_s"]
        print(f"ours / llama.cpp decode: {out['speedup_vs_llama']:.2f}x")
    if ours and free and "hashes" in ours and "hashes" in free:
        out["logits_equal_unlimited"] = ours["hashes"] == free["hashes"]
        print(f"logits equal to the run without limits: {out['logits_equal_unlimited']} "
              f"(unlimited: {free['tok_s']:.3f} tok/s)")
    if ours and "peak_rss_bytes" in ours:
        out["rss_within_budget"] = ours["peak_rss_bytes"] <= ours["ram_budget_bytes"]
        print(f"peak RSS {ours['peak_rss_bytes'] / 2**30:.2f} GiB, budget "
              f"{ours['ram_budget_bytes'] / 2**30:.2f} GiB: {'within' if out['rss_within_budget'] else 'OVER'}")
    worst = max((r.get("file_cached_before", 0.0) for r in runs), default=0.0)
    out["file_cached_before_max"] = worst
    print(f"page cache dropped before every run; at most {100 * worst:.1f}% of the file was still cached"
          + (" (mapped by another process: not a cold file!)" if worst > 0.02 else ""))
    notes = {r.get("page_cache") for r in runs if r.get("page_cache")}
    for n in notes:
        print(f"note: {n}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps({**out, "runs": runs}) + "\n")
    print(f"(results appended to {RESULTS})")


if __name__ == "__main__":
    main()
