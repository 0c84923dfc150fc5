"""The tier chain of the expert cache for files larger than RAM: disk -> RAM slots (-> VRAM slots).

The RAM tier is a host slot pool sized by a byte budget and filled by several reader threads with
O_DIRECT preads (csrc/cache), so the page cache never holds a cold expert next to its slot copy. The
mapping of the expert tensors is told MADV_RANDOM (a fault there, should one happen, reads one page,
not a readahead window of neighbours) and their pages are dropped from the page cache once at load.
Non-expert weights stay in the page cache (mlock'ed with `mlock=True`).

Memory accounting (`RamReserve`): what the process holds besides the slots - the interpreter and
libraries (RSS measured at setup), float copies the model makes of quantized tensors, the readers'
bounce buffers - is taken off the budget before auto-fit places the non-expert weights, the KV cache
and the workspace; what remains becomes slots.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from kimi_runtime._native import C
from kimi_runtime.errors import KimiRuntimeError
from kimi_runtime.gguf.names import EXPERT_ROLES, parse_name

READ_MODES = ("auto", "mmap", "pread", "direct")
# Quantized tensors the model keeps as float32 copies (MLA's per-head k_b / v_b, or kv_b).
_FLOAT_COPIED = ("attn_k_b", "attn_v_b", "attn_kv_b")


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    """Resident set size of this process now (mapped file pages it touched included)."""
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """Peak resident set size (VmHWM) since start or since reset_peak_rss()."""
    return _status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def o_direct_supported(path: str) -> bool:
    """Whether the file system under `path` opens it with O_DIRECT (tmpfs and some overlay file
    systems refuse; the store then reads buffered and drops what it read from the page cache)."""
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        return False
    os.close(fd)
    return hasattr(os, "O_DIRECT")


def _tensors(model: Any, experts: bool) -> Iterator[Any]:
    for t in model.tensors.values():
        if (parse_name(t.name)[1] in EXPERT_ROLES) == experts:
            yield t


def float_copy_bytes(model: Any) -> int:
    """Bytes of the float32 copies the model builds of quantized tensors at load."""
    total = 0
    for t in _tensors(model, experts=False):
        if parse_name(t.name)[1] in _FLOAT_COPIED and int(t.ggml_type) not in (0,):  # 0: F32, a view
            total += 4 * t.n_elements
    return total


def keep_experts_out_of_page_cache(model: Any) -> int:
    """MADV_RANDOM on the mapping of every expert tensor, then drop their pages (from this mapping
    and from the page cache); returns the bytes advised. Hints: failures are ignored."""
    total = 0
    paths = [str(p) for p in model.paths]
    fds = {}
    try:
        for t in _tensors(model, experts=True):
            view = t.data
            C.madvise_view(view, "random")
            C.madvise_view(view, "dontneed")
            if t.part not in fds:
                fds[t.part] = os.open(paths[t.part], os.O_RDONLY)
            os.posix_fadvise(fds[t.part], int(t.offset), int(t.nbytes), os.POSIX_FADV_DONTNEED)
            total += int(t.nbytes)
    finally:
        for fd in fds.values():
            os.close(fd)
    return total


def lock_resident(model: Any) -> int:
    """mlock the non-expert tensors' pages (they are read every token and must not be evicted by
    page-cache pressure); returns the bytes locked. Raises with the reason when the kernel refuses."""
    total = 0
    for t in _tensors(model, experts=False):
        err = C.mlock_view(t.data, True)
        if err:
            raise KimiRuntimeError(
                f"--mlock: locking {t.name} ({t.nbytes / 2**20:.1f} MiB) failed: {os.strerror(err)} "
                f"(raise the locked-memory limit, e.g. `ulimit -l unlimited`, or drop --mlock)")
        total += int(t.nbytes)
    return total


@dataclass(frozen=True)
class RamReserve:
    """What a RAM budget must hold besides the non-expert weights, KV cache, workspace and slots."""

    runtime: int  # RSS of the process at setup: interpreter, torch, libraries, the mapped headers
    float_copies: int  # float32 copies of quantized tensors
    buffers: int  # reader bounce buffers and staging
    slack: int  # allocator and interpreter growth while running (thread stacks, torch temporaries)

    @property
    def total(self) -> int:
        return self.runtime + self.float_copies + self.buffers + self.slack

    def describe(self) -> str:
        m = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
        return (f"runtime {m(self.runtime)} + float copies {m(self.float_copies)} + read buffers "
                f"{m(self.buffers)} + slack {m(self.slack)}")


SLACK_BYTES = 32 << 20
SLACK_FRACTION = 0.01


def ram_reserve(model: Any, n_readers: int, staging_bytes: int, budget: int = 0) -> RamReserve:
    """Measured now (RSS) and from the file's tensor list; slack: SLACK_BYTES + SLACK_FRACTION of the
    budget (a peak RSS a few hundred KB over an exact account was seen without it)."""
    return RamReserve(rss_bytes(), float_copy_bytes(model), int(n_readers) * int(staging_bytes),
                      SLACK_BYTES + int(SLACK_FRACTION * budget))


def tier_stats(cache: Any, budget: Optional[int] = None) -> dict[str, dict[str, Any]]:
    """Per-tier counters of a cache chain, top tier first down to the disk. Every tier has hits,
    misses, bytes (moved into it from the tier below) and stall_seconds (time callers waited on its
    loads); the disk tier counts reads (hits: loads it served), bytes actually read (aligned blocks
    included) and read_seconds (reader-thread time, summed over readers)."""
    out: dict[str, dict[str, Any]] = {}
    tiers = []
    c = cache
    while c is not None:
        tiers.append(c)
        c = getattr(c, "upstream", None)
    names = ["ram"] if len(tiers) == 1 else ["vram", "ram"] + [f"tier{i}" for i in range(2, len(tiers))]
    for name, t in zip(names, tiers):
        s = t.stats()
        slot = int(t.pool.slot_bytes)
        out[name] = {"hits": s["hits"], "misses": s["misses"], "bytes": s["bytes_loaded"],
                     "stall_seconds": s["stall_seconds"], "prefetch_hits": s["prefetch_hits"],
                     "prefetches": s["prefetches"], "prefetch_cancelled": s["prefetch_cancelled"],
                     "evictions": s["evictions"], "slots": t.capacity,
                     "slot_bytes": slot, "pool_bytes": t.capacity * ((slot + 63) // 64 * 64),
                     "readers": t.n_readers}
    if budget is not None and "ram" in out:
        out["ram"]["budget_bytes"] = int(budget)
    bottom = tiers[-1]
    s, st = bottom.stats(), bottom.store
    # mmap mode copies from the page cache: no reads are issued, the bytes moved are the loads'
    moved = int(st.bytes_read) if st.mode != "mmap" else int(s["bytes_loaded"])
    out["disk"] = {"hits": s["loads"], "misses": 0, "bytes": moved, "reads": int(st.reads),
                   "stall_seconds": s["stall_seconds"], "read_seconds": s["read_seconds"],
                   "read_errors": s["read_errors"], "mode": st.mode, "direct": bool(st.direct_active)}
    return out
