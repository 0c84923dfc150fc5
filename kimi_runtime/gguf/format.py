"""GGUF wire-format constants shared by the reader and the writer: value types, ggml type sizes,
alignment. The ggml type table comes from the `gguf` package so the two never disagree."""
from __future__ import annotations

from enum import IntEnum
from typing import Any, Union

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME (64) minus the terminating NUL
INT64_MAX = (1 << 63) - 1

QType = GGMLQuantizationType


class VType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# scalar value types: struct code, size, numpy dtype
SCALAR: dict[VType, tuple[str, int, str]] = {
    VType.UINT8: ("<B", 1, "<u1"),
    VType.INT8: ("<b", 1, "<i1"),
    VType.UINT16: ("<H", 2, "<u2"),
    VType.INT16: ("<h", 2, "<i2"),
    VType.UINT32: ("<I", 4, "<u4"),
    VType.INT32: ("<i", 4, "<i4"),
    VType.FLOAT32: ("<f", 4, "<f4"),
    VType.BOOL: ("<B", 1, "<u1"),
    VType.UINT64: ("<Q", 8, "<u8"),
    VType.INT64: ("<q", 8, "<i8"),
    VType.FLOAT64: ("<d", 8, "<f8"),
}

INT_RANGES: dict[VType, tuple[int, int]] = {
    VType.UINT8: (0, 0xFF), VType.INT8: (-0x80, 0x7F),
    VType.UINT16: (0, 0xFFFF), VType.INT16: (-0x8000, 0x7FFF),
    VType.UINT32: (0, 0xFFFFFFFF), VType.INT32: (-0x80000000, 0x7FFFFFFF),
    VType.UINT64: (0, (1 << 64) - 1), VType.INT64: (-(1 << 63), (1 << 63) - 1),
}


def block_info(qtype: Union[int, QType]) -> tuple[int, int]:
    """(elements per block, bytes per block) of a ggml type."""
    return GGML_QUANT_SIZES[QType(qtype)]


def known_type(type_id: int) -> bool:
    try:
        return QType(type_id) in GGML_QUANT_SIZES
    except ValueError:
        return False


def row_bytes(qtype: Union[int, QType], ne0: int) -> int:
    blck, size = block_info(qtype)
    if ne0 % blck:
        raise ValueError(f"row length {ne0} is not a multiple of {QType(qtype).name}'s block size {blck}")
    return ne0 // blck * size


def tensor_nbytes(qtype: Union[int, QType], ne: tuple[int, ...]) -> int:
    n = row_bytes(qtype, ne[0])
    for d in ne[1:]:
        n *= d
    return n


def align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def qtype_of(x: Union[str, int, QType]) -> QType:
    """Accept a GGMLQuantizationType, its integer id or its name ("Q4_K", "q4_k")."""
    if isinstance(x, QType):
        return x
    if isinstance(x, str):
        try:
            return QType[x.upper()]
        except KeyError:
            raise ValueError(f"unknown ggml type {x!r}") from None
    return QType(int(x))


def float_dtype(qtype: QType) -> Any:
    """numpy dtype of an unquantized ggml type (BF16 as raw uint16 bits), else None."""
    return {
        QType.F32: np.dtype("<f4"), QType.F16: np.dtype("<f2"), QType.BF16: np.dtype("<u2"),
        QType.F64: np.dtype("<f8"), QType.I8: np.dtype("<i1"), QType.I16: np.dtype("<i2"),
        QType.I32: np.dtype("<i4"), QType.I64: np.dtype("<i8"),
    }.get(qtype)
