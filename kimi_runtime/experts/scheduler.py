"""The hybrid expert scheduler: per MoE layer, split the experts a batch needs into hits (already in a
slot), fetches (load into a slot, compute there) and CPU misses (compute from the mmapped bytes), by a
cost model whose rates are measured once per process. Decisions only: no torch, no cache calls."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

MISS_POLICIES = ("auto", "cpu", "fetch")


@dataclass(frozen=True)
class CostModel:
    """Seconds per expert byte on each path; an expert of B bytes used by n tokens costs

    - on the CPU, from the mmapped file: B * (cpu_stream + n * cpu_token)
    - fetched: B * load (file -> slot) + B * (dev_stream + n * dev_token) (kernel on the slot).

    Streaming terms are the weight read once per batch, per-token terms the arithmetic that grows with
    the batch. With the host tier the "device" kernel is the same CPU kernel, so a fetch only pays off
    when the file is slower to read than the slots (a disk-backed mmap); with a GPU tier dev_* is small.
    """

    cpu_stream: float
    cpu_token: float
    load: float
    dev_stream: float
    dev_token: float
    source: str = "given"  # "measured" or "given" (tests, what-if studies)
    margin: float = 0.0  # a fetch must beat the CPU by this fraction (measured rates carry noise)

    def cpu_seconds(self, nbytes: int, n_tok: int) -> float:
        return nbytes * (self.cpu_stream + n_tok * self.cpu_token)

    def fetch_seconds(self, nbytes: int, n_tok: int) -> float:
        return nbytes * (self.load + self.dev_stream + n_tok * self.dev_token)

    def fetch_pays(self, nbytes: int, n_tok: int) -> bool:
        return self.fetch_seconds(nbytes, n_tok) < (1 - self.margin) * self.cpu_seconds(nbytes, n_tok)

    def hit_pays(self) -> bool:
        """Whether a slot hit beats a CPU miss for one token (by the margin): only then is loading a
        CPU-computed miss into a slot for later steps worth its bandwidth."""
        return self.dev_stream + self.dev_token < (1 - self.margin) * (self.cpu_stream + self.cpu_token)

    def breakeven_tokens(self) -> float:
        """Tokens per expert above which fetching beats the CPU (inf when it never does)."""
        keep = 1 - self.margin
        slope = keep * self.cpu_token - self.dev_token
        gap = self.load + self.dev_stream - keep * self.cpu_stream
        if gap <= 0:
            return 0.0
        return gap / slope if slope > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        """Effective rates for one token (GB/s of expert bytes), the load rate, the per-token slopes
        and the break-even batch, for reports. (The stream / per-token split is a two-point fit, exact
        at 1 and 4 tokens; only sums of the two are physical.)"""
        gbs = lambda s: (1e-9 / s) if s > 0 else float("inf")  # noqa: E731
        return {"cpu_gbs": gbs(self.cpu_stream + self.cpu_token), "load_gbs": gbs(self.load),
                "dev_gbs": gbs(self.dev_stream + self.dev_token), "cpu_token_ns_per_kb": self.cpu_token * 1e12,
                "dev_token_ns_per_kb": self.dev_token * 1e12, "breakeven_tokens": self.breakeven_tokens(),
                "source": self.source}


# ---- start-up measurement

_MEASURED: dict[tuple, CostModel] = {}


def _best_of(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm: page cache, thread pool, allocator
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


MEASURE_MARGIN = 0.25
"""Measured rates must differ by this much to steer a decision: on the shared 2-core dev box repeated
measurements of the same kernel on file and slot bytes (physically alike: both RAM) spread by up to ~20%."""


def _kernel_rates(kernels: Any, experts: Sequence[Sequence[np.ndarray]], qtypes: Sequence[Any], n_ff: int,
                  n_embd: int, n_big: int, reps: int) -> tuple[float, float]:
    """(stream, per-token) seconds per byte of the fused MoE kernel over these experts (every token
    routed to all of them), fitted from one call with 1 token and one with n_big tokens."""
    nbytes = sum(int(v.nbytes) for ex in experts for v in ex)
    refs = [kernels.expert_ref(ex[0], ex[1], ex[2], tuple(qtypes), n_ff, n_embd) for ex in experts]
    rng = np.random.default_rng(0)
    times = []
    for n in (1, n_big):
        x = rng.standard_normal((n, n_embd), dtype=np.float32)
        sel = np.tile(np.arange(len(refs), dtype=np.int32), (n, 1))
        w = np.ones(sel.shape, np.float32)
        times.append(_best_of(lambda: kernels.moe_ffn(x, refs, sel, w), reps))
    per_tok = max(times[1] - times[0], 0.0) / (n_big - 1)
    stream = max(times[0] - per_tok, times[0] * 0.1)
    return stream / nbytes, per_tok / nbytes


def measure_cost_model(experts: Sequence[Sequence[np.ndarray]], qtypes: Sequence[Any], n_ff: int, n_embd: int,
                       *, key: Optional[tuple] = None, n_big: int = 4, reps: int = 3,
                       working_set: int = 64 << 20) -> CostModel:
    """Time the real kernel on experts straight from their mmapped (gate, up, down) views, the copy of
    those bytes into slot-like buffers, and the kernel again on the copies (the host tier's "device").

    Up to `working_set` bytes of the given experts are used, more than a server CPU's last-level cache,
    so the rates are those of RAM as in decode, not of a warm cache (2 x the dev box's 32 MiB L3). Cached per process under `key`
    (e.g. the file path); ~0.6 s on the medium preset.
    """
    if key is not None and key in _MEASURED:
        return _MEASURED[key]
    from kimi_runtime import kernels  # noqa: PLC0415 - native; imported only when measuring

    chosen: list[Sequence[np.ndarray]] = []
    total = 0
    for ex in experts:
        if chosen and total >= working_set:
            break
        chosen.append([v.reshape(-1).view(np.uint8) for v in ex])
        total += sum(int(v.nbytes) for v in ex)
    slot = np.empty(total + 64, np.uint8)
    slot[:] = 0  # pre-touched, as the native pool's slots are
    flat = [v for ex in chosen for v in ex]
    offs = np.cumsum([0] + [int(v.nbytes) for v in flat])

    def copy() -> None:
        for i, v in enumerate(flat):
            np.copyto(slot[offs[i]:offs[i + 1]], v)

    load = _best_of(copy, reps) / total
    slot_views = [slot[offs[i]:offs[i + 1]] for i in range(len(flat))]
    slot_experts = [slot_views[3 * j:3 * j + 3] for j in range(len(chosen))]
    # Alternate file and slot runs and keep each side's best, so neither gains from running second.
    runs: dict[str, list[tuple[float, float]]] = {"cpu": [], "dev": []}
    for _ in range(2):
        runs["cpu"].append(_kernel_rates(kernels, chosen, qtypes, n_ff, n_embd, n_big, reps))
        runs["dev"].append(_kernel_rates(kernels, slot_experts, qtypes, n_ff, n_embd, n_big, reps))
    (cpu_s, cpu_t), (dev_s, dev_t) = (min(runs[k], key=lambda st: st[0] + st[1]) for k in ("cpu", "dev"))
    cm = CostModel(cpu_s, cpu_t, load, dev_s, dev_t, source="measured", margin=MEASURE_MARGIN)
    if key is not None:
        _MEASURED[key] = cm
    return cm


# ---- decisions


@dataclass
class LayerPlan:
    """What to do with each distinct expert of one layer's batch (ids ascending in each list)."""

    hits: list[int] = field(default_factory=list)
    fetch: list[int] = field(default_factory=list)
    cpu: list[int] = field(default_factory=list)
    admit: list[int] = field(default_factory=list)  # CPU misses to load in the background afterwards

    @property
    def slotted(self) -> list[int]:
        """Experts that run from slots (hits and fetches), ascending."""
        return sorted(self.hits + self.fetch)


@dataclass
class _LayerCounts:
    hits: int = 0
    cpu_misses: int = 0
    fetched: int = 0
    admitted: int = 0
    est_seconds: float = 0.0  # what the cost model predicted for this layer's misses


class ExpertScheduler:
    """Decides hit / fetch / CPU per expert, and counts the decisions per layer.

    miss_policy: "auto" (the cost model), "cpu" (never fetch) or "fetch" (always fetch while slots last:
    a plain demand-filled cache). `admit`: after computing a miss on the CPU, load it into a slot in the
    background so later steps hit (off the critical path: a copy engine on a GPU, the loader thread on
    the host tier); "auto" admits only when the cost model says a hit is cheaper than a CPU miss.
    `cpu_layers`: layers whose experts are placed on the CPU (never cached).
    """

    def __init__(self, cost: CostModel, expert_bytes: Mapping[int, int], *, miss_policy: str = "auto",
                 admit: Union[bool, str] = "auto", cpu_layers: Sequence[int] = ()) -> None:
        if miss_policy not in MISS_POLICIES:
            raise ValueError(f"miss_policy must be one of {', '.join(MISS_POLICIES)} (got {miss_policy!r})")
        if admit not in (True, False, "auto"):
            raise ValueError(f"admit must be True, False or 'auto' (got {admit!r})")
        self.cost = cost
        self.expert_bytes = dict(expert_bytes)
        self.miss_policy = miss_policy
        self.admit = cost.hit_pays() if admit == "auto" else bool(admit)
        self.cpu_layers = frozenset(int(l) for l in cpu_layers)
        self._counts: dict[int, _LayerCounts] = {}

    def cached(self, layer: int) -> bool:
        """Whether this layer's experts go through the cache at all."""
        return layer not in self.cpu_layers

    def plan(self, layer: int, tokens_per_expert: Mapping[int, int], resident: Callable[[int], bool],
             room: int) -> LayerPlan:
        """Split the experts of one layer's batch.

        tokens_per_expert: expert -> number of tokens routed to it; resident(e): already in a slot (or
        loading there); room: slots this call may fill with fetches (free or evictable, after the hits
        are pinned). Fetches beyond `room` fall back to the CPU, biggest savings first.
        """
        c = self._counts.setdefault(layer, _LayerCounts())
        p = LayerPlan()
        nb = self.expert_bytes.get(layer, 0)
        if not self.cached(layer):
            p.cpu = sorted(tokens_per_expert)
            c.cpu_misses += len(p.cpu)
            c.est_seconds += sum(self.cost.cpu_seconds(nb, n) for n in tokens_per_expert.values())
            return p
        misses: list[tuple[float, int]] = []
        for e in sorted(tokens_per_expert):
            if resident(e):
                p.hits.append(e)
                continue
            n = tokens_per_expert[e]
            saving = self.cost.cpu_seconds(nb, n) - self.cost.fetch_seconds(nb, n)
            if self.miss_policy == "fetch" or (self.miss_policy == "auto" and self.cost.fetch_pays(nb, n)):
                misses.append((saving, e))
            else:
                p.cpu.append(e)
        misses.sort(key=lambda se: (-se[0], se[1]))  # the biggest savings get the slots
        room = max(int(room), 0)
        p.fetch = sorted(e for _, e in misses[:room])
        p.cpu = sorted(p.cpu + [e for _, e in misses[room:]])
        if self.admit and self.miss_policy != "cpu":
            p.admit = list(p.cpu)
        c.hits += len(p.hits)
        c.fetched += len(p.fetch)
        c.cpu_misses += len(p.cpu)
        c.admitted += len(p.admit)
        c.est_seconds += sum(self.cost.fetch_seconds(nb, tokens_per_expert[e]) for e in p.fetch)
        c.est_seconds += sum(self.cost.cpu_seconds(nb, tokens_per_expert[e]) for e in p.cpu)
        return p

    def stats(self, layer: int) -> dict[str, Any]:
        """hits, cpu_misses, fetched, admitted, est_seconds of one layer (zeros if never planned)."""
        c = self._counts.get(layer, _LayerCounts())
        return {"hits": c.hits, "cpu_misses": c.cpu_misses, "fetched": c.fetched, "admitted": c.admitted,
                "est_seconds": c.est_seconds}

    def reset_stats(self) -> None:
        self._counts.clear()


# ---- the disk under the RAM tier

_DISK_MEASURED: dict[tuple, dict[str, Any]] = {}
ALIGN = 4096


def spread_ranges(paths: Sequence[str], store: Any, layers: Sequence[int], n: int = 8) -> list[tuple[str, int, int]]:
    """(path, offset, nbytes) of the gate/up/down slices of n experts spread evenly over `layers` x experts:
    far apart in the file, so neither readahead nor the disk's own cache serves one read from another."""
    keys = [(l, e) for l in layers for e in range(store.n_experts) if store.has(l, e)]
    if not keys:
        return []
    step = max(1, len(keys) // max(1, n))
    out = []
    for l, e in keys[step // 2::step][:n]:
        for part, off, nb in store.ranges(l, e):
            out.append((str(paths[part]), int(off), int(nb)))
    return out


def measure_disk_read(ranges: Sequence[tuple[str, int, int]], *, n_readers: int = 4, max_bytes: int = 64 << 20,
                      key: Optional[tuple] = None) -> dict[str, Any]:
    """Cold read rate of a file: O_DIRECT preads (whole aligned blocks) of the given ranges by n_readers
    threads at once, as the RAM tier's readers issue them. O_DIRECT bypasses the page cache, so a file
    that happens to be cached still measures its disk; where O_DIRECT is refused the ranges are dropped
    from the page cache first (POSIX_FADV_DONTNEED) and read buffered.
    Returns bytes_per_s, bytes, seconds, direct, n_ranges. Cached per process under `key`."""
    import mmap  # noqa: PLC0415
    import os  # noqa: PLC0415
    import threading  # noqa: PLC0415

    if key is not None and key in _DISK_MEASURED:
        return _DISK_MEASURED[key]
    jobs, total = [], 0
    for path, off, nb in ranges:
        a0 = off // ALIGN * ALIGN
        a1 = -(-(off + nb) // ALIGN) * ALIGN
        if total and total + (a1 - a0) > max_bytes:
            break
        jobs.append((path, a0, a1 - a0))
        total += a1 - a0
    if not jobs:
        raise ValueError("measure_disk_read: no ranges to read")
    fds: dict[str, tuple[int, bool]] = {}
    for path, _, _ in jobs:
        if path not in fds:
            try:
                fds[path] = (os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0)), hasattr(os, "O_DIRECT"))
            except OSError:
                fd = os.open(path, os.O_RDONLY)
                fds[path] = (fd, False)
    for path, a0, n in jobs:
        fd, direct = fds[path]
        if not direct:
            os.posix_fadvise(fd, a0, n, os.POSIX_FADV_DONTNEED)
    chunk = 4 << 20
    pieces = [(p, a0 + o, min(chunk, n - o)) for p, a0, n in jobs for o in range(0, n, chunk)]
    nxt, lock, errors = [0], threading.Lock(), []

    def reader() -> None:
        buf = mmap.mmap(-1, chunk)  # page aligned, as O_DIRECT wants
        try:
            while True:
                with lock:
                    if nxt[0] >= len(pieces):
                        return
                    path, off, n = pieces[nxt[0]]
                    nxt[0] += 1
                fd, _ = fds[path]
                with memoryview(buf) as mv:
                    os.preadv(fd, [mv[:-(-n // ALIGN) * ALIGN]], off)
        except OSError as e:
            errors.append(e)
        finally:
            buf.close()

    threads = [threading.Thread(target=reader) for _ in range(max(1, int(n_readers)))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    direct = all(d for _, d in fds.values())
    for fd, _ in fds.values():
        os.close(fd)
    if errors:
        raise OSError(f"measure_disk_read: {errors[0]}")
    out = {"bytes_per_s": total / dt if dt > 0 else float("inf"), "bytes": total, "seconds": dt,
           "direct": direct, "n_ranges": len(jobs), "readers": int(n_readers)}
    if key is not None:
        _DISK_MEASURED[key] = out
    return out
