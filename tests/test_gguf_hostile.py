"""Malformed and hostile GGUF files: each must fail with a GGUFError naming the file, the field and the
problem, never another exception, a hang or a huge allocation. The corpus is generated here (into a
session temp dir, kept for inspection), and a property test mutates valid headers at random."""
from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kimi_runtime.errors import GGUFError
from kimi_runtime.gguf import open_gguf
from kimi_runtime.gguf.format import QType, VType
from kimi_runtime.gguf.writer import TensorSpec, Typed, pack_kv, pack_string, pack_tensor_info, write_gguf


# ---- raw builders

def raw_gguf(kvs: list[bytes], infos: list[bytes], data: bytes = b"", *, magic: bytes = b"GGUF", version: int = 3,
             n_tensors: Optional[int] = None, n_kv: Optional[int] = None, align: int = 32) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    body += b"\0" * (-len(body) % align)
    return body + data


def info(name: str, ne: list[int], qtype: int, offset: int, n_dims: Optional[int] = None) -> bytes:
    if n_dims is None:
        return pack_tensor_info(name, ne, qtype, offset)
    return pack_string(name) + struct.pack("<I", n_dims) + b"".join(struct.pack("<Q", d) for d in ne) + \
        struct.pack("<IQ", qtype, offset)


ARCH = pack_kv("general.architecture", "test")
F32_8 = info("w", [8], QType.F32, 0)
DATA_32 = bytes(32)


def kv_raw(key: str, vtype: int, payload: bytes) -> bytes:
    return pack_string(key) + struct.pack("<I", vtype) + payload


# name -> (bytes, expected message fragment)
STRUCTURAL: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "truncated"),
    "short_header": (b"GGUF\x03\x00\x00\x00\x00", "truncated"),
    "bad_magic": (raw_gguf([ARCH], [F32_8], DATA_32, magic=b"GGML"), "magic"),
    "version_1": (raw_gguf([ARCH], [F32_8], DATA_32, version=1), "version"),
    "version_99": (raw_gguf([ARCH], [F32_8], DATA_32, version=99), "version"),
    "big_endian": (raw_gguf([ARCH], [F32_8], DATA_32, version=0x03000000), "big-endian"),
    "tensor_count_absurd": (raw_gguf([ARCH], [F32_8], DATA_32, n_tensors=(1 << 63) + 5), "tensor count"),
    "kv_count_absurd": (raw_gguf([ARCH], [F32_8], DATA_32, n_kv=1 << 60), "kv count"),
    "kv_count_too_many": (raw_gguf([ARCH], [F32_8], DATA_32, n_kv=3), ""),
    "key_length_absurd": (raw_gguf([struct.pack("<Q", 1 << 62) + b"abc"], [], b""), "length"),
    "string_value_absurd": (raw_gguf([kv_raw("s", VType.STRING, struct.pack("<Q", 1 << 40))], [], b""), "length"),
    "array_length_absurd": (raw_gguf([kv_raw("a", VType.ARRAY, struct.pack("<IQ", VType.UINT32, 1 << 61))], []),
                            "array length"),
    "string_array_absurd": (raw_gguf([kv_raw("a", VType.ARRAY, struct.pack("<IQ", VType.STRING, 1 << 50))], []),
                            "array length"),
    "array_nested_deep": (raw_gguf([kv_raw("a", VType.ARRAY, struct.pack("<IQ", VType.ARRAY, 1) * 12)], []),
                          "nested"),
    "unknown_value_type": (raw_gguf([kv_raw("x", 77, b"\0" * 8)], []), "unknown value type"),
    "unknown_array_type": (raw_gguf([kv_raw("x", VType.ARRAY, struct.pack("<IQ", 99, 1) + b"\0" * 8)], []),
                           "element type"),
    "bad_utf8_key": (raw_gguf([pack_string(b"\xff\xfe") + struct.pack("<I", VType.UINT8) + b"\1"], []), "UTF-8"),
    "duplicate_key": (raw_gguf([ARCH, ARCH], [F32_8], DATA_32), "duplicate key"),
    "alignment_not_pow2": (raw_gguf([ARCH, pack_kv("general.alignment", Typed(48, VType.UINT32))], [F32_8],
                                    DATA_32), "general.alignment"),
    "alignment_wrong_type": (raw_gguf([ARCH, pack_kv("general.alignment", "32")], [F32_8], DATA_32),
                             "general.alignment"),
    "alignment_zero": (raw_gguf([ARCH, pack_kv("general.alignment", Typed(0, VType.UINT32))], [F32_8], DATA_32),
                       "general.alignment"),
    "n_dims_5": (raw_gguf([ARCH], [info("w", [1, 1, 1, 1, 8], QType.F32, 0)], DATA_32), "n_dims"),
    "n_dims_0": (raw_gguf([ARCH], [info("w", [], QType.F32, 0)], DATA_32), "n_dims"),
    "n_dims_absurd": (raw_gguf([ARCH], [info("w", [8], QType.F32, 0, n_dims=1 << 30)], DATA_32), "n_dims"),
    "dims_overflow": (raw_gguf([ARCH], [info("w", [1 << 40, 1 << 40], QType.F32, 0)], DATA_32), "overflow"),
    "dim_negative": (raw_gguf([ARCH], [info("w", [(1 << 64) - 8], QType.F32, 0)], DATA_32), "negative"),
    "unknown_ggml_type": (raw_gguf([ARCH], [info("w", [8], 99, 0)], DATA_32), "unknown ggml type"),
    "removed_ggml_type_4": (raw_gguf([ARCH], [info("w", [32], 4, 0)], DATA_32), "unknown ggml type"),
    "row_not_block_multiple": (raw_gguf([ARCH], [info("w", [100], QType.Q4_K, 0)], bytes(256)), "block size"),
    "data_past_eof": (raw_gguf([ARCH], [info("w", [64], QType.F32, 0)], DATA_32), "past the end"),
    "offset_past_eof": (raw_gguf([ARCH], [info("w", [8], QType.F32, 1 << 40)], DATA_32), "past the end"),
    "misaligned_offset": (raw_gguf([ARCH], [info("w", [2], QType.F32, 4)], DATA_32), "aligned"),
    "overlapping": (raw_gguf([ARCH], [info("a", [16], QType.F32, 0), info("b", [8], QType.F32, 32)], bytes(64)),
                    "overlaps"),
    "duplicate_tensor": (raw_gguf([ARCH], [info("w", [8], QType.F32, 0), info("w", [8], QType.F32, 32)], bytes(64)),
                         "duplicate tensor"),
    "tensor_name_too_long": (raw_gguf([ARCH], [info("x" * 80, [8], QType.F32, 0)], DATA_32), "limit"),
    "truncated_in_tensor_infos": (raw_gguf([ARCH], [F32_8, info("v", [8], QType.F32, 32)])[:-20], "truncated"),
    "truncated_in_kv": (raw_gguf([ARCH, pack_kv("general.name", "hello world")], [])[:50], "truncated"),
}


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile_corpus")


def _expect_error(path: Path, fragment: str, *, touch: bool = True, where: Optional[Path] = None) -> GGUFError:
    """open_gguf(path) raises a GGUFError naming `where` (default: path) and containing `fragment`."""
    with pytest.raises(GGUFError) as ei:
        m = open_gguf(path)
        if touch:  # non-deepseek files are checked lazily only for the config
            _ = m.config
    msg = str(ei.value)
    where = where or path
    assert str(where) in msg, msg
    assert fragment.lower() in msg.lower(), msg
    return ei.value


@pytest.mark.parametrize("case", sorted(STRUCTURAL))
def test_structural_corpus(corpus_dir: Path, case: str) -> None:
    data, fragment = STRUCTURAL[case]
    p = corpus_dir / f"{case}.gguf"
    p.write_bytes(data)
    _expect_error(p, fragment, touch=False)


def test_missing_and_directory(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.gguf", "not found", touch=False)
    _expect_error(tmp_path, "directory", touch=False)


def test_valid_minimal_file_opens(tmp_path: Path) -> None:
    p = tmp_path / "ok.gguf"
    p.write_bytes(raw_gguf([ARCH], [F32_8], DATA_32))
    with open_gguf(p) as m:
        assert m.array("w").shape == (8,)


# ---- deepseek2-level corruption: valid GGUF structure, wrong model

def _tiny_plans(**kw: Any):
    from kimi_runtime.synth import plan_tensors, preset_config

    return preset_config("tiny"), plan_tensors(preset_config("tiny"), **kw)


def _model_md(cfg) -> dict[str, Any]:
    from kimi_runtime.config import gguf_metadata

    return {"general.architecture": "deepseek2", **gguf_metadata(cfg),
            "tokenizer.ggml.tokens": [f"t{i}" for i in range(cfg.n_vocab)]}


def _write_model(path: Path, md: dict[str, Any], specs: list[TensorSpec], split: Optional[int] = None) -> Path:
    return write_gguf(path, md, specs, lambda s: [np.zeros(s.nbytes, np.uint8)], split=split)[0]


def _mutated(md_edit: Callable[[dict], None] = lambda md: None,
             spec_edit: Callable[[list[TensorSpec]], list[TensorSpec]] = lambda s: s):
    cfg, plans = _tiny_plans()
    md = _model_md(cfg)
    md_edit(md)
    return md, spec_edit([p.spec for p in plans])


def _drop(name: str) -> Callable[[list[TensorSpec]], list[TensorSpec]]:
    return lambda specs: [s for s in specs if s.name != name]


def _reshape(name: str, ne: tuple[int, ...]) -> Callable[[list[TensorSpec]], list[TensorSpec]]:
    return lambda specs: [TensorSpec(s.name, s.ggml_type, ne) if s.name == name else s for s in specs]


MODEL_CASES: dict[str, tuple[Callable, Callable, str]] = {
    "key_wrong_type": (lambda md: md.__setitem__("deepseek2.embedding_length", "256"), lambda s: s,
                       "deepseek2.embedding_length"),
    "key_float_for_int": (lambda md: md.__setitem__("deepseek2.block_count", 3.0), lambda s: s,
                          "deepseek2.block_count"),
    "bool_wrong_type": (lambda md: md.__setitem__("deepseek2.expert_weights_norm", 1), lambda s: s,
                        "expert_weights_norm"),
    "key_missing": (lambda md: md.pop("deepseek2.attention.kv_lora_rank"), lambda s: s, "kv_lora_rank"),
    "gating_unknown": (lambda md: md.__setitem__("deepseek2.expert_gating_func", 7), lambda s: s,
                       "expert_gating_func"),
    "block_count_absurd": (lambda md: md.__setitem__("deepseek2.block_count", 0xFFFFFFFF), lambda s: s,
                           "block_count"),
    "block_count_exceeds_tensors": (lambda md: md.__setitem__("deepseek2.block_count", 5000), lambda s: s,
                                    "block_count"),
    "expert_count_mismatch": (lambda md: md.__setitem__("deepseek2.expert_count", 32), lambda s: s,
                              "does not match"),
    "shape_mismatch": (lambda md: None, _reshape("blk.1.attn_q_b.weight", (128, 256)), "attn_q_b"),
    "missing_experts": (lambda md: None, _drop("blk.2.ffn_down_exps.weight"), "ffn_down_exps"),
    "missing_gate_exps": (lambda md: None, _drop("blk.1.ffn_gate_exps.weight"), "ffn_gate_exps"),
    "architecture_not_str": (lambda md: md.__setitem__("deepseek2.rope.scaling.type", 3), lambda s: s,
                             "rope.scaling.type"),
    "experts_used_exceeds": (lambda md: md.__setitem__("deepseek2.expert_used_count", 17), lambda s: s,
                             "expert_used_count"),
    "tokens_not_array": (lambda md: (md.pop("deepseek2.vocab_size"), md.__setitem__("tokenizer.ggml.tokens", 5)),
                         lambda s: s, "tokenizer.ggml.tokens"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_corpus(corpus_dir: Path, case: str) -> None:
    md_edit, spec_edit, fragment = MODEL_CASES[case]
    md, specs = _mutated(md_edit, spec_edit)
    p = _write_model(corpus_dir / f"model_{case}.gguf", md, specs)
    _expect_error(p, fragment)


def test_valid_model_corpus_baseline(corpus_dir: Path) -> None:
    md, specs = _mutated()
    p = _write_model(corpus_dir / "model_ok.gguf", md, specs)
    with open_gguf(p) as m:
        assert m.experts.layers == [1, 2]


def test_truncated_data_section(tiny_gguf: str, corpus_dir: Path) -> None:
    data = Path(tiny_gguf).read_bytes()
    p = corpus_dir / "tiny_truncated.gguf"
    p.write_bytes(data[: len(data) - 1000])
    _expect_error(p, "past the end")


# ---- split sets

@pytest.fixture()
def split_set(tmp_path: Path) -> list[Path]:
    md, specs = _mutated()
    first = _write_model(tmp_path / "m.gguf", md, specs, split=3)
    return sorted(tmp_path.glob("m-*.gguf"))


def _patch_split_key(path: Path, key: str, vtype: VType, value: int) -> None:
    """Rewrite a split.* value in place (same width)."""
    data = bytearray(path.read_bytes())
    k = pack_string(key) + struct.pack("<I", vtype)
    i = data.index(k) + len(k)
    fmt = {VType.UINT16: "<H", VType.INT32: "<i"}[vtype]
    struct.pack_into(fmt, data, i, value)
    path.write_bytes(bytes(data))


def test_split_part_missing(split_set: list[Path]) -> None:
    split_set[1].unlink()
    _expect_error(split_set[0], "missing", where=split_set[1])


def test_split_count_mismatch(split_set: list[Path]) -> None:
    _patch_split_key(split_set[2], "split.count", VType.UINT16, 4)
    _expect_error(split_set[0], "split.count", where=split_set[2])


def test_split_no_mismatch(split_set: list[Path]) -> None:
    _patch_split_key(split_set[1], "split.no", VType.UINT16, 2)
    _expect_error(split_set[0], "split.no", where=split_set[1])


def test_split_tensor_total_mismatch(split_set: list[Path]) -> None:
    _patch_split_key(split_set[0], "split.tensors.count", VType.INT32, 7)
    _expect_error(split_set[0], "split.tensors.count")


def test_split_first_part_says_not_first(split_set: list[Path], tmp_path: Path) -> None:
    _patch_split_key(split_set[0], "split.no", VType.UINT16, 1)
    _expect_error(split_set[0], "split.no")


def test_split_renamed_first_part(split_set: list[Path], tmp_path: Path) -> None:
    renamed = tmp_path / "renamed.gguf"
    split_set[0].rename(renamed)
    _expect_error(renamed, "split.count")


def test_corpus_is_kept(corpus_dir: Path) -> None:
    # the generated corpus stays on disk for the session (pytest keeps the last 3 basetemps)
    for case in STRUCTURAL:
        p = corpus_dir / f"{case}.gguf"
        if not p.exists():
            p.write_bytes(STRUCTURAL[case][0])
    assert len(list(corpus_dir.glob("*.gguf"))) >= len(STRUCTURAL)


# ---- property test: random byte flips and truncations in valid headers

def _touch_everything(path: str) -> None:
    with open_gguf(path) as m:
        for name, t in m.tensors.items():
            v = t.data
            if v.size:
                int(v[0]) + int(v[-1])
            m.array(name)
        if m.architecture == "deepseek2":
            cfg = m.config
            for layer in m.experts.layers:
                for e in (0, cfg.n_expert - 1):
                    for s in m.experts.slices(layer, e):
                        if s.nbytes:
                            int(s.data[-1])


def _small_valid() -> bytes:
    kvs = [ARCH, pack_kv("general.name", "tiny test"), pack_kv("t.arr", [1, 2, 3]),
           pack_kv("t.strs", ["a", "bc", "def"]), pack_kv("t.f", 1.5), pack_kv("t.b", True),
           pack_kv("general.alignment", Typed(32, VType.UINT32))]
    infos = [info("a", [8, 2], QType.F32, 0), info("b", [64], QType.Q8_0, 64), info("c", [256], QType.Q4_K, 160)]
    return raw_gguf(kvs, infos, bytes(160 + 144))


@pytest.fixture(scope="module")
def mutation_bases(tmp_path_factory) -> dict[str, tuple[bytes, int]]:
    from kimi_runtime.synth import preset_config, write_synthetic

    d = tmp_path_factory.mktemp("mutation_bases")
    cfg = preset_config("tiny", n_vocab=300, n_layer=2, n_expert=4, n_expert_used=2, n_ff=256)
    p = write_synthetic(cfg, d / "micro.gguf", progress=False)
    data = p.read_bytes()
    with open_gguf(p) as m:
        header_end = min(t.offset for t in m.tensors.values())
    small = _small_valid()
    return {"small": (small, len(small) - 304), "micro": (data, header_end)}


def _check_mutant(data: bytes) -> None:
    fd, path = tempfile.mkstemp(suffix=".gguf")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            _touch_everything(path)
        except GGUFError as e:
            assert path in str(e)
    finally:
        os.unlink(path)


MUTATION = st.tuples(
    st.sampled_from(["small", "micro"]),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    st.one_of(st.none(), st.floats(0, 1)),
)


@settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(MUTATION)
def test_header_mutations_fail_cleanly(mutation_bases, mutation) -> None:
    which, flips, cut = mutation
    base, header_len = mutation_bases[which]
    data = bytearray(base)
    for pos, val in flips:
        data[int(pos * header_len)] = val
    if cut is not None:
        data = data[: int(cut * header_len)]
    _check_mutant(bytes(data))


@settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 23), st.integers(0, 255)), min_size=1, max_size=4),
       st.sampled_from(["small", "micro"]))
def test_fixed_header_field_mutations(mutation_bases, flips, which) -> None:
    """Bytes 4..24 are version and the two counts: the fields most likely to trigger huge loops."""
    base, _ = mutation_bases[which]
    data = bytearray(base)
    for pos, val in flips:
        data[pos] = val
    _check_mutant(bytes(data))
