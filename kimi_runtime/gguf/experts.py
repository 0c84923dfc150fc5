"""The expert index: for every MoE layer and routed expert, the byte range of its gate, up and down
matrices inside the stacked `ffn_*_exps` tensors. The converter stacks experts along the outermost
dimension, so expert e of a tensor with ne = (cols, rows, E) is the contiguous range
[offset + e*rows*row_bytes, +rows*row_bytes), an HF-style [rows, cols] ([out, in]) matrix."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kimi_runtime.errors import GGUFError
from kimi_runtime.gguf import names
from kimi_runtime.gguf.format import QType

if TYPE_CHECKING:
    from kimi_runtime.gguf.reader import GGUFModel, TensorInfo, _Parts

WHICH = ("gate", "up", "down")


@dataclass(frozen=True)
class ExpertSlice:
    layer: int
    expert: int
    which: str  # "gate" | "up" | "down"
    tensor: str  # name of the stacked tensor it lives in
    part: int
    offset: int  # absolute byte offset in the part's file
    nbytes: int
    ggml_type: QType
    rows: int  # HF [out, in]: gate/up rows = n_ff_exp, down rows = n_embd
    cols: int
    row_bytes: int
    _parts: "_Parts" = field(repr=False, compare=False)

    @property
    def data(self) -> np.ndarray:
        """uint8 (nbytes,), a zero-copy view of the mapped file."""
        return self._parts.view(self.part, self.offset, self.nbytes)

    @property
    def rows_data(self) -> np.ndarray:
        """The same bytes as (rows, row_bytes)."""
        return self.data.reshape(self.rows, self.row_bytes)


@dataclass(frozen=True)
class _Stacked:
    info: "TensorInfo"
    row0: int  # first row of this matrix inside each expert's block (fused gate_up: up starts at n_ff_exp)
    rows: int
    rows_per_expert: int


class ExpertIndex:
    def __init__(self, model: "GGUFModel") -> None:
        cfg = model.config
        self.n_expert = cfg.n_expert
        self.n_expert_used = cfg.n_expert_used
        self._parts = model._parts
        self._layers: dict[int, dict[str, _Stacked]] = {}
        t = model.tensors
        src = str(model.paths[0])
        for layer in cfg.moe_layers:
            gate_up = t.get(names.blk(layer, "ffn_gate_up_exps"))
            gate, up = t.get(names.blk(layer, "ffn_gate_exps")), t.get(names.blk(layer, "ffn_up_exps"))
            down = t.get(names.blk(layer, "ffn_down_exps"))
            D, E, n = cfg.n_ff_exp, cfg.n_embd, cfg.n_expert
            entry: dict[str, _Stacked] = {}
            if gate is not None and up is not None:
                self._check(src, gate, (E, D, n))
                self._check(src, up, (E, D, n))
                entry["gate"] = _Stacked(gate, 0, D, D)
                entry["up"] = _Stacked(up, 0, D, D)
            elif gate_up is not None:
                self._check(src, gate_up, (E, 2 * D, n))
                entry["gate"] = _Stacked(gate_up, 0, D, 2 * D)
                entry["up"] = _Stacked(gate_up, D, D, 2 * D)
            else:
                raise GGUFError(f"{src}: layer {layer}: MoE layer without {names.blk(layer, 'ffn_gate_exps')} / "
                                f"ffn_up_exps (or a fused ffn_gate_up_exps)")
            if down is None:
                raise GGUFError(f"{src}: layer {layer}: MoE layer without {names.blk(layer, 'ffn_down_exps')}")
            self._check(src, down, (D, E, n))
            entry["down"] = _Stacked(down, 0, E, E)
            self._layers[layer] = entry

    @staticmethod
    def _check(src: str, info: "TensorInfo", ne: tuple[int, ...]) -> None:
        if info.ne != ne:
            raise GGUFError(f"{src}: tensor {info.name!r}: shape (ne) {list(info.ne)}, expected {list(ne)} "
                            f"from the metadata")

    @property
    def layers(self) -> list[int]:
        return sorted(self._layers)

    def _entry(self, layer: int) -> dict[str, _Stacked]:
        try:
            return self._layers[layer]
        except KeyError:
            raise KeyError(f"layer {layer} is not a MoE layer (MoE layers: {self.layers[:3]}...)") from None

    def tensor(self, layer: int, which: str) -> "TensorInfo":
        return self._stacked(layer, which).info

    def _stacked(self, layer: int, which: str) -> _Stacked:
        if which not in WHICH:
            raise ValueError(f"which must be one of {WHICH}, not {which!r}")
        return self._entry(layer)[which]

    def slice(self, layer: int, expert: int, which: str) -> ExpertSlice:
        s = self._stacked(layer, which)
        if not 0 <= expert < self.n_expert:
            raise IndexError(f"expert {expert} out of range 0..{self.n_expert - 1}")
        info = s.info
        off = info.offset + (expert * s.rows_per_expert + s.row0) * info.row_bytes
        return ExpertSlice(layer, expert, which, info.name, info.part, off, s.rows * info.row_bytes,
                           info.ggml_type, s.rows, info.ne[0], info.row_bytes, self._parts)

    def slices(self, layer: int, expert: int) -> tuple[ExpertSlice, ExpertSlice, ExpertSlice]:
        return (self.slice(layer, expert, "gate"), self.slice(layer, expert, "up"),
                self.slice(layer, expert, "down"))

    def expert_bytes(self, layer: int) -> int:
        """gate + up + down bytes of one expert of `layer`."""
        e = self._entry(layer)
        return sum(s.rows * s.info.row_bytes for s in e.values())

    def layer_bytes(self, layer: int) -> int:
        return self.expert_bytes(layer) * self.n_expert

    def total_bytes(self) -> int:
        return sum(self.layer_bytes(layer) for layer in self._layers)

    def types(self, layer: int) -> dict[str, QType]:
        return {w: s.info.ggml_type for w, s in self._entry(layer).items()}

    def __repr__(self) -> str:
        return f"ExpertIndex(layers={len(self._layers)}, n_expert={self.n_expert})"

    def __len__(self) -> int:
        return len(self._layers)

    def __contains__(self, layer: Any) -> bool:
        return layer in self._layers
