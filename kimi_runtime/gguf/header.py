"""Parsing and validating a GGUF header (magic, version, metadata, tensor infos) from a mapped file.
Every count and length is checked against the bytes left before anything is allocated or looped over,
so a hostile header costs at most a pass over the file; every failure is a GGUFError naming the file,
the field and the problem."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kimi_runtime.errors import GGUFError
from kimi_runtime.gguf.format import (DEFAULT_ALIGNMENT, GGUF_MAGIC, INT64_MAX, MAX_DIMS, MAX_NAME_BYTES, SCALAR,
                                      SUPPORTED_VERSIONS, QType, VType, block_info, known_type)

# numeric arrays longer than this come back as np.ndarray (a copy), shorter ones as lists
ARRAY_AS_NUMPY = 64
MAX_ARRAY_NESTING = 4
# smallest encodings, used to bound counts by the bytes left
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8


class _Cursor:
    """Bounds-checked little-endian reads from a mapped header."""

    def __init__(self, buf: Any, size: int, path: Path) -> None:
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def fail(self, what: str, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what}: {problem}")

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(what, f"truncated (needs {n} bytes at offset {self.pos}, "
                                  f"the file has {max(0, self.size - self.pos)} left)")

    def scalar(self, code: str, size: int, what: str) -> Any:
        self.need(size, what)
        (v,) = struct.unpack_from(code, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self, what: str) -> int:
        return self.scalar("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", 8, what)

    def raw_string(self, what: str, max_len: Optional[int] = None) -> bytes:
        n = self.u64(f"{what} length")
        if max_len is not None and n > max_len:
            raise self.fail(what, f"length {n} exceeds the limit of {max_len} bytes")
        if n > self.left():
            raise self.fail(what, f"string length {n} exceeds the {self.left()} bytes left in the file")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def name_string(self, what: str, max_len: Optional[int] = None) -> str:
        b = self.raw_string(what, max_len)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(what, f"not valid UTF-8: {b[:40]!r}") from None


@dataclass
class Header:
    version: int
    metadata: dict[str, Any]
    metadata_types: dict[str, VType]
    infos: list[tuple[str, int, tuple[int, ...], int]]  # name, type id, ne, relative offset
    data_start: int
    alignment: int


def _read_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> Any:
    what = f"value of {key!r}"
    if vtype == VType.STRING:
        return cur.raw_string(what).decode("utf-8", errors="replace")
    if vtype == VType.ARRAY:
        if depth >= MAX_ARRAY_NESTING:
            raise cur.fail(what, f"arrays nested deeper than {MAX_ARRAY_NESTING}")
        sub = cur.u32(f"{what} element type")
        n = cur.u64(f"{what} array length")
        if sub == VType.STRING or sub == VType.ARRAY:
            min_el = 8 if sub == VType.STRING else 12
            if n > cur.left() // min_el:
                raise cur.fail(what, f"array length {n} cannot fit in the {cur.left()} bytes left")
            return [_read_value(cur, sub, key, depth + 1) for _ in range(n)]
        if sub not in SCALAR.keys():
            raise cur.fail(what, f"unknown array element type {sub}")
        _, size, dt = SCALAR[VType(sub)]
        if n > cur.left() // size:
            raise cur.fail(what, f"array length {n} cannot fit in the {cur.left()} bytes left")
        arr = np.frombuffer(cur.buf, dtype=dt, count=n, offset=cur.pos)
        cur.pos += n * size
        if sub == VType.BOOL:
            arr = arr != 0
        if n > ARRAY_AS_NUMPY:
            return arr.astype(arr.dtype.newbyteorder("="), copy=True)
        return arr.tolist()
    if vtype not in SCALAR.keys():
        raise cur.fail(what, f"unknown value type {vtype}")
    code, size, _ = SCALAR[VType(vtype)]
    v = cur.scalar(code, size, what)
    return bool(v) if vtype == VType.BOOL else v


def parse_header(buf: Any, size: int, path: Path) -> Header:
    """Parse and validate everything up to the data section of one file."""
    cur = _Cursor(buf, size, path)
    cur.need(24, "header")
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise cur.fail("magic", f"expected b'GGUF', found {magic!r} (not a GGUF file)")
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        hint = " (a big-endian GGUF? only little-endian files are supported)" if swapped in SUPPORTED_VERSIONS else ""
        raise cur.fail("version", f"unsupported GGUF version {version}{hint}; supported: 2, 3")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata kv count")
    if n_kv > cur.left() // _MIN_KV_BYTES:
        raise cur.fail("metadata kv count", f"{n_kv} key-value pairs cannot fit in a {size}-byte file")
    if n_tensors > cur.left() // _MIN_TENSOR_INFO_BYTES:
        raise cur.fail("tensor count", f"{n_tensors} tensor infos cannot fit in a {size}-byte file")

    md: dict[str, Any] = {}
    md_types: dict[str, VType] = {}
    for i in range(n_kv):
        key = cur.name_string(f"metadata key #{i}")
        vtype = cur.u32(f"type of {key!r}")
        if vtype not in VType.__members__.values():
            raise cur.fail(f"type of {key!r}", f"unknown value type {vtype}")
        if key in md:
            raise cur.fail(f"metadata key {key!r}", "duplicate key")
        md[key] = _read_value(cur, vtype, key)
        md_types[key] = VType(vtype)

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in md:
        a = md["general.alignment"]
        if md_types["general.alignment"] != VType.UINT32:
            raise cur.fail("general.alignment", f"type {md_types['general.alignment'].name}, expected UINT32")
        if a <= 0 or a & (a - 1):
            raise cur.fail("general.alignment", f"{a} is not a power of two")
        alignment = a
    if n_tensors > cur.left() // _MIN_TENSOR_INFO_BYTES:
        raise cur.fail("tensor count", f"{n_tensors} tensor infos cannot fit in the {cur.left()} bytes left")

    infos: list[tuple[str, int, tuple[int, ...], int]] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        name = cur.name_string(f"tensor #{i} name", MAX_NAME_BYTES)
        what = f"tensor {name!r}"
        if name in seen:
            raise cur.fail(what, "duplicate tensor name")
        seen.add(name)
        n_dims = cur.u32(f"{what} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(what, f"n_dims {n_dims} is not in 1..{MAX_DIMS}")
        ne = tuple(cur.u64(f"{what} ne[{j}]") for j in range(n_dims))
        count = 1
        for j, d in enumerate(ne):
            if d > INT64_MAX:
                raise cur.fail(what, f"ne[{j}] = {d} is negative as int64")
            count *= d
            if count > INT64_MAX:
                raise cur.fail(what, f"dims {list(ne)} overflow int64")
        type_id = cur.u32(f"{what} type")
        if not known_type(type_id):
            raise cur.fail(what, f"unknown ggml type {type_id}")
        blck, _ = block_info(type_id)
        if ne[0] % blck:
            raise cur.fail(what, f"ne[0] = {ne[0]} is not a multiple of {QType(type_id).name}'s block size {blck}")
        off = cur.u64(f"{what} offset")
        if off % alignment:
            raise cur.fail(what, f"data offset {off} is not aligned to {alignment}")
        infos.append((name, type_id, ne, off))
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    return Header(version, md, md_types, infos, data_start, alignment)


