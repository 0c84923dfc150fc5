"""The hybrid MoE layer's lane split: which selected experts run on the GPU (from VRAM slots, or
uploaded for this micro-batch) and which on the CPU (from RAM), so that the layer costs the max of
the lanes rather than their sum. Pure functions of sizes and rates: tested on the CPU.

Lanes of one layer, all running at the same time:
  - cpu:  sum over CPU experts of bytes * (cpu_stream + n_tok * cpu_token)
  - copy: sum over uploaded experts of bytes * h2d           (the copy engine, overlapped)
  - gpu:  sum over GPU experts of bytes * (gpu_stream + n_tok * gpu_token), plus for uploads the wait
          for their copy: an upload pipeline finishes no earlier than copy + the last expert's compute.
The layer time is max(cpu, max(gpu, copy + last_compute)) + a fixed launch overhead when the GPU lane
is used. Hits are always cheapest on the GPU (no upload, VRAM bandwidth) unless the GPU lane is the
bottleneck; the split moves experts between lanes greedily, most-saving first, while the max drops.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class LaneRates:
    """Seconds per expert byte on each lane (stream: once per expert per micro-batch; token: per token)."""

    cpu_stream: float
    cpu_token: float
    gpu_stream: float
    gpu_token: float
    h2d: float  # pinned host -> device copy
    gpu_launch: float = 20e-6  # fixed cost of using the GPU lane at all in a layer (launches, sync)

    @classmethod
    def from_bandwidths(cls, cpu_gbs: float, gpu_gbs: float, h2d_gbs: float, cpu_token_frac: float = 0.15,
                        gpu_token_frac: float = 0.02, gpu_launch: float = 20e-6) -> "LaneRates":
        """Rates from effective GB/s for one token; per-token slopes as a fraction of the stream term."""
        cs, gs = 1e-9 / cpu_gbs, 1e-9 / gpu_gbs
        return cls(cs * (1 - cpu_token_frac), cs * cpu_token_frac, gs * (1 - gpu_token_frac), gs * gpu_token_frac,
                   1e-9 / h2d_gbs, gpu_launch)


@dataclass(frozen=True)
class ExpertNeed:
    key: int  # expert id (within the layer)
    nbytes: int
    n_tok: int  # tokens of the micro-batch routed to it
    resident: bool  # already in a VRAM slot (a hit)


@dataclass
class LanePlan:
    gpu_hits: list[int] = field(default_factory=list)  # computed on the GPU from their slot
    uploads: list[int] = field(default_factory=list)  # uploaded this micro-batch, then computed on the GPU
    cpu: list[int] = field(default_factory=list)  # computed on the CPU from RAM
    cpu_s: float = 0.0
    gpu_s: float = 0.0
    copy_s: float = 0.0
    total_s: float = 0.0


def cpu_cost(r: LaneRates, e: ExpertNeed) -> float:
    return e.nbytes * (r.cpu_stream + e.n_tok * r.cpu_token)


def gpu_cost(r: LaneRates, e: ExpertNeed) -> float:
    return e.nbytes * (r.gpu_stream + e.n_tok * r.gpu_token)


def evaluate(r: LaneRates, needs: Sequence[ExpertNeed], gpu_hits: Sequence[int], uploads: Sequence[int],
             cpu: Sequence[int]) -> LanePlan:
    """Lane times of a given assignment (indices into needs)."""
    p = LanePlan(list(gpu_hits), list(uploads), list(cpu))
    p.cpu_s = sum(cpu_cost(r, needs[i]) for i in cpu)
    p.copy_s = sum(needs[i].nbytes * r.h2d for i in uploads)
    compute = sum(gpu_cost(r, needs[i]) for i in list(gpu_hits) + list(uploads))
    last = max((gpu_cost(r, needs[i]) for i in uploads), default=0.0)
    used = bool(gpu_hits) or bool(uploads)
    p.gpu_s = (max(compute, p.copy_s + last) + r.gpu_launch) if used else 0.0
    p.total_s = max(p.cpu_s, p.gpu_s)
    return p


def split_lanes(r: LaneRates, needs: Sequence[ExpertNeed], allow_upload: bool = True,
                max_uploads: int = 1 << 30) -> LanePlan:
    """Greedy split minimising max(cpu lane, gpu lane). Start: hits on the GPU, misses on the CPU; then
    repeatedly take the single move (a miss to upload, a hit to the CPU, an upload back) that lowers the
    layer time most, until none does. Misses are uploaded at most max_uploads (the free slots/staging)."""
    hits = [i for i, e in enumerate(needs) if e.resident]
    cpu = [i for i, e in enumerate(needs) if not e.resident]
    ups: list[int] = []
    best = evaluate(r, needs, hits, ups, cpu)
    while True:
        cand = None
        if allow_upload and len(ups) < max_uploads:
            for i in cpu:
                if needs[i].resident:
                    continue
                p = evaluate(r, needs, hits, ups + [i], [j for j in cpu if j != i])
                if p.total_s < (cand or best).total_s - 1e-15:
                    cand = p
        for i in hits:  # a hit onto the CPU when the GPU lane is the bottleneck
            p = evaluate(r, needs, [j for j in hits if j != i], ups, cpu + [i])
            if p.total_s < (cand or best).total_s - 1e-15:
                cand = p
        for i in cpu:  # a CPU hit back to the GPU (undoing the move above when it stops paying)
            if needs[i].resident:
                p = evaluate(r, needs, hits + [i], ups, [j for j in cpu if j != i])
                if p.total_s < (cand or best).total_s - 1e-15:
                    cand = p
        if cand is None:
            return best
        best = cand
        hits, ups, cpu = best.gpu_hits, best.uploads, best.cpu


def serial_time(r: LaneRates, needs: Sequence[ExpertNeed]) -> float:
    """What the same layer costs when the lanes run one after the other (hits GPU, misses CPU)."""
    p = evaluate(r, needs, [i for i, e in enumerate(needs) if e.resident], [],
                 [i for i, e in enumerate(needs) if not e.resident])
    return p.cpu_s + p.gpu_s


def needs_from_routing(ids: Sequence[Sequence[int]], nbytes: Sequence[int], resident: Sequence[bool]) -> list[ExpertNeed]:
    """One ExpertNeed per distinct selected expert of a micro-batch (ids [T][K]), with its token count:
    a prompt uploads or streams each selected expert once per micro-batch, whatever its token count."""
    counts: dict[int, int] = {}
    for row in ids:
        for e in row:
            if e >= 0:
                counts[int(e)] = counts.get(int(e), 0) + 1
    return [ExpertNeed(e, int(nbytes[e]), n, bool(resident[e])) for e, n in sorted(counts.items())]


def predict_next_layer(hidden, next_router_weight, k: int):
    """Experts the next layer will likely pick for these tokens: its router applied to the current
    hidden state (the residual stream changes little between adjacent layers). Returns distinct ids in
    order of score, for prefetching into slots while this layer computes. torch tensors."""
    import torch

    scores = hidden.float() @ next_router_weight.float().T  # [T, E]
    top = torch.topk(scores, min(k, scores.shape[-1]), dim=-1)[1].reshape(-1).tolist()
    seen, out = set(), []
    for e in top:
        if e not in seen:
            seen.add(e)
            out.append(int(e))
    return out
