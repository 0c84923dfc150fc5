"""Fused dequant-dot kernels on quantized GGUF weights (CPU): gemv / small-batch gemm, batched per-head
gemm (``gemm_heads``), the model's ``matmul`` entry point and the fused MoE FFN. Weights stay
quantized; activations are quantized once per call to 8-bit blocks and dotted with integer SIMD
kernels (see csrc/cpu/gemv.h).

``qtype`` arguments accept a :class:`gguf.GGMLQuantizationType`, its integer id or its name.
Activations may be numpy arrays or CPU torch tensors (float32); results come back in the same kind.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from kimi_runtime._native import C
from kimi_runtime.quant import QTypeLike, dequantize, qtype_info, row_bytes

_NEEDED = ("ExpertRef", "gemm", "gemm_heads", "gemv_best_isa", "gemv_isa", "gemv_kernel_path", "moe_ffn",
           "num_threads", "set_gemv_isa", "set_num_threads")
_missing = [n for n in _NEEDED if not hasattr(C, n)]
if _missing:  # an extension built from older sources than this Python side
    raise ImportError(f"kimi_runtime's native extension {getattr(C, '__file__', '_C')} is stale (no "
                      f"{', '.join(_missing)}); rebuild it: `pip install -e .` or scripts/dev_build.sh")

__all__ = [
    "gemv", "gemm", "gemm_heads", "matmul", "ExpertRef", "expert_ref", "moe_ffn",
    "set_num_threads", "num_threads", "set_isa", "isa", "best_isa", "kernel_path", "MAX_BATCH",
]

MAX_BATCH = 32
"""Rows of x one native gemm call applies each weight row to (larger batches are split)."""

DENSE_MIN_ROWS = 512
"""From this many rows of x on, ``gemm`` dequantizes the weight in row tiles and uses a dense float
matmul (BLAS) instead of repeated fused passes. Measured on the 2-core AVX-512 dev box with a
7168-column weight of ~14 MB: Q4_K fused/dense 314/652 ms at n=128, 464/908 at 256, 1347/1359 at
512; Q8_0 344/370 at 256, 564/644 at 512. Grid i-quants decode slowly in the fused kernel and cross
over earlier (IQ2_XXS 1665/1978 at 128, 2873/2576 at 256), hence :data:`DENSE_MIN_ROWS_GRID`.
Not made to depend on cols: isolated 2048-column weights do cross over earlier (Q4_K [2048, 2048]
fused/dense 52.8/48.2 ms at n=256, 78.1/51.0 at 384; Q8_0 82.8/48.2 at 256), but switching them to
dense from 256 rows made medium-preset prefill of 384 tokens slower end to end (44-50 vs 53-57
tok/s, 5 alternating pairs, loadavg ~3.3), so the rule stays per format."""

DENSE_MIN_ROWS_GRID = 256
_GRID_FORMATS = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"}

_DENSE_TILE_BYTES = 64 << 20  # float32 tile: big enough for an efficient GEMM, bounds extra memory

ExpertRef = C.ExpertRef
"""Native handle to one expert's gate/up/down rows (addresses + sizes); see :func:`expert_ref`."""


def set_num_threads(n: int) -> None:
    """Threads used by all native kernels (n <= 0: all hardware threads)."""
    C.set_num_threads(int(n))


def num_threads() -> int:
    """Threads the native kernels use now (the calling thread included)."""
    return int(C.num_threads())


def set_isa(name: str) -> None:
    """Force the kernel ISA: ``"scalar"``, ``"avx2"``, ``"avx512"`` or ``"auto"`` (best available).

    Raises ValueError for an ISA this CPU lacks. Meant for tests and benchmarks.
    """
    C.set_gemv_isa(str(name))


def isa() -> str:
    """The ISA the kernels use now."""
    return str(C.gemv_isa())


def best_isa() -> str:
    """The best ISA this CPU supports."""
    return str(C.gemv_best_isa())


def kernel_path(qtype: QTypeLike) -> str:
    """Which kernel a weight type runs on under the current ISA, e.g. ``"avx512/int8"`` or
    ``"avx2/dequant+f32"`` (formats without an integer kernel are dequantized row by row)."""
    return str(C.gemv_kernel_path(qtype_info(qtype).id))


def has_multirow(qtype: QTypeLike) -> bool:
    """Whether batches of this weight type run a multi-row kernel (each weight block decoded once for
    up to 4 activation rows) under the current ISA."""
    return bool(C.gemv_kernel_multirow(qtype_info(qtype).id))


def _weight_view(raw: Any) -> np.ndarray:
    """Flat uint8 view (no copy) of weight bytes: numpy/memmap, bytes-like or CPU torch tensor."""
    if type(raw).__module__.startswith("torch"):
        if raw.device.type != "cpu" or not raw.is_contiguous():
            raise ValueError("torch weight buffers must be contiguous CPU tensors")
        raw = raw.numpy()
    if isinstance(raw, np.ndarray):
        if not raw.flags.c_contiguous:
            raise ValueError("weight buffer must be C-contiguous")
        return raw.reshape(-1).view(np.uint8)
    try:
        mv = memoryview(raw)
    except TypeError:
        raise ValueError(f"weights must be a bytes-like object or array, not {type(raw).__name__}") from None
    if not mv.c_contiguous:
        raise ValueError("weight buffer must be C-contiguous")
    return np.frombuffer(mv.cast("B") if (mv.ndim != 1 or mv.format != "B") else mv, dtype=np.uint8)


def _as_f32_2d(x: Any, cols: int) -> tuple[np.ndarray, bool]:
    """(C-contiguous float32 [n, cols] numpy view, was_torch); ValueError on a wrong dtype/shape."""
    is_torch = type(x).__module__.startswith("torch")
    if is_torch:
        import torch

        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise ValueError(f"x must be a CPU float32 tensor, got {x.dtype} on {x.device}")
        x = x.detach().contiguous().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"x must be a numpy array or torch tensor, not {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(f"x must be float32, not {x.dtype}")
    if x.ndim != 2 or x.shape[1] != cols:
        raise ValueError(f"x must have shape [n, {cols}], got {tuple(x.shape)}")
    return np.ascontiguousarray(x), is_torch


def _check_weights(w: np.ndarray, qtype: QTypeLike, rows: int, cols: int) -> int:
    q = qtype_info(qtype)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"rows and cols must be positive, got {rows}, {cols}")
    need = rows * row_bytes(q.id, cols)
    if w.nbytes < need:
        raise ValueError(f"weight buffer too short: {q.name} [{rows}, {cols}] needs {need} bytes, got {w.nbytes}")
    return q.id


def _gemm_dense(w: np.ndarray, qid: int, rows: int, cols: int, x: np.ndarray, out: np.ndarray) -> None:
    """Large batches: dequantize weight row tiles to float32 and use BLAS (x is not quantized)."""
    rb = row_bytes(qid, cols)
    tile = max(1, min(rows, _DENSE_TILE_BYTES // (4 * cols)))
    for r0 in range(0, rows, tile):
        r1 = min(rows, r0 + tile)
        wt = dequantize(w[r0 * rb:r1 * rb], qid, (r1 - r0, cols))
        out[:, r0:r1] = x @ wt.T


def gemm(raw: Any, qtype: QTypeLike, rows: int, cols: int, x: Any) -> Any:
    """``x[n, cols] @ W[rows, cols]^T`` for raw GGUF weights W, returned as ``[n, rows]`` float32.

    Each weight row is read once per batch of up to :data:`MAX_BATCH` rows of x; batches of
    :data:`DENSE_MIN_ROWS` rows or more (:data:`DENSE_MIN_ROWS_GRID` for grid i-quants) go through
    tile dequantization + dense matmul instead (x is then not quantized).
    Raises ValueError for a short buffer, a ``cols`` that is not a block multiple, an unknown type
    or a wrongly shaped / typed x, before native code touches memory.
    """
    w = _weight_view(raw)
    qid = _check_weights(w, qtype, int(rows), int(cols))
    xa, is_torch = _as_f32_2d(x, int(cols))
    n = xa.shape[0]
    out = np.empty((n, rows), dtype=np.float32)
    q = qtype_info(qid)
    threshold = DENSE_MIN_ROWS_GRID if q.name in _GRID_FORMATS else DENSE_MIN_ROWS
    if n >= threshold and q.can_dequantize:
        _gemm_dense(w, qid, rows, cols, xa, out)
    else:
        for i in range(0, n, MAX_BATCH):
            C.gemm(w, qid, rows, cols, xa[i:i + MAX_BATCH], out[i:i + MAX_BATCH])
    if is_torch:
        import torch

        return torch.from_numpy(out)
    return out


def gemm_heads(raw: Any, qtype: QTypeLike, heads: int, rows: int, cols: int, x: Any) -> Any:
    """``out[h] = x[h] @ W[h]^T`` for ``heads`` weight slices stored back to back (raw GGUF bytes of a
    ``[heads, rows, cols]`` tensor): x ``[heads, n, cols]`` float32 -> ``[heads, n, rows]`` float32.

    One native call for all heads (MLA's k_b / v_b in decode), on the same row kernels as :func:`gemm`
    (activations quantized to 8 bits for quantized weights). Raises ValueError for a short buffer,
    a ``cols`` that is not a block multiple, an unknown type or a wrongly shaped / typed x.
    """
    heads, rows, cols = int(heads), int(rows), int(cols)
    if heads <= 0:
        raise ValueError(f"heads must be positive, got {heads}")
    w = _weight_view(raw)
    qid = _check_weights(w, qtype, rows, cols)
    need = heads * rows * row_bytes(qid, cols)
    if w.nbytes < need:
        raise ValueError(f"weight buffer too short: {heads} heads of {qtype_info(qid).name} [{rows}, {cols}] "
                         f"need {need} bytes, got {w.nbytes}")
    is_torch = type(x).__module__.startswith("torch")
    if is_torch:
        import torch

        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise ValueError(f"x must be a CPU float32 tensor, got {x.dtype} on {x.device}")
        x = x.detach().contiguous().numpy()
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise ValueError(f"x must be a float32 numpy array or torch tensor, got {type(x).__name__} "
                         f"{getattr(x, 'dtype', '')}")
    if x.ndim != 3 or x.shape[0] != heads or x.shape[2] != cols or x.shape[1] == 0:
        raise ValueError(f"x must have shape [{heads}, n >= 1, {cols}], got {tuple(x.shape)}")
    xa = np.ascontiguousarray(x)
    out = np.empty((heads, xa.shape[1], rows), dtype=np.float32)
    C.gemm_heads(w, qid, heads, rows, cols, xa, out)
    if is_torch:
        import torch

        return torch.from_numpy(out)
    return out


def gemv(raw: Any, qtype: QTypeLike, rows: int, cols: int, x: Any) -> Any:
    """``W @ x`` for a single vector x of length cols (returns [rows]); a 2-D x goes to :func:`gemm`."""
    if getattr(x, "ndim", None) == 1:
        y = gemm(raw, qtype, rows, cols, x.reshape(1, -1))
        return y.reshape(-1)
    return gemm(raw, qtype, rows, cols, x)


def matmul(x: Any, raw: Any, qtype: QTypeLike, rows: int, cols: int) -> Any:
    """The model's linear layer: ``x[..., cols] @ W^T -> [..., rows]`` for any leading dims."""
    lead = tuple(x.shape[:-1])
    if x.shape[-1] != cols:
        raise ValueError(f"x has {x.shape[-1]} features, the weight expects {cols}")
    y = gemm(raw, qtype, rows, cols, x.reshape(-1, cols))
    return y.reshape(*lead, rows)


_Buf = Union[Any, tuple[int, int]]


def _addr(buf: _Buf, what: str) -> tuple[int, int, Any]:
    """(address, nbytes, owner) of a buffer, or of an (address, nbytes) pair (owner None)."""
    if isinstance(buf, tuple):
        if len(buf) != 2:
            raise ValueError(f"{what} must be a buffer or an (address, nbytes) pair")
        return int(buf[0]), int(buf[1]), None
    a = _weight_view(buf)
    return int(a.ctypes.data), int(a.nbytes), a


def expert_ref(
    gate: _Buf, up: _Buf, down: _Buf, qtypes: Union[QTypeLike, Sequence[QTypeLike]], n_ff: int, n_embd: int
) -> "C.ExpertRef":
    """One expert for :func:`moe_ffn` from its gate/up ``[n_ff, n_embd]`` and down ``[n_embd, n_ff]`` rows.

    Each of gate/up/down is a buffer (numpy uint8 view into the mmapped file, bytes, CPU tensor),
    kept alive by the returned handle, or an ``(address, nbytes)`` pair (e.g. a cache slot) that
    the caller keeps valid. ``qtypes`` is one type for all three or a (gate, up, down) triple.
    Sizes are validated against rows x row bytes (ValueError).
    """
    if isinstance(qtypes, (list, tuple)):
        if len(qtypes) != 3:
            raise ValueError("qtypes must be one type or a (gate, up, down) triple")
        tg, tu, td = (qtype_info(t).id for t in qtypes)
    else:
        tg = tu = td = qtype_info(qtypes).id
    (ga, gn, go), (ua, un, uo), (da, dn, do) = _addr(gate, "gate"), _addr(up, "up"), _addr(down, "down")
    return C.ExpertRef(ga, ua, da, tg, tu, td, int(n_ff), int(n_embd), gn, un, dn, (go, uo, do))


def moe_ffn(
    x: Any,
    experts: Sequence["C.ExpertRef"],
    sel: Any,
    w: Any,
    out: Optional[Any] = None,
    accumulate: bool = False,
) -> Any:
    """Fused MoE FFN for a few tokens: ``out[t] (+)= sum_j w[t,j] * down(silu(gate x_t) * up x_t)``.

    Parameters
    ----------
    x : float32 [n_tok, n_embd] (numpy or CPU torch)
    experts : ExpertRef handles (from :func:`expert_ref`); ``sel`` indexes into this list.
    sel : int [n_tok, k]; -1 skips a slot. Out-of-range indices raise ValueError.
    w : float [n_tok, k] gate weights.
    out : optional float32 [n_tok, n_embd] to write (or add, with ``accumulate``) into.
    """
    is_torch = type(x).__module__.startswith("torch")
    n_embd = int(x.shape[-1])
    xa, _ = _as_f32_2d(x, n_embd)
    def to_np(a: Any) -> np.ndarray:
        return a.detach().cpu().numpy() if type(a).__module__.startswith("torch") else np.asarray(a)

    sel_a = np.ascontiguousarray(to_np(sel), dtype=np.int32)
    w_a = np.ascontiguousarray(to_np(w), dtype=np.float32)
    if sel_a.ndim != 2 or sel_a.shape != w_a.shape or sel_a.shape[0] != xa.shape[0]:
        raise ValueError(f"sel and w must both be [n_tok, k] with n_tok = {xa.shape[0]}")
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs an out to add into")
        res: Any = np.empty_like(xa)
        dst = res
    else:
        res = out
        dst = out.numpy() if type(out).__module__.startswith("torch") else out
        if not isinstance(dst, np.ndarray) or dst.dtype != np.float32 or dst.shape != xa.shape:
            raise ValueError(f"out must be float32 of shape {xa.shape}")
        if not dst.flags.c_contiguous or not dst.flags.writeable:
            raise ValueError("out must be C-contiguous and writeable")
    C.moe_ffn(xa, dst, list(experts), sel_a, w_a, bool(accumulate))
    if out is None and is_torch:
        import torch

        return torch.from_numpy(res)
    return res
