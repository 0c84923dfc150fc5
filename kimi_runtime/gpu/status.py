"""Whether a CUDA device is usable, and a clear error when it is not."""
from __future__ import annotations

from typing import Optional

from kimi_runtime._native import C_cuda
from kimi_runtime.errors import KimiRuntimeError


class GpuUnavailable(KimiRuntimeError):
    """A GPU was requested but cannot be used (message says why and what to do)."""


def cuda_status() -> str:
    """'' when at least one device is usable, else the reason in words."""
    if C_cuda is None:
        return ("kimi_runtime was built without its CUDA module (_C_cuda): rebuild on a machine with nvcc "
                "(pip install -e . with the CUDA toolkit on PATH, or KR_CUDA=ON)")
    if not hasattr(C_cuda, "runtime_status"):
        return "" if C_cuda.device_count() > 0 else "no CUDA device visible"
    return C_cuda.runtime_status()


def require_cuda(device: Optional[int] = None) -> int:
    """The device index to use (default 0), or GpuUnavailable. Also checks that torch sees it, since
    tensors are allocated by torch and handed to our kernels by pointer."""
    why = cuda_status()
    if why:
        raise GpuUnavailable(f"a GPU was requested but none is usable: {why}. Run without --gpu "
                             f"(CPU only), or fix the CUDA setup.")
    dev = 0 if device is None else int(device)
    n = C_cuda.device_count()
    if not 0 <= dev < n:
        raise GpuUnavailable(f"CUDA device {dev} requested but only {n} visible")
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a dependency
        raise GpuUnavailable("torch is required for the GPU tier") from e
    if not torch.cuda.is_available() or torch.cuda.device_count() <= dev:
        raise GpuUnavailable(f"kimi_runtime sees CUDA device {dev} but torch does not (torch "
                             f"{torch.__version__} built {'with' if torch.version.cuda else 'without'} CUDA); "
                             f"install a CUDA build of torch")
    return dev
