"""The native module loads, reports CPU features and resizes its thread pool; a stale one is an error."""
import pytest

from kimi_runtime import _native


def test_cpu_features_reported():
    f = _native.C.cpu_features()
    assert set(f) >= {"avx2", "avx512f", "avx512vnni"}
    assert all(isinstance(v, bool) for v in f.values())


def test_thread_pool_resize():
    old = _native.C.num_threads()
    try:
        _native.C.set_num_threads(1)
        assert _native.C.num_threads() == 1
        _native.C.set_num_threads(3)
        assert _native.C.num_threads() == 3
    finally:
        _native.C.set_num_threads(old)


def test_cuda_module_optional():
    # Built whenever nvcc was found; with no GPU it must still import and report zero devices.
    if _native.C_cuda is not None:
        assert _native.C_cuda.device_count() >= 0
    assert isinstance(_native.cuda_available(), bool)


def test_thread_pool_many_small_jobs_are_deterministic():
    """Back-to-back tiny jobs (as decode issues) with the pool resized in between: every result equals
    the first, so no task is lost, run twice, or taken by a late worker from the next job."""
    import numpy as np

    from kimi_runtime import kernels, quant

    rng = np.random.default_rng(0)
    rows, cols = 67, 2048  # > 64 KiB of weights, so each call is split into several tasks
    w = quant.quantize(rng.standard_normal((rows, cols)).astype(np.float32), "Q8_0")
    x = rng.standard_normal((1, cols)).astype(np.float32)
    old = _native.C.num_threads()
    try:
        ref = kernels.gemm(w, "Q8_0", rows, cols, x)
        for n in (2, 3, 1, 2):
            _native.C.set_num_threads(n)
            for _ in range(300):
                assert np.array_equal(kernels.gemm(w, "Q8_0", rows, cols, x), ref)
    finally:
        _native.C.set_num_threads(old)


def test_stale_extension_is_an_import_error(monkeypatch):
    """kimi_runtime.kernels over a _C that lacks a function it needs fails loudly (no silent fallback)."""
    import importlib
    import sys

    import kimi_runtime.kernels  # noqa: F401  (loaded, so that undo() puts it back)
    from kimi_runtime import _native

    class Stale:
        __file__ = "stale_C.so"

    monkeypatch.setattr(_native, "C", Stale())
    monkeypatch.delitem(sys.modules, "kimi_runtime.kernels", raising=False)
    with pytest.raises(ImportError, match="stale"):
        importlib.import_module("kimi_runtime.kernels")
    monkeypatch.undo()  # the real module is back in sys.modules
    assert sys.modules["kimi_runtime.kernels"].gemm is not None


def test_model_kernels_are_required(monkeypatch):
    from kimi_runtime.model import linear

    assert linear.kernels() is not None  # the native kernels, not a fallback
    monkeypatch.setenv("KR_KERNELS", "0")
    assert linear.kernels() is None  # only on explicit request
