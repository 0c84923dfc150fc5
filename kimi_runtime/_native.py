"""The only importer of the compiled modules `_C` (always built) and `_C_cuda` (optional).

Developers iterating on C++ can point ``KR_EXT_DIR`` at a CMake build directory (see
``scripts/dev_build.sh``) to load the extensions from there instead of the installed package.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Optional


def _load(name: str) -> ModuleType:
    ext_dir = os.environ.get("KR_EXT_DIR")
    if ext_dir:
        for fname in sorted(os.listdir(ext_dir)):
            if fname.startswith(name + ".") and fname.endswith((".so", ".pyd")):
                full = f"kimi_runtime.{name}"
                spec = importlib.util.spec_from_file_location(full, os.path.join(ext_dir, fname))
                assert spec is not None and spec.loader is not None
                mod = importlib.util.module_from_spec(spec)
                sys.modules[full] = mod
                spec.loader.exec_module(mod)
                return mod
        raise ImportError(f"KR_EXT_DIR={ext_dir} holds no {name} extension")
    return importlib.import_module(f"kimi_runtime.{name}")


try:
    C = _load("_C")
except ImportError as e:  # pragma: no cover - a broken install, not a code path
    raise ImportError(
        "kimi_runtime's native extension is missing; install the package with "
        "`pip install -e .` (see README.md)"
    ) from e

C_cuda: Optional[ModuleType]
try:
    C_cuda = _load("_C_cuda")
except ImportError:
    C_cuda = None


def cuda_available() -> bool:
    """True when the CUDA module was built and a device is visible."""
    return C_cuda is not None and C_cuda.device_count() > 0
