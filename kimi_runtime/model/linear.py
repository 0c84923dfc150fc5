"""QLinear: a linear layer over GGUF weight bytes. Float weights (F32/F16/BF16) become float32 tensors
(zero-copy for F32); quantized ones stay as raw bytes and run through the project's native kernels
(kimi_runtime.kernels; KR_KERNELS=0 selects exact float math on dequantized weights instead).
HeadLinear: per-head small matrices (MLA's k_b / v_b) through the same kernels."""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Optional

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as _gguf_dequantize

FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


def _native(name: str):
    """kimi_runtime.<name> (quant or kernels, over the compiled _C). A missing or stale extension is an
    ImportError here, never a silent fallback to dequantizing whole weights on every call."""
    return importlib.import_module(f"kimi_runtime.{name}")


def kernels():
    """kimi_runtime.kernels (quantized-activation integer kernels), or None when KR_KERNELS=0 asks for
    exact float math on dequantized weights (the reference path of exactness tests)."""
    if os.environ.get("KR_KERNELS", "1") == "0":
        return None
    return _native("kernels")


def _dequantize(raw: np.ndarray, qtype: GGMLQuantizationType, n: int) -> np.ndarray:
    """Native multithreaded dequantization (kimi_runtime.quant) for the formats it decodes, else
    gguf-py's (both bit-identical); returns float32 [n]."""
    quant = _native("quant")
    if quant.qtype_info(qtype).can_dequantize and raw.flags.c_contiguous:
        return quant.dequantize(raw, qtype, (n,))
    return _gguf_dequantize(raw, qtype).reshape(-1)


def row_bytes(qtype: GGMLQuantizationType, cols: int) -> int:
    """Bytes of one row of `cols` weights in `qtype`."""
    block, size = GGML_QUANT_SIZES[qtype]
    if cols % block:
        raise ValueError(f"{qtype.name}: row length {cols} is not a multiple of the block size {block}")
    return cols // block * size


def float_from_raw(raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 tensor of `shape` from raw GGUF bytes; a zero-copy view when the type is F32."""
    raw = np.asarray(raw).reshape(-1).view(np.uint8)
    n = int(np.prod(shape))
    if qtype == GGMLQuantizationType.F32:
        arr = raw.view(np.float32)
    elif qtype == GGMLQuantizationType.F16:
        arr = raw.view(np.float16).astype(np.float32)
    elif qtype == GGMLQuantizationType.BF16:
        arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        arr = _dequantize(raw, qtype, n)
    if arr.size != n:
        raise ValueError(f"{qtype.name}: {arr.size} values for shape {shape}")
    if not arr.flags.writeable:  # a read-only mmap: torch warns, but these weights are never written
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr).view(shape)
    return torch.from_numpy(arr).view(shape)


class QLinear:
    """y = x @ W.T for W [out_features, in_features] stored as GGUF bytes (or a float tensor)."""

    def __init__(self, raw: Optional[np.ndarray], qtype: GGMLQuantizationType | int, out_features: int,
                 in_features: int, *, weight: Optional[torch.Tensor] = None) -> None:
        self.qtype = GGMLQuantizationType(qtype)
        self.out_features = int(out_features)
        self.in_features = int(in_features)
        self.raw: Optional[np.ndarray] = None
        self.weight: Optional[torch.Tensor] = None  # float32 [out, in] for float types
        if weight is not None:
            if tuple(weight.shape) != (self.out_features, self.in_features):
                raise ValueError(f"weight shape {tuple(weight.shape)} != ({out_features}, {in_features})")
            self.weight = weight.to(torch.float32)
            return
        if raw is None:
            raise ValueError("QLinear needs raw bytes or a float weight")
        raw = np.asarray(raw).reshape(-1).view(np.uint8)
        need = self.out_features * row_bytes(self.qtype, self.in_features)
        if raw.nbytes != need:
            raise ValueError(f"{self.qtype.name} [{out_features}, {in_features}] needs {need} bytes, "
                             f"got {raw.nbytes}")
        if self.qtype in FLOAT_TYPES:
            self.weight = float_from_raw(raw, self.qtype, (self.out_features, self.in_features))
        else:
            self.raw = raw

    @classmethod
    def from_float(cls, w: torch.Tensor) -> "QLinear":
        """A float32 QLinear from a [out, in] tensor (the HF source)."""
        return cls(None, GGMLQuantizationType.F32, w.shape[0], w.shape[1], weight=w)

    @property
    def quantized(self) -> bool:
        return self.weight is None

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes if self.raw is not None else self.weight.numel() * 4

    def dense(self) -> torch.Tensor:
        """The weight as float32 [out, in] (dequantized on each call when quantized)."""
        if self.weight is not None:
            return self.weight
        return float_from_raw(self.raw, self.qtype, (self.out_features, self.in_features))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Selected rows as float32 [len(ids), in] (embedding lookup), dequantizing only those rows."""
        if self.weight is not None:
            return self.weight[ids]
        rb = row_bytes(self.qtype, self.in_features)
        blocks = self.raw.reshape(self.out_features, rb)[ids.numpy()]
        return float_from_raw(blocks, self.qtype, (len(ids), self.in_features))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, in] float32 -> [T, out]."""
        if self.weight is not None:
            return x @ self.weight.T
        k = kernels()
        if k is not None:
            return k.matmul(x.contiguous(), self.raw, self.qtype, self.out_features, self.in_features)
        return x @ self.dense().T


class HeadLinear:
    """Per-head maps y[h] = x[h] @ W[h].T over one tensor [H, rows, cols] (attn_k_b, attn_v_b), as GGUF
    bytes (quantized, or F32 from a float tensor): one native call for all heads (kernels.gemm_heads)
    on the kernels' thread pool; an older extension without it gets one gemm call per head."""

    def __init__(self, raw: np.ndarray, qtype: GGMLQuantizationType | int, heads: int, rows: int,
                 cols: int) -> None:
        from kimi_runtime._native import C  # noqa: PLC0415 - only built when the kernels are

        self._gemm = C.gemm
        self._gemm_heads = getattr(C, "gemm_heads", None)
        self.qtype = GGMLQuantizationType(qtype)
        self.heads, self.rows, self.cols = int(heads), int(rows), int(cols)
        rb = row_bytes(self.qtype, self.cols) * self.rows
        raw = np.asarray(raw).reshape(-1).view(np.uint8)
        if raw.nbytes != rb * self.heads:
            raise ValueError(f"{self.qtype.name} [{heads}, {rows}, {cols}] needs {rb * self.heads} bytes, "
                             f"got {raw.nbytes}")
        self.raw = raw
        self.parts = [raw[h * rb:(h + 1) * rb] for h in range(self.heads)]

    @classmethod
    def from_float(cls, w: torch.Tensor) -> Optional["HeadLinear"]:
        """Over a float32 [H, rows, cols] tensor (kept alive and not copied when contiguous), or None
        without the kernels."""
        if kernels() is None:
            return None
        w = w.detach().to(torch.float32).contiguous()
        return cls(w.numpy().reshape(-1).view(np.uint8), GGMLQuantizationType.F32, *w.shape)

    @classmethod
    def maybe(cls, raw: Optional[np.ndarray], qtype: GGMLQuantizationType, heads: int, rows: int,
              cols: int) -> Optional["HeadLinear"]:
        """A HeadLinear when the kernels are built and the weight is block-quantized with whole blocks
        per row, else None (the caller keeps float math)."""
        if raw is None or qtype in FLOAT_TYPES or kernels() is None:
            return None
        block = GGML_QUANT_SIZES[qtype][0]
        if cols % block:
            return None
        return cls(raw, qtype, heads, rows, cols)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [H, T, cols] float32 -> [H, T, rows]."""
        xs = x.contiguous().numpy()
        out = np.empty((self.heads, x.shape[1], self.rows), dtype=np.float32)
        q, r, c = int(self.qtype), self.rows, self.cols
        if self._gemm_heads is not None:
            self._gemm_heads(self.raw, q, self.heads, r, c, xs, out)
        else:
            for h, w in enumerate(self.parts):
                self._gemm(w, q, r, c, xs[h], out[h])
        return torch.from_numpy(out)
