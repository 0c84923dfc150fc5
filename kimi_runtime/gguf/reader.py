"""A strict, mmap-based GGUF reader. Headers are parsed with every count and length bounded by the
bytes left in the file before anything is allocated; tensor data is never read, only exposed as
zero-copy numpy views of the mapped file. Split sets are found and checked from their first part."""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from kimi_runtime.config import ARCH, ModelConfig
from kimi_runtime.errors import ConfigError, GGUFError
from kimi_runtime.gguf import names
from kimi_runtime.gguf.format import QType, VType, block_info, float_dtype
from kimi_runtime.gguf.header import Header, parse_header
from kimi_runtime.gguf.split import parse_split_name


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: QType
    ne: tuple[int, ...]  # GGUF order
    nbytes: int
    part: int  # index into GGUFModel.paths
    offset: int  # absolute byte offset in that part's file
    row_bytes: int  # bytes of one ne[0] row
    _parts: "_Parts" = field(repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (reversed ne)."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.ne[0] if self.ne[0] else 0

    @property
    def data(self) -> np.ndarray:
        """The raw bytes: uint8, shape (nbytes,), a zero-copy view of the mapped file."""
        return self._parts.view(self.part, self.offset, self.nbytes)


class _Parts:
    """Owns the mmaps; views handed out keep them alive, `close` drops our references."""

    def __init__(self) -> None:
        self.maps: list[mmap.mmap] = []
        self.arrays: Optional[list[np.ndarray]] = []
        self.paths: list[Path] = []

    def add(self, path: Path, mm: mmap.mmap) -> None:
        assert self.arrays is not None
        self.paths.append(path)
        self.maps.append(mm)
        self.arrays.append(np.frombuffer(mm, dtype=np.uint8))

    def array(self, part: int) -> np.ndarray:
        if self.arrays is None:
            raise GGUFError(f"{self.paths[0] if self.paths else 'GGUF'}: model is closed")
        return self.arrays[part]

    def view(self, part: int, offset: int, nbytes: int) -> np.ndarray:
        return self.array(part)[offset:offset + nbytes]

    def close(self) -> None:
        self.arrays = None
        for mm in self.maps:
            try:
                mm.close()
            except BufferError:  # a caller still holds a view; the map lives until it is dropped
                pass
        self.maps = []


def _map(path: Path) -> tuple[mmap.mmap, int]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise GGUFError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise GGUFError(f"{path}: is a directory, not a GGUF file") from None
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size < 24:
            raise GGUFError(f"{path}: header: truncated (file is {size} bytes; a GGUF header needs 24)")
        try:
            return mmap.mmap(fd, 0, access=mmap.ACCESS_READ), size
        except (OSError, ValueError) as e:
            raise GGUFError(f"{path}: cannot mmap: {e}") from None
    finally:
        os.close(fd)


class GGUFModel:
    """One GGUF model (a single file or a split set). Use `open_gguf`."""

    def __init__(self, path: Union[str, Path], *, check_model: bool = True) -> None:
        self._parts = _Parts()
        try:
            self._open(Path(path), check_model)
        except BaseException:
            self._parts.close()
            raise

    # ---- opening
    def _open(self, path: Path, check_model: bool) -> None:
        given = path
        parsed = parse_split_name(path)
        if parsed is not None and parsed[1] != 1 and parsed[0].exists():
            path = parsed[0]  # any part of a set opens the whole set
        headers = [self._add_part(path)]
        md0 = headers[0].metadata
        count = self._split_int(md0, "split.count", path, default=1)
        if count < 1:
            raise GGUFError(f"{path}: split.count: {count} is not a positive part count")
        no = self._split_int(md0, "split.no", path, default=0)
        if no != 0:
            raise GGUFError(f"{path}: split.no: is {no}, expected 0 (open the first part of the set"
                            f"{', not ' + str(given) if given != path else ''})")
        if count > 1:
            if parsed is None:
                raise GGUFError(f"{path}: split.count: is {count} but the name does not follow "
                                f"'<stem>-00001-of-{count:05d}.gguf', so the other parts cannot be found")
            if parsed[2] != count:
                raise GGUFError(f"{path}: split.count: is {count} but the file name says {parsed[2]} parts")
            stem = path.name[: -len(f"-00001-of-{parsed[2]:05d}.gguf")]
            for i in range(1, count):
                p = path.with_name(f"{stem}-{i + 1:05d}-of-{count:05d}.gguf")
                if not p.exists():
                    raise GGUFError(f"{p}: split part {i + 1} of {count} is missing (set opened from {path})")
                h = self._add_part(p)
                pno = self._split_int(h.metadata, "split.no", p, default=None)
                pcount = self._split_int(h.metadata, "split.count", p, default=None)
                if pno != i:
                    raise GGUFError(f"{p}: split.no: is {pno}, expected {i}")
                if pcount != count:
                    raise GGUFError(f"{p}: split.count: is {pcount}, expected {count} (as in {path})")
                headers.append(h)
        self.metadata: dict[str, Any] = md0
        self.metadata_types: dict[str, VType] = headers[0].metadata_types
        self.version = headers[0].version
        self.tensors: dict[str, TensorInfo] = {}
        for part, h in enumerate(headers):
            self._add_tensors(part, h)
        if "split.tensors.count" in md0:
            total = self._split_int(md0, "split.tensors.count", path, default=None)
            if total != len(self.tensors):
                raise GGUFError(f"{path}: split.tensors.count: is {total} but the {count} part(s) hold "
                                f"{len(self.tensors)} tensors")
        if check_model and md0.get("general.architecture") == ARCH:
            self.config  # noqa: B018 - validate the deepseek2 keys now
            if self.tensors:
                self._check_shapes()
                self.experts  # noqa: B018

    def _add_part(self, path: Path) -> Header:
        mm, size = _map(path)
        self._parts.add(path, mm)
        return parse_header(mm, size, path)

    @staticmethod
    def _split_int(md: dict[str, Any], key: str, path: Path, default: Any) -> Any:
        if key not in md:
            if default is None:
                raise GGUFError(f"{path}: {key}: missing in a split part")
            return default
        v = md[key]
        if not isinstance(v, int) or isinstance(v, bool):
            raise GGUFError(f"{path}: {key}: has type {type(v).__name__}, expected an integer")
        return v

    def _add_tensors(self, part: int, h: Header) -> None:
        path = self._parts.paths[part]
        size = self._parts.array(part).size
        spans = []
        for name, type_id, ne, rel in h.infos:
            if name in self.tensors:
                other = self._parts.paths[self.tensors[name].part]
                raise GGUFError(f"{path}: tensor {name!r}: also present in {other}")
            qt = QType(type_id)
            blck, tsize = block_info(qt)
            rb = ne[0] // blck * tsize
            nbytes = rb
            for d in ne[1:]:
                nbytes *= d
            start = h.data_start + rel
            if start + nbytes > size:
                raise GGUFError(f"{path}: tensor {name!r}: data [{start}, {start + nbytes}) runs past the end "
                                f"of the file ({size} bytes)")
            self.tensors[name] = TensorInfo(name, qt, ne, nbytes, part, start, rb, self._parts)
            spans.append((start, nbytes, name))
        spans.sort()
        for (s0, n0, a), (s1, _, b) in zip(spans, spans[1:]):
            if s1 < s0 + n0:
                raise GGUFError(f"{path}: tensor {b!r}: data at {s1} overlaps tensor {a!r} [{s0}, {s0 + n0})")

    def _check_shapes(self) -> None:
        cfg = self.config
        if cfg.n_layer > len(self.tensors):
            raise GGUFError(f"{self.paths[0]}: {ARCH}.block_count: {cfg.n_layer} layers but the file holds only "
                            f"{len(self.tensors)} tensors")
        for t in self.tensors.values():
            want = names.expected_shape(cfg, t.name)
            if want is not None and t.ne != want:
                raise GGUFError(f"{self.paths[t.part]}: tensor {t.name!r}: shape (ne) {list(t.ne)} does not match "
                                f"the metadata, which implies {list(want)}")

    # ---- public surface
    @property
    def paths(self) -> list[Path]:
        return list(self._parts.paths)

    @cached_property
    def config(self) -> ModelConfig:
        src = str(self._parts.paths[0])
        try:
            return ModelConfig.from_gguf_metadata(self.metadata, source=src)
        except ConfigError as e:
            msg = str(e)
            raise GGUFError(msg if msg.startswith(src) else f"{src}: {msg}") from e

    @cached_property
    def experts(self) -> "ExpertIndex":
        from kimi_runtime.gguf.experts import ExpertIndex

        return ExpertIndex(self)

    @property
    def architecture(self) -> Optional[str]:
        a = self.metadata.get("general.architecture")
        return a if isinstance(a, str) else None

    @property
    def attn_layout(self) -> str:
        """"split" (attn_k_b/attn_v_b), "legacy" (attn_kv_b) or "none" (no attention tensors)."""
        if any(n.endswith(".attn_k_b.weight") for n in self.tensors):
            return "split"
        if any(n.endswith(".attn_kv_b.weight") for n in self.tensors):
            return "legacy"
        return "none"

    @property
    def tokenizer_metadata(self) -> dict[str, Any]:
        return {k: v for k, v in self.metadata.items() if k.startswith("tokenizer.")}

    @property
    def file_bytes(self) -> int:
        return sum(a.size for a in (self._parts.arrays or []))

    def mmap(self, part: int = 0) -> np.ndarray:
        """The whole part as a read-only uint8 array over the mapping."""
        return self._parts.array(part)

    def array(self, name: str) -> np.ndarray:
        """Float/int tensors as typed views in numpy shape (BF16 as uint16 bits); quantized tensors as
        uint8 (rows, row_bytes). Zero-copy either way."""
        t = self.tensors[name]
        raw = t.data
        dt = float_dtype(t.ggml_type)
        if dt is not None:
            return raw.view(dt).reshape(t.shape)
        return raw.reshape(t.n_rows, t.row_bytes)

    def close(self) -> None:
        self._parts.close()

    def __enter__(self) -> "GGUFModel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFModel({str(self._parts.paths[0]) if self._parts.paths else '?'!r}, parts={len(self._parts.paths)}, tensors={len(self.tensors)})"


def open_gguf(path: Union[str, Path], *, check_model: bool = True) -> GGUFModel:
    """Open a GGUF file, or a split set from any of its parts. `check_model`: for deepseek2 files,
    build the ModelConfig, check tensor shapes against it and build the expert index now, so a bad
    file fails here with a GGUFError rather than later."""
    return GGUFModel(path, check_model=check_model)


from kimi_runtime.gguf.experts import ExpertIndex  # noqa: E402  (type of GGUFModel.experts)
