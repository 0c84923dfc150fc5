"""The native module loads, reports CPU features and resizes its thread pool."""
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
