"""Where each tensor lives: llama.cpp-style override rules, auto-fit to a VRAM/RAM budget, and the
bandwidth roofline behind `kimi-runtime plan`. Works from headers only (a Footprint), never weights."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Optional, Sequence

import gguf

from kimi_runtime.config import ModelConfig
from kimi_runtime.errors import KimiRuntimeError
from kimi_runtime.gguf.names import EXPERT_ROLES, TOKEN_EMBD, model_shapes, parse_name

DEVICES = ("gpu", "cpu", "cache")  # cache: experts streamed through the expert cache's slots
GiB = 1 << 30


class PlacementError(KimiRuntimeError):
    """The model cannot be placed within the budget; the message carries the plan that failed."""


AMBIGUOUS_BARE = 1 << 16  # a bare number this large is more likely meant as bytes than as GiB


def parse_size(text: str) -> int:
    """'24GiB', '24G', '256GB', '512M', '1.5T', '4096B' -> bytes. GiB/G/M/K/T are binary, GB/MB/kB/TB
    decimal, B bytes. A bare number is GiB ('24' = 24 GiB, as people write memory budgets); a bare
    number of 65536 or more is refused as ambiguous (bytes or GiB?)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not m:
        raise ValueError(f"cannot parse size {text!r} (examples: 24GiB, 24 (GiB), 256GB, 512M, 4096B)")
    num, unit, suffix = float(m[1]), m[2], m[3]
    if not unit and not suffix:
        if num >= AMBIGUOUS_BARE:
            raise ValueError(f"size {text!r} has no unit and is too large to be GiB: write {text.strip()}B "
                             f"for bytes or add a unit (GiB, GB, MiB...)")
        return int(num * GiB)
    if suffix == "ib" and not unit:
        raise ValueError(f"cannot parse size {text!r} (examples: 24GiB, 256GB, 512M)")
    base = 1000 if suffix == "b" and unit else 1024  # GB = 10^9, GiB and bare G = 2^30
    return int(num * base ** "bkmgt".index(unit or "b"))


# ---- footprint: the tensors of a model and their bytes -----------------------------------------

@dataclass(frozen=True)
class TensorFootprint:
    name: str
    ne: tuple[int, ...]
    ggml_type: gguf.GGMLQuantizationType
    nbytes: int
    layer: Optional[int]
    role: str

    @property
    def is_expert(self) -> bool:
        return self.role in EXPERT_ROLES


def tensor_nbytes(ne: Sequence[int], qtype: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if ne[0] % block:
        raise ValueError(f"row of {ne[0]} is not a multiple of {qtype.name}'s block of {block}")
    return math.prod(ne) // block * size


@dataclass
class Footprint:
    config: ModelConfig
    tensors: list[TensorFootprint]

    @classmethod
    def from_gguf(cls, model) -> "Footprint":
        """From an open GGUFModel (headers only)."""
        ts = []
        for t in model.tensors.values():
            layer, role = parse_name(t.name)
            ts.append(TensorFootprint(t.name, tuple(t.ne), gguf.GGMLQuantizationType(t.ggml_type),
                                      int(t.nbytes), layer, role))
        return cls(model.config, ts)

    @classmethod
    def from_config(cls, cfg: ModelConfig,
                    type_for: Callable[[str, tuple[int, ...]], gguf.GGMLQuantizationType]) -> "Footprint":
        """A model not on disk: llama.cpp's tensor list for `cfg`, types chosen by `type_for`."""
        ts = []
        for name, ne in model_shapes(cfg).items():
            layer, role = parse_name(name)
            q = type_for(name, ne)
            ts.append(TensorFootprint(name, ne, q, tensor_nbytes(ne, q), layer, role))
        return cls(cfg, ts)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def expert_bytes_total(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.is_expert)

    @property
    def non_expert_bytes(self) -> int:
        return self.total_bytes - self.expert_bytes_total

    def expert_bytes(self, layer: int) -> int:
        """Bytes of ONE expert's gate+up+down in `layer` (stacked tensors hold n_expert of them)."""
        n = self.config.n_expert
        return sum(t.nbytes for t in self.tensors if t.layer == layer and t.is_expert) // max(n, 1)

    @property
    def moe_layers(self) -> list[int]:
        return sorted({t.layer for t in self.tensors if t.is_expert and t.layer is not None})

    @property
    def max_expert_bytes(self) -> int:
        return max((self.expert_bytes(l) for l in self.moe_layers), default=0)

    @property
    def expert_bytes_per_token(self) -> int:
        """Routed-expert bytes one decode token touches: n_expert_used experts in every MoE layer."""
        return self.config.n_expert_used * sum(self.expert_bytes(l) for l in self.moe_layers)

    def expert_bytes_by_type(self, layers: Iterable[int]) -> dict[str, float]:
        """Bytes per ggml type that n_expert_used experts of each of `layers` read per token."""
        want, n, k = set(layers), max(self.config.n_expert, 1), self.config.n_expert_used
        out: dict[str, float] = {}
        for t in self.tensors:
            if t.is_expert and t.layer in want:
                out[t.ggml_type.name] = out.get(t.ggml_type.name, 0.0) + k * t.nbytes / n
        return out

    def non_expert_bytes_by_type(self, names: set[str]) -> dict[str, float]:
        """Per ggml type, the non-expert bytes of `names` read per decode token."""
        out: dict[str, float] = {}
        for t in self.tensors:
            if not t.is_expert and t.name in names:
                b = t.nbytes // self.config.n_vocab if t.name == TOKEN_EMBD else t.nbytes
                out[t.ggml_type.name] = out.get(t.ggml_type.name, 0.0) + b
        return out

    def non_expert_bytes_per_token(self, names: Optional[set[str]] = None) -> int:
        """Non-expert bytes read per decode token: every weight, except the embedding (one row)."""
        total = 0
        for t in self.tensors:
            if t.is_expert or (names is not None and t.name not in names):
                continue
            total += t.nbytes // self.config.n_vocab if t.name == TOKEN_EMBD else t.nbytes
        return total


# ---- override rules ----------------------------------------------------------------------------

@dataclass(frozen=True)
class OverrideRule:
    pattern: re.Pattern
    device: str

    def __str__(self) -> str:
        return f"{self.pattern.pattern}={self.device}"


def parse_override(text: str) -> OverrideRule:
    """`REGEX=DEVICE` as llama.cpp's -ot; DEVICE in gpu|cpu|cache (CUDA0/CPU accepted as aliases)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like REGEX=DEVICE (e.g. 'ffn_.*_exps=cpu')")
    pat, dev = text.rsplit("=", 1)
    dev = {"cuda": "gpu", "cuda0": "gpu", "gpu0": "gpu"}.get(dev.strip().lower(), dev.strip().lower())
    if dev not in DEVICES:
        raise ValueError(f"override {text!r}: unknown device {dev!r} (use one of {', '.join(DEVICES)})")
    try:
        return OverrideRule(re.compile(pat), dev)
    except re.error as e:
        raise ValueError(f"override {text!r}: bad regular expression: {e}") from None


def moe_rules(cfg: ModelConfig, cpu_moe: bool = False, n_cpu_moe: int = 0) -> list[OverrideRule]:
    """--cpu-moe: every routed expert on the CPU; --n-cpu-moe N: the experts of the first N layers."""
    if cpu_moe:
        return [parse_override(r"ffn_(gate|up|down|gate_up)_exps=cpu")]
    return [parse_override(rf"^blk\.{i}\.ffn_(gate|up|down|gate_up)_exps=cpu") for i in range(min(n_cpu_moe, cfg.n_layer))]


def assign_devices(fp: Footprint, rules: Iterable[OverrideRule], has_gpu: bool) -> dict[str, str]:
    """First matching rule wins; otherwise non-expert tensors are resident (gpu if present) and routed
    experts go through the expert cache. Without a GPU, 'gpu' means resident in RAM."""
    rules = list(rules)
    out = {}
    for t in fp.tensors:
        dev = next((r.device for r in rules if r.pattern.search(t.name)), None)
        if dev is None:
            dev = "cache" if t.is_expert else "gpu"
        if dev == "cache" and not t.is_expert:
            dev = "gpu"  # only routed experts are cacheable; the rest stays resident
        if dev == "gpu" and not has_gpu:
            dev = "cpu"
        out[t.name] = dev
    return out


# ---- auto-fit ----------------------------------------------------------------------------------

# What a CUDA process holds on the device before any tensor of ours: the context with its loaded
# kernel images (~300-500 MiB on recent drivers even with lazy module loading), cuBLAS/cuBLASLt
# workspaces, and allocator slack from fragmentation.
CUDA_RESERVE = 768 << 20


@dataclass
class Budget:
    gpu_bytes: int = 0  # 0: no GPU
    ram_bytes: int = 0  # 0: unknown/unlimited
    ctx: int = 4096
    kv_bytes_per_value: int = 2  # f16 cache
    ubatch: int = 512
    gpu_reserve: int = CUDA_RESERVE  # CUDA context + library workspaces + allocator slack


@dataclass
class Placement:
    devices: dict[str, str]
    gpu_resident: int  # bytes placed "gpu" (resident on the device; in RAM without one)
    cpu_resident: int  # non-expert bytes computed on the CPU
    kv_bytes: int
    workspace: int
    slot_bytes: int
    n_slots: int
    n_cacheable: int  # experts (layer x expert) routed through the cache
    tier: str  # where slots live: "gpu" or "host"
    rules: list[str] = field(default_factory=list)
    cpu_expert_bytes: int = 0  # routed experts computed on the CPU straight from the mmapped file
    gpu_reserve: int = 0  # CUDA context and workspaces held back from the VRAM budget
    gpu_bytes: int = 0
    ram_bytes: int = 0
    expert_ram_bytes: int = 0  # routed experts that are read from RAM (the page cache) when used

    def summary(self) -> str:
        g = lambda b: f"{b / GiB:.2f} GiB"
        lines = [
            f"resident on {'GPU' if self.tier == 'gpu' else 'host'}: {g(self.gpu_resident)} non-expert weights",
            f"resident in RAM (CPU-computed): {g(self.cpu_resident)} non-expert weights, "
            f"{g(self.cpu_expert_bytes)} routed experts (mmapped)",
            f"KV cache: {g(self.kv_bytes)}   workspace: {g(self.workspace)}"
            + (f"   CUDA context + library workspaces: {g(self.gpu_reserve)}" if self.tier == "gpu" else ""),
            f"expert cache: {self.n_slots} slots x {self.slot_bytes / 2**20:.2f} MiB ({self.tier}) for "
            f"{self.n_cacheable} cacheable experts ({100 * self.slot_fraction:.1f}%)",
        ]
        if self.tier == "gpu" and self.gpu_bytes:
            lines.append(f"VRAM: {g(self.vram_used)} of {g(self.gpu_bytes)} planned")
        if self.ram_bytes:
            free, need = self.ram_free_for_experts, self.page_cache_needed
            state = "all in memory" if free >= need else f"{100 * self.spill_fraction:.0f}% of them page in from disk"
            lines.append(f"RAM for routed experts (page cache): {g(need)} needed, "
                         f"{g(max(free, 0))} left after the rest: {state}")
        if self.rules:
            lines.append("override rules (first match wins): " + ", ".join(self.rules))
        return "\n".join(lines)

    @property
    def slot_fraction(self) -> float:
        return self.n_slots / self.n_cacheable if self.n_cacheable else 1.0

    @property
    def vram_used(self) -> int:
        return self.gpu_resident + self.kv_bytes + self.workspace + self.gpu_reserve + self.n_slots * self.slot_bytes

    @property
    def ram_free_for_experts(self) -> int:
        """RAM left for the page cache that holds the routed experts: the budget minus what the CPU
        side keeps resident. CPU-computed experts are NOT subtracted here: they are what this RAM
        holds (counting them on both sides made --cpu-moe plans disk-bound)."""
        if not self.ram_bytes:
            return 1 << 62
        used = self.cpu_resident
        if self.tier == "host":  # no GPU: the "resident" part, the KV cache and the slots live in RAM
            used += self.gpu_resident + self.kv_bytes + self.workspace + self.n_slots * self.slot_bytes
        return self.ram_bytes - used

    @property
    def page_cache_needed(self) -> int:
        """Routed-expert bytes read from the page cache: all of them outside VRAM, less what host
        slots already hold (without a GPU the slots are RAM copies that misses never reach)."""
        held = self.n_slots * self.slot_bytes if self.tier == "host" else 0
        return max(0, self.expert_ram_bytes - held)

    @property
    def spill_fraction(self) -> float:
        """Fraction of the RAM-read expert bytes that the page cache cannot hold (read from disk)."""
        need = self.page_cache_needed
        if not need:
            return 0.0
        return min(1.0, max(0.0, 1.0 - max(self.ram_free_for_experts, 0) / need))


def kv_cache_bytes(cfg: ModelConfig, ctx: int, bytes_per_value: int = 2) -> int:
    """MLA caches kv_lora + rope values per token per layer (576 for Kimi)."""
    return ctx * cfg.n_layer * cfg.kv_cache_dim * bytes_per_value


def workspace_bytes(cfg: ModelConfig, ubatch: int) -> int:
    """Activation buffers for one micro-batch (logits dominate); an estimate, stated as such."""
    return 4 * ubatch * (cfg.n_vocab + 8 * cfg.n_embd + cfg.n_head * cfg.qk_head_dim)


def auto_fit(fp: Footprint, budget: Budget, rules: Sequence[OverrideRule] = (),
             max_slots: Optional[int] = None) -> Placement:
    """Place non-expert weights, the KV cache, workspaces and (with a GPU) the CUDA reserve first,
    then give what is left to expert slots. Raises PlacementError with the failed plan when even the
    fixed part does not fit. Routed experts computed on the CPU stay in the mmapped file: they need
    page cache, not a fixed allocation, so they never make a plan fail."""
    has_gpu = budget.gpu_bytes > 0
    devices = assign_devices(fp, rules, has_gpu)
    by_name = {t.name: t for t in fp.tensors}
    resident = sum(by_name[n].nbytes for n, d in devices.items() if d == "gpu")
    cpu_res = sum(by_name[n].nbytes for n, d in devices.items() if d == "cpu" and not by_name[n].is_expert)
    cpu_exp = sum(by_name[n].nbytes for n, d in devices.items() if d == "cpu" and by_name[n].is_expert)
    cached = sum(by_name[n].nbytes for n, d in devices.items() if d == "cache")
    kv = kv_cache_bytes(fp.config, budget.ctx, budget.kv_bytes_per_value)
    ws = workspace_bytes(fp.config, budget.ubatch)
    cacheable_layers = sorted({by_name[n].layer for n, d in devices.items() if d == "cache"})
    n_cacheable = len(cacheable_layers) * fp.config.n_expert
    slot = max((fp.expert_bytes(l) for l in cacheable_layers), default=0)

    reserve = budget.gpu_reserve if has_gpu else 0
    if has_gpu:
        fixed = resident + kv + ws + reserve
        free, tier, limit = budget.gpu_bytes - fixed, "gpu", budget.gpu_bytes
    else:
        fixed = resident + cpu_res + kv + ws
        limit = budget.ram_bytes or (1 << 62)
        free, tier = limit - fixed, "host"
    p = Placement(devices, resident, cpu_res, kv, ws, slot, 0, n_cacheable, tier, [str(r) for r in rules],
                  cpu_expert_bytes=cpu_exp, gpu_reserve=reserve, gpu_bytes=budget.gpu_bytes,
                  ram_bytes=budget.ram_bytes, expert_ram_bytes=cpu_exp + cached)
    if free < 0:
        raise PlacementError(
            f"the non-expert part does not fit: needs {fixed / GiB:.2f} GiB of {limit / GiB:.2f} GiB "
            f"({'VRAM' if has_gpu else 'RAM'}); try a smaller --ctx, move tensors to the CPU with -ot, "
            f"or use a smaller quant.\n" + p.summary())
    if slot:
        n = free // slot
        p.n_slots = int(min(n, n_cacheable, max_slots if max_slots is not None else n))
    return p


# ---- roofline ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bandwidths:
    """Bytes per second per tier. Defaults: a 24 GB RTX 4090-class GPU, PCIe 4.0 x16 (effective),
    dual-channel DDR5-5600 (effective), a PCIe 4.0 NVMe drive."""

    vram: float = 1000e9
    pcie: float = 25e9
    ram: float = 70e9
    nvme: float = 6e9

    @classmethod
    def parse(cls, text: str) -> "Bandwidths":
        """'vram=900,pcie=25,ram=80,nvme=7' in GB/s; unnamed tiers keep their defaults."""
        vals = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            k, _, v = part.partition("=")
            if k not in cls.__dataclass_fields__ or not v:
                raise ValueError(f"bad bandwidth {part!r}: use vram=,pcie=,ram=,nvme= in GB/s")
            try:
                vals[k] = float(v) * 1e9
            except ValueError:
                raise ValueError(f"bad bandwidth {part!r}: {v!r} is not a number of GB/s") from None
            if vals[k] <= 0:
                raise ValueError(f"bad bandwidth {part!r}: must be > 0")
        return cls(**vals)


@dataclass(frozen=True)
class Prediction:
    hit_rate: float
    gpu_bytes: int  # read from VRAM per token
    ram_bytes: int  # read by CPU kernels from RAM per token
    pcie_bytes: int  # moved host -> device per token
    disk_bytes: int  # paged in from NVMe per token
    tok_per_s: float
    miss_path: str  # "cpu" or "fetch": the cheaper way to serve a miss
    cpu_seconds: float = 0.0  # CPU kernel time per token (bytes over bandwidth x kernel efficiency)
    reachable: bool = True  # False: a cache of this size cannot reach this hit rate (see plan)


def _merge(*parts: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in parts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


def predict(fp: Footprint, p: Placement, bw: Bandwidths, hit_rate: float, ram_budget: int = 0,
            cpu_efficiency: Optional[Callable[[str], float]] = None) -> Prediction:
    """Decode-time roofline for one token: every tier's bytes over its bandwidth, tiers serialised
    (a layer waits for its experts). CPU-read bytes go at `bw.ram` times the kernel efficiency of
    their format (`cpu_efficiency(type name)`, measured by `plan`; 1.0 = bandwidth-bound). Misses
    are served by whichever of CPU compute from RAM or a PCIe fetch is faster; the share of the
    RAM-read expert bytes that the page cache cannot hold comes from disk."""
    eff = cpu_efficiency or (lambda name: 1.0)
    ram_s = lambda by: sum(b / (bw.ram * max(1e-6, eff(t))) for t, b in by.items())  # noqa: E731
    resident_names = {n for n, d in p.devices.items() if d == "gpu"}
    cpu_names = {n for n, d in p.devices.items() if d == "cpu"}
    layers_on = lambda dev: sorted({t.layer for t in fp.tensors if t.is_expert and p.devices[t.name] == dev})  # noqa: E731
    cache_by = fp.expert_bytes_by_type(layers_on("cache"))
    cpu_exp_by = fp.expert_bytes_by_type(layers_on("cpu"))
    gpu_exp_by = fp.expert_bytes_by_type(layers_on("gpu"))
    cache_tok, cpu_exp_tok = sum(cache_by.values()), sum(cpu_exp_by.values())
    cpu_dense_by = fp.non_expert_bytes_by_type(cpu_names)
    hits = hit_rate * cache_tok
    misses = cache_tok - hits
    if p.tier == "host":  # no GPU: slots are RAM, "resident" is RAM too
        ram_by = _merge(fp.non_expert_bytes_by_type(resident_names), cpu_dense_by, cache_by, cpu_exp_by, gpu_exp_by)
        gpu, pcie, miss_path = 0.0, 0.0, "cpu"
    else:
        gpu = fp.non_expert_bytes_per_token(resident_names) + sum(gpu_exp_by.values()) + hits
        miss_by = {t: b * (1.0 - hit_rate) for t, b in cache_by.items()}
        cpu_t, fetch_t = ram_s(miss_by), misses / bw.pcie + misses / bw.vram
        miss_path = "cpu" if cpu_t <= fetch_t else "fetch"
        ram_by = _merge(cpu_dense_by, cpu_exp_by, miss_by if miss_path == "cpu" else {})
        pcie = misses if miss_path == "fetch" else 0.0
        if miss_path == "fetch":
            gpu += misses
    # Expert bytes read from RAM that the page cache cannot hold come from disk, in proportion.
    disk = 0.0
    if ram_budget:
        disk = replace(p, ram_bytes=ram_budget).spill_fraction * (misses + cpu_exp_tok)
    cpu_t = ram_s(ram_by)
    t = gpu / bw.vram + cpu_t + pcie / bw.pcie + disk / bw.nvme
    return Prediction(hit_rate, int(gpu), int(sum(ram_by.values())), int(pcie), int(disk),
                      1.0 / t if t > 0 else math.inf, miss_path, cpu_t)

