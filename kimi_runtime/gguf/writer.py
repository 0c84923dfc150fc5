"""A streaming GGUF writer: the header is written first from tensor shapes alone, then each tensor's
bytes are pulled from a callback chunk by chunk, so a multi-GB file needs only one chunk in memory.
Split output follows gguf-split: whole tensors per part, metadata in part 0, `split.*` in all."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from kimi_runtime.gguf.format import (DEFAULT_ALIGNMENT, GGUF_MAGIC, INT_RANGES, SCALAR, QType, VType,
                                      align, tensor_nbytes)
from kimi_runtime.gguf.split import split_names

KEY_SPLIT_NO = "split.no"
KEY_SPLIT_COUNT = "split.count"
KEY_SPLIT_TENSORS = "split.tensors.count"


@dataclass(frozen=True)
class Typed:
    """A metadata value with an explicit GGUF type (`sub` is the element type of an ARRAY)."""

    value: Any
    vtype: VType
    sub: Optional[VType] = None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    ggml_type: QType
    ne: tuple[int, ...]  # GGUF order, ne[0] contiguous

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.ggml_type, self.ne)


def infer_vtype(value: Any) -> tuple[VType, Optional[VType]]:
    if isinstance(value, Typed):
        return value.vtype, value.sub
    if isinstance(value, (bool, np.bool_)):
        return VType.BOOL, None
    if isinstance(value, (int, np.integer)):
        v = int(value)
        for vt in (VType.UINT32, VType.INT32, VType.UINT64, VType.INT64):
            lo, hi = INT_RANGES[vt]
            if lo <= v <= hi:
                return vt, None
        raise ValueError(f"integer {v} does not fit in 64 bits")
    if isinstance(value, (float, np.floating)):
        return VType.FLOAT32, None
    if isinstance(value, str):
        return VType.STRING, None
    if isinstance(value, np.ndarray):
        sub = {np.dtype("u1"): VType.UINT8, np.dtype("i1"): VType.INT8, np.dtype("u2"): VType.UINT16,
               np.dtype("i2"): VType.INT16, np.dtype("u4"): VType.UINT32, np.dtype("i4"): VType.INT32,
               np.dtype("f4"): VType.FLOAT32, np.dtype("u8"): VType.UINT64, np.dtype("i8"): VType.INT64,
               np.dtype("f8"): VType.FLOAT64, np.dtype("bool"): VType.BOOL}.get(value.dtype.newbyteorder("="))
        if sub is None:
            raise ValueError(f"no GGUF array type for numpy dtype {value.dtype}")
        return VType.ARRAY, sub
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("cannot infer the element type of an empty array; use Typed")
        if all(isinstance(v, str) for v in value):
            return VType.ARRAY, VType.STRING
        if all(isinstance(v, bool) for v in value):
            return VType.ARRAY, VType.BOOL
        if all(isinstance(v, int) for v in value):
            lo, hi = min(value), max(value)
            return VType.ARRAY, VType.INT32 if -(1 << 31) <= lo and hi < (1 << 31) else VType.INT64
        if all(isinstance(v, (int, float)) for v in value):
            return VType.ARRAY, VType.FLOAT32
        raise ValueError("mixed or unsupported array element types; use Typed")
    raise ValueError(f"no GGUF type for {type(value).__name__}")


def pack_string(s: Union[str, bytes]) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def pack_value(value: Any, vtype: VType, sub: Optional[VType] = None) -> bytes:
    """The value's bytes, without its type tag."""
    if isinstance(value, Typed):
        value = value.value
    if vtype == VType.STRING:
        return pack_string(value)
    if vtype == VType.ARRAY:
        if sub is None:
            raise ValueError("array without element type")
        n = len(value)
        head = struct.pack("<IQ", int(sub), n)
        if sub == VType.STRING:
            return head + b"".join(pack_string(v) for v in value)
        if sub == VType.ARRAY:
            raise ValueError("nested arrays are not written by this writer")
        arr = np.asarray(value)
        if sub == VType.BOOL:
            arr = arr.astype(bool)
        return head + arr.astype(SCALAR[sub][2]).tobytes()
    code, _, _ = SCALAR[vtype]
    if vtype == VType.BOOL:
        return struct.pack(code, 1 if value else 0)
    if vtype in INT_RANGES:
        lo, hi = INT_RANGES[vtype]
        if not lo <= int(value) <= hi:
            raise ValueError(f"{value} does not fit in {vtype.name}")
        return struct.pack(code, int(value))
    return struct.pack(code, float(value))


def pack_kv(key: str, value: Any) -> bytes:
    vtype, sub = infer_vtype(value)
    return pack_string(key) + struct.pack("<I", int(vtype)) + pack_value(value, vtype, sub)


def pack_tensor_info(name: str, ne: Sequence[int], ggml_type: int, offset: int) -> bytes:
    out = pack_string(name) + struct.pack("<I", len(ne))
    out += b"".join(struct.pack("<Q", d) for d in ne)
    return out + struct.pack("<IQ", int(ggml_type), offset)


def header_bytes(metadata: Mapping[str, Any], tensors: Sequence[TensorSpec], alignment: int = DEFAULT_ALIGNMENT,
                 version: int = 3) -> tuple[bytes, list[int]]:
    """Header + KV + tensor infos (unpadded) and each tensor's offset relative to the data section."""
    offsets, off = [], 0
    for t in tensors:
        offsets.append(off)
        off += align(t.nbytes, alignment)
    out = bytearray(GGUF_MAGIC + struct.pack("<IQQ", version, len(tensors), len(metadata)))
    for k, v in metadata.items():
        out += pack_kv(k, v)
    for t, o in zip(tensors, offsets):
        out += pack_tensor_info(t.name, t.ne, t.ggml_type, o)
    return bytes(out), offsets


def plan_split(tensors: Sequence[TensorSpec], n_parts: int) -> list[list[TensorSpec]]:
    """Whole tensors in order, n_parts groups of about equal bytes, each non-empty."""
    if n_parts < 1 or n_parts > len(tensors):
        raise ValueError(f"cannot split {len(tensors)} tensors into {n_parts} parts")
    total = sum(t.nbytes for t in tensors)
    parts: list[list[TensorSpec]] = [[] for _ in range(n_parts)]
    acc, p = 0, 0
    for i, t in enumerate(tensors):
        left_tensors = len(tensors) - i
        # move on when this part has its share, but always leave one tensor per remaining part
        if parts[p] and p < n_parts - 1 and (acc >= total * (p + 1) / n_parts or left_tensors <= n_parts - 1 - p):
            p += 1
        parts[p].append(t)
        acc += t.nbytes
    return parts


ChunkFn = Callable[[TensorSpec], Iterable[Union[np.ndarray, bytes]]]


def write_gguf(path: Union[str, Path], metadata: Mapping[str, Any], tensors: Sequence[TensorSpec], chunks: ChunkFn,
               *, split: Optional[int] = None, alignment: int = DEFAULT_ALIGNMENT,
               progress: Optional[Callable[[int], None]] = None) -> list[Path]:
    """Write `tensors` (bytes pulled from `chunks(spec)`, in order) and return the written paths."""
    path = Path(path)
    n_parts = split or 1
    groups = plan_split(tensors, n_parts) if n_parts > 1 else [list(tensors)]
    paths = split_names(path, n_parts) if n_parts > 1 else [path]
    md = dict(metadata)
    if alignment != DEFAULT_ALIGNMENT:
        md["general.alignment"] = Typed(alignment, VType.UINT32)
    for i, (p, group) in enumerate(zip(paths, groups)):
        part_md: dict[str, Any] = md if i == 0 else {}
        if n_parts > 1:
            part_md = dict(part_md)
            if i > 0 and alignment != DEFAULT_ALIGNMENT:
                part_md["general.alignment"] = Typed(alignment, VType.UINT32)
            part_md[KEY_SPLIT_NO] = Typed(i, VType.UINT16)
            part_md[KEY_SPLIT_COUNT] = Typed(n_parts, VType.UINT16)
            part_md[KEY_SPLIT_TENSORS] = Typed(len(tensors), VType.INT32)
        with open(p, "wb") as f:
            _write_part(f, part_md, group, chunks, alignment, progress)
    return paths


def _write_part(f: BinaryIO, md: Mapping[str, Any], tensors: Sequence[TensorSpec], chunks: ChunkFn,
                alignment: int, progress: Optional[Callable[[int], None]]) -> None:
    head, offsets = header_bytes(md, tensors, alignment)
    f.write(head)
    f.write(b"\0" * (align(len(head), alignment) - len(head)))
    data_start = f.tell()
    for t, off in zip(tensors, offsets):
        assert f.tell() == data_start + off
        written = 0
        for c in chunks(t):
            b = c if isinstance(c, (bytes, bytearray, memoryview)) else np.ascontiguousarray(c).view(np.uint8)
            n = len(b) if not isinstance(b, np.ndarray) else b.nbytes
            f.write(b if not isinstance(b, np.ndarray) else b.data)
            written += n
            if progress is not None:
                progress(n)
        if written != t.nbytes:
            raise ValueError(f"tensor {t.name}: wrote {written} bytes, expected {t.nbytes}")
        f.write(b"\0" * (align(written, alignment) - written))
