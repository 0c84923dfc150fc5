"""What run, chat and serve check before loading a model. Everything here runs before torch is
imported (torch takes seconds to import), so a directory, a text file, a truncated GGUF, a `-c` the
model or the machine cannot hold, or a chat template that does not compile fails in well under a
second with one clear line."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from kimi_runtime.errors import KimiRuntimeError

GGUF_MAGIC = b"GGUF"
HEADER_BYTES = 24  # magic, version, tensor count, metadata count


class UsageError(KimiRuntimeError):
    """Bad command-line input, reported with the subcommand's usage line."""


def positive_int(text: str) -> int:
    """argparse type for counts where 0 means nothing sensible (-c, -t, -n)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_model_arg(p: argparse.ArgumentParser) -> None:
    """The model as a positional argument or as llama.cpp's -m/--model."""
    p.add_argument("model", nargs="?", default=None, help="path to a GGUF file (the first part of a split file)")
    p.add_argument("-m", "--model", dest="model_flag", default=None, metavar="FILE",
                   help="the same, in llama.cpp's spelling")


def resolve_model(args: argparse.Namespace) -> None:
    """Merges -m into the positional slot; raises UsageError when neither or two different are given."""
    pos, flag = getattr(args, "model", None), getattr(args, "model_flag", None)
    if pos and flag and pos != flag:
        raise UsageError(f"two models given: {pos!r} and -m {flag!r}")
    args.model = pos or flag
    if not args.model:
        raise UsageError("no model given: pass a GGUF file (positional or -m FILE)")


def check_gguf_path(path: str) -> int:
    """A readable regular file starting with the GGUF magic; returns its size. Cheap checks only: the
    full header is parsed by open_gguf in `preflight`."""
    if not os.path.exists(path):
        raise KimiRuntimeError(f"{path}: no such file")
    if os.path.isdir(path):
        raise KimiRuntimeError(f"{path}: is a directory; give the .gguf file inside it (the first part "
                               f"of a split model)")
    if not os.path.isfile(path):
        raise KimiRuntimeError(f"{path}: not a regular file")
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise KimiRuntimeError(f"{path}: cannot read: {e.strerror or e}") from None
    if head != GGUF_MAGIC:
        raise KimiRuntimeError(f"{path}: not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})")
    if size < HEADER_BYTES:
        raise KimiRuntimeError(f"{path}: truncated GGUF ({size} bytes; the header alone needs {HEADER_BYTES})")
    return size


def available_ram() -> Optional[int]:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def kv_cache_bytes(cfg: Any, n_ctx: int, cache_type: str = "f16") -> int:
    """The engine's latent KV cache (model/attention.py kv_cache_bytes, without importing torch)."""
    from kimi_runtime.config import kv_cache_bytes as kv

    return kv(cfg, n_ctx, cache_type)


@dataclass
class ModelInfo:
    """What the header says, read without touching weights or importing torch."""

    path: str
    file_bytes: int
    config: Any
    n_ctx: int
    kv_bytes: int
    template_source: Optional[str] = None  # from --chat-template-file
    paths: list = field(default_factory=list)  # every part of a split file


def _human(n: float) -> str:
    from kimi_runtime.commands.units import fmt_bytes

    return fmt_bytes(n)


def check_context(cfg: Any, ctx: Optional[int], ram: Optional[int],
                  cache_type: str = "f16") -> tuple[int, int]:
    """The context to allocate (default: the model's, at most 4096) and its KV-cache bytes; refuses a
    -c above the model's trained maximum or one whose cache would not fit in available RAM."""
    max_ctx = int(cfg.context_length)
    if ctx is not None and ctx > max_ctx:
        raise UsageError(f"-c {ctx} exceeds this model's maximum context of {max_ctx:,} tokens")
    n_ctx = int(ctx or min(max_ctx, 4096))
    kv = kv_cache_bytes(cfg, n_ctx, cache_type)
    if ram is not None and kv > ram:
        per_tok = kv_cache_bytes(cfg, 1, cache_type)
        raise UsageError(f"-c {n_ctx}: the KV cache would take {_human(kv)} but {_human(ram)} of RAM is "
                         f"available; at most about {ram // per_tok:,} tokens fit")
    return n_ctx, kv


def read_template(path: str) -> str:
    """A Jinja chat template file, compiled once here so a syntax error is reported before loading."""
    import jinja2

    try:
        with open(path, encoding="utf-8") as f:
            src = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--chat-template-file {path}: cannot read: {e}") from None
    try:
        jinja2.Environment().parse(src)
    except jinja2.TemplateSyntaxError as e:
        raise UsageError(f"--chat-template-file {path}: line {e.lineno}: {e.message}") from None
    return src


def preflight(args: argparse.Namespace) -> ModelInfo:
    """Checks the model file, its header, -c against the model and RAM and the template file."""
    path = args.model
    size = check_gguf_path(path)
    from kimi_runtime.gguf import open_gguf  # after the cheap checks: numpy and gguf take ~0.3 s

    with open_gguf(path) as m:
        if m.architecture != "deepseek2":
            raise KimiRuntimeError(f"{path}: architecture {m.architecture!r} is not supported (this runtime "
                                   f"runs deepseek2: DeepSeek-V3, R1 and Kimi K2)")
        cfg = m.config
        size = m.file_bytes or size
        paths = [str(p) for p in m.paths]
    n_ctx, kv = check_context(cfg, getattr(args, "ctx_size", None), available_ram(),
                             getattr(args, "cache_type", None) or "f16")
    tmpl = getattr(args, "chat_template_file", None)
    return ModelInfo(path, size, cfg, n_ctx, kv, read_template(tmpl) if tmpl else None, paths)


def read_prompt(args: argparse.Namespace) -> str:
    """-p TEXT, -p - (stdin) or -f FILE; exactly one."""
    p, f = getattr(args, "prompt", None), getattr(args, "file", None)
    if p is not None and f is not None:
        raise UsageError("give -p or -f, not both")
    if f is not None:
        try:
            with open(f, encoding="utf-8") as fh:
                return fh.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"-f {f}: cannot read: {e}") from None
    if p == "-":
        return sys.stdin.read()
    if p is None:
        raise UsageError("no prompt: give -p TEXT, -p - (read stdin) or -f FILE")
    return p


def gpu_warning(n_gpu_layers: Optional[int]) -> Optional[str]:
    """The one-line note for -ngl on a machine without a usable CUDA device (None when fine)."""
    if not n_gpu_layers:
        return None
    from kimi_runtime import _native

    if _native.cuda_available():
        return None
    why = "this build has no CUDA module" if _native.C_cuda is None else "no CUDA device is visible"
    return f"warning: -ngl {n_gpu_layers} ignored: {why}; running on the CPU"
