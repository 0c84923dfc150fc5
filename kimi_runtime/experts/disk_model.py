"""Decode speed of a file larger than RAM on the disk tier, for `plan`: how many expert slots a RAM
budget leaves, how many bytes a token then reads from disk, and tok/s with those reads overlapped with
compute (the disk tier's readers) or serialised with it (a demand pager such as mmap page faults)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from kimi_runtime.experts.placement import Budget, Footprint, auto_fit

ALIGN = 4096


@dataclass(frozen=True)
class DiskPrediction:
    slots: int  # RAM slots the budget leaves
    n_cacheable: int  # experts (layer x expert) routed through the cache
    hit_rate: float
    disk_bytes_per_token: float  # missed experts, whole 4 KiB blocks
    disk_seconds: float  # per token, at disk_bps
    compute_seconds: float  # per token, at compute_bps
    tok_per_s: float  # reads overlapped with compute: 1 / max(disk, compute)
    tok_per_s_serial: float  # 1 / (disk + compute)
    bound: str  # "disk" or "compute"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict_disk_decode(fp: Footprint, ram_budget: int, disk_bps: float, *, compute_bps: float,
                        ctx: int = 4096, hit_rate: Optional[float] = None, runtime_bytes: int = 512 << 20,
                        float_copy_bytes: int = 0) -> DiskPrediction:
    """Decode tok/s of `fp` on the disk tier within `ram_budget` bytes.

    disk_bps: the file's cold read rate (scheduler.measure_disk_read's bytes_per_s, or a drive's spec).
    compute_bps: weight bytes per second the engine consumes in decode when nothing waits on the disk
    (bytes touched per token x tok/s of a run from RAM; `compute_bps_from_run`).
    hit_rate: of the RAM slots; default slots / cacheable experts (routing spread evenly, LRU steady
    state; prefetch turns misses into overlapped reads, not hits). runtime_bytes / float_copy_bytes: what
    the process holds besides weights, KV and slots (experts.tiers.RamReserve measures both).
    Raises PlacementError when the budget does not hold the non-expert part.
    """
    if disk_bps <= 0 or compute_bps <= 0:
        raise ValueError("disk_bps and compute_bps must be positive")
    budget = Budget(ram_bytes=int(ram_budget) - int(runtime_bytes) - int(float_copy_bytes), ctx=int(ctx),
                    kv_bytes_per_value=4)
    p = auto_fit(fp, budget)
    n_cacheable = p.n_cacheable
    slots = p.n_slots
    h = (slots / n_cacheable if n_cacheable else 1.0) if hit_rate is None else float(hit_rate)
    h = min(max(h, 0.0), 1.0)
    cfg = fp.config
    cached = sorted({t.layer for t in fp.tensors if p.devices[t.name] == "cache"})
    per_layer = [fp.expert_bytes(l) + 3 * ALIGN for l in cached]  # a block more per range, on average
    disk_bytes = (1 - h) * cfg.n_expert_used * sum(per_layer)
    compute_bytes = fp.non_expert_bytes_per_token() + fp.expert_bytes_per_token
    disk_s = disk_bytes / disk_bps
    comp_s = compute_bytes / compute_bps
    worst = max(disk_s, comp_s)
    return DiskPrediction(slots, n_cacheable, h, disk_bytes, disk_s, comp_s,
                          1.0 / worst if worst > 0 else math.inf,
                          1.0 / (disk_s + comp_s) if disk_s + comp_s > 0 else math.inf,
                          "disk" if disk_s >= comp_s else "compute")


def compute_bps_from_run(fp: Footprint, decode_tok_s: float) -> float:
    """Weight bytes per second a decode run consumed: bytes touched per token x tok/s."""
    return (fp.non_expert_bytes_per_token() + fp.expert_bytes_per_token) * float(decode_tok_s)


def cold_read_rate(model: Any, *, n_readers: int = 4, n_ranges: int = 16, range_bytes: int = 4 << 20) -> dict[str, Any]:
    """The file's cold read rate for `predict_disk_decode` (bytes_per_s, ...): O_DIRECT reads of
    n_ranges pieces spread over the expert tensors of an open GGUF model (headers + mapping only, no
    native store), by n_readers threads (scheduler.measure_disk_read)."""
    from kimi_runtime.experts.scheduler import measure_disk_read  # noqa: PLC0415
    from kimi_runtime.gguf.names import EXPERT_ROLES, parse_name  # noqa: PLC0415

    ts = [t for t in model.tensors.values() if parse_name(t.name)[1] in EXPERT_ROLES]
    if not ts:
        raise ValueError("the model has no routed-expert tensors to read")
    total = sum(int(t.nbytes) for t in ts)
    step = total / n_ranges
    ranges, seen = [], 0
    k = 0
    for t in ts:
        while k < n_ranges and (k + 0.5) * step < seen + t.nbytes:
            off = int((k + 0.5) * step - seen)
            n = min(range_bytes, int(t.nbytes) - off)
            if n > 0:
                ranges.append((str(model.paths[t.part]), int(t.offset) + off, n))
            k += 1
        seen += int(t.nbytes)
    return measure_disk_read(ranges, n_readers=n_readers, max_bytes=n_ranges * range_bytes + (1 << 20))
