"""GGUF block formats from Python: the format table, exact multithreaded dequantization and the
reference quantizers, all over the native core (buffers are passed without copies).

``qtype`` arguments accept a :class:`gguf.GGMLQuantizationType`, its integer id or its name
(case-insensitive, e.g. ``"q4_k"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
from gguf import GGMLQuantizationType

from kimi_runtime._native import C, C_cuda

if TYPE_CHECKING:  # pragma: no cover
    import torch

QTypeLike = Union[GGMLQuantizationType, int, str]

__all__ = [
    "QType", "QTYPES", "qtype_info", "row_bytes", "tensor_bytes",
    "dequantize", "dequantize_torch", "dequantize_cuda", "quantize",
]


@dataclass(frozen=True)
class QType:
    """Geometry and capabilities of one ggml type, as the native core defines them."""

    id: int
    name: str
    block_size: int  # weights per block
    type_size: int  # bytes per block
    can_dequantize: bool
    can_quantize: bool

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    @property
    def ggml_type(self) -> GGMLQuantizationType:
        return GGMLQuantizationType(self.id)


def _build_table() -> dict[int, QType]:
    table: dict[int, QType] = {}
    for tid in range(64):
        info = C.type_traits(tid)
        if info is not None:
            name, bs, ts, deq, q = info
            table[tid] = QType(tid, name, bs, ts, bool(deq), bool(q))
    return table


QTYPES: dict[int, QType] = _build_table()
"""Every type the native core knows, keyed by ggml type id."""
_BY_NAME = {q.name.upper(): q for q in QTYPES.values()}


def qtype_info(qtype: QTypeLike) -> QType:
    """Resolve a type given as enum, id or name; ValueError naming it when unknown."""
    if isinstance(qtype, str):
        q = _BY_NAME.get(qtype.strip().upper())
        if q is None:
            raise ValueError(f"unknown quantization type {qtype!r}; known: {sorted(_BY_NAME)}")
        return q
    if isinstance(qtype, (bool, float)) or not isinstance(qtype, (int, np.integer)):
        raise ValueError(f"quantization type must be a GGMLQuantizationType, int or name, not {qtype!r}")
    q = QTYPES.get(int(qtype))
    if q is None:
        raise ValueError(f"unknown quantization type id {int(qtype)}")
    return q


def _shape(shape: Union[int, Sequence[int]]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not dims or any(not isinstance(d, (int, np.integer)) or d < 0 for d in dims):
        raise ValueError(f"shape must be non-negative integers, got {shape!r}")
    return tuple(int(d) for d in dims)


def row_bytes(qtype: QTypeLike, n: int) -> int:
    """Bytes of a row of ``n`` weights; ValueError if ``n`` is not a multiple of the block size."""
    q = qtype_info(qtype)
    if n < 0 or n % q.block_size:
        raise ValueError(f"row length {n} is not a multiple of the {q.name} block size {q.block_size}")
    return n // q.block_size * q.type_size


def tensor_bytes(qtype: QTypeLike, shape: Union[int, Sequence[int]]) -> int:
    """Bytes of a tensor of ``shape`` (numpy order: blocks run along the last dimension)."""
    dims = _shape(shape)
    return math.prod(dims[:-1]) * row_bytes(qtype, dims[-1])


def _as_bytes(raw: Any, what: str = "raw") -> np.ndarray:
    """A flat uint8 view of a C-contiguous buffer (bytes, bytearray, mmap, memoryview, ndarray)."""
    if isinstance(raw, np.ndarray):
        if not raw.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
        return raw.reshape(-1).view(np.uint8)
    try:
        mv = memoryview(raw)
    except TypeError:
        raise ValueError(f"{what} must be a bytes-like object or numpy array, not {type(raw).__name__}")
    if not mv.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous")
    return np.frombuffer(mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv, dtype=np.uint8)


def _out_kind(out_dtype: Any) -> tuple[int, str]:
    """(native code, kind) for an output dtype: kind is 'np32', 'np16', 'u16' or 'torch_bf16'."""
    if isinstance(out_dtype, str) and out_dtype.lower() in ("bfloat16", "bf16"):
        return 2, "torch_bf16"
    if type(out_dtype).__module__ == "torch":
        import torch

        if out_dtype == torch.bfloat16:
            return 2, "torch_bf16"
        raise ValueError(f"unsupported out_dtype {out_dtype}; torch output is only for bfloat16")
    dt = np.dtype(out_dtype)
    if dt == np.float32:
        return 0, "np32"
    if dt == np.float16:
        return 1, "np16"
    if dt == np.uint16:
        return 2, "u16"
    raise ValueError(f"unsupported out_dtype {out_dtype!r}: use float32, float16, 'bfloat16' or uint16")


def dequantize(
    raw: Any,
    qtype: QTypeLike,
    shape: Union[int, Sequence[int]],
    out_dtype: Any = np.float32,
    out: Optional[Any] = None,
) -> Any:
    """Dequantize GGUF blocks to floats, bit-identical to ``gguf.quants.dequantize``.

    Parameters
    ----------
    raw : bytes-like or numpy array
        The tensor's bytes (read without copying; C-contiguous; exactly ``tensor_bytes(qtype, shape)``).
    qtype : GGMLQuantizationType, int or str
    shape : sequence of int
        Shape in numpy order; the last dimension must be a multiple of the block size.
    out_dtype : np.float32 (default), np.float16, ``"bfloat16"`` / ``torch.bfloat16`` (returns a
        ``torch.bfloat16`` tensor) or np.uint16 (bf16 bit patterns in a numpy array).
    out : optional preallocated C-contiguous array/tensor of that dtype and shape to write into.

    Returns
    -------
    numpy.ndarray of ``shape`` (or a torch.Tensor for bfloat16). Runs on the native thread pool
    with the GIL released.
    """
    q = qtype_info(qtype)
    if not q.can_dequantize:
        raise ValueError(f"no dequantizer for {q.name}")
    dims = _shape(shape)
    need = tensor_bytes(q.id, dims)
    src = _as_bytes(raw)
    if src.nbytes != need:
        raise ValueError(f"raw holds {src.nbytes} bytes but a {q.name} tensor of shape {dims} needs {need}")
    code, kind = _out_kind(out_dtype)
    if out is None:
        if kind == "torch_bf16":
            import torch

            result: Any = torch.empty(dims, dtype=torch.bfloat16)
        else:
            result = np.empty(dims, dtype={"np32": np.float32, "np16": np.float16, "u16": np.uint16}[kind])
    else:
        result = out
        if tuple(result.shape) != dims:
            raise ValueError(f"out has shape {tuple(result.shape)}, expected {dims}")
    if kind == "torch_bf16":
        import torch

        if result.dtype != torch.bfloat16 or result.device.type != "cpu" or not result.is_contiguous():
            raise ValueError("out must be a contiguous CPU torch.bfloat16 tensor")
        dst = result.view(torch.int16).numpy()
    else:
        if not isinstance(result, np.ndarray) or result.dtype != np.dtype(out_dtype):
            raise ValueError(f"out must be a numpy array of dtype {np.dtype(out_dtype)}")
        if not result.flags.c_contiguous or not result.flags.writeable:
            raise ValueError("out must be C-contiguous and writeable")
        dst = result
    n_cols = dims[-1]
    n_rows = math.prod(dims[:-1])
    C.dequantize(src, q.id, n_rows, n_cols, dst.reshape(-1), code)
    return result


def dequantize_torch(raw: Any, qtype: QTypeLike, shape: Union[int, Sequence[int]]) -> "torch.Tensor":
    """float32 :func:`dequantize` as a torch tensor sharing the numpy result's memory."""
    import torch

    return torch.from_numpy(dequantize(raw, qtype, shape))


def quantize(x: np.ndarray, qtype: QTypeLike) -> np.ndarray:
    """Quantize float rows into GGUF blocks (uint8 array of shape ``(*x.shape[:-1], row_bytes)``).

    Supported: F32, F16, BF16, Q8_0 and Q4_0 (bit-identical to ``gguf.quants.quantize``), Q4_K and
    Q6_K (ggml's reference quantizers, no importance matrix), Q8_K (ggml's activation format:
    f32 d, int8 qs, int16 bsums). ``x`` must be C-contiguous and finite; other float dtypes are
    converted to float32 first.
    """
    q = qtype_info(qtype)
    if not q.can_quantize:
        raise ValueError(f"no quantizer for {q.name}")
    if not isinstance(x, np.ndarray):
        raise ValueError(f"x must be a numpy array, not {type(x).__name__}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (use np.ascontiguousarray)")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    if x.dtype != np.float32:
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"x must be a float array, not {x.dtype}")
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("x contains inf or nan")
    n_cols = x.shape[-1]
    rb = row_bytes(q.id, n_cols)
    out = np.empty((*x.shape[:-1], rb), dtype=np.uint8)
    C.quantize(x.reshape(-1), q.id, math.prod(x.shape[:-1]), n_cols, out.reshape(-1))
    return out


def dequantize_cuda(raw: "torch.Tensor", qtype: QTypeLike, shape: Union[int, Sequence[int]],
                    out_dtype: Any = None) -> "torch.Tensor":
    """GPU :func:`dequantize`: ``raw`` is a contiguous uint8 CUDA tensor; returns a tensor on the same
    device (float32 by default, or torch.float16 / torch.bfloat16), enqueued on the current stream.
    float32 results equal the CPU's bit for bit."""
    import torch

    if C_cuda is None or not hasattr(C_cuda, "dequantize"):
        raise RuntimeError("kimi_runtime was built without the CUDA dequantizer")
    q = qtype_info(qtype)
    if not q.can_dequantize:
        raise ValueError(f"no dequantizer for {q.name}")
    if not isinstance(raw, torch.Tensor) or raw.device.type != "cuda" or raw.dtype != torch.uint8:
        raise ValueError("raw must be a uint8 CUDA tensor")
    if not raw.is_contiguous():
        raise ValueError("raw must be contiguous")
    dims = _shape(shape)
    need = tensor_bytes(q.id, dims)
    if raw.numel() != need:
        raise ValueError(f"raw holds {raw.numel()} bytes but a {q.name} tensor of shape {dims} needs {need}")
    dtype = torch.float32 if out_dtype is None else out_dtype
    codes = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
    if dtype not in codes:
        raise ValueError(f"unsupported out_dtype {out_dtype}: use torch.float32, float16 or bfloat16")
    out = torch.empty(dims, dtype=dtype, device=raw.device)
    stream = torch.cuda.current_stream(raw.device).cuda_stream
    with torch.cuda.device(raw.device):
        C_cuda.dequantize(raw.data_ptr(), need, q.id, math.prod(dims[:-1]), dims[-1], out.data_ptr(),
                          out.numel() * out.element_size(), codes[dtype], stream)
    return out
