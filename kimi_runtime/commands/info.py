"""`kimi-runtime info`: what this build and machine can do."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show build and machine capabilities")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kimi_runtime import __version__, _native

    info = {
        "version": __version__,
        "cpu_features": _native.C.cpu_features(),
        "threads": _native.C.num_threads(),
        "cuda_module": _native.C_cuda is not None,
        "cuda_devices": _native.C_cuda.device_count() if _native.C_cuda else 0,
    }
    print(json.dumps(info, indent=2))
    return 0
