"""Loading a model for run / chat / serve / demo: read the file into the page cache first (with a
progress bar for large files or a terminal), then build the generator, and report what was placed.

Binding the weights is zero-copy over the mmapped file and takes well under a second even for big
models; the time goes into the first touch of every page. Reading the file once up front turns
that into a visible, sequential read at disk speed instead of random page faults during the first
tokens, and is skipped (with the reason printed) when the file is larger than available RAM."""
from __future__ import annotations

import inspect
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence, TextIO

LARGE_FILE = 1 << 30  # a bar for files this big even when stderr is not a terminal
CHUNK = 16 << 20


def show_progress(total_bytes: int, stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or total_bytes >= LARGE_FILE


def warm_files(paths: Sequence[str], progress: Optional[Callable[[int], None]] = None) -> int:
    """Reads every byte of `paths` once (so later mmap accesses hit the page cache); returns the bytes
    read. The kernel is told the pattern is sequential so it reads ahead in large requests."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    done = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while True:
                n = os.readv(fd, [view])
                if n <= 0:
                    break
                done += n
                if progress is not None:
                    progress(n)
        finally:
            os.close(fd)
    return done


def warm_model(paths: Sequence[str], total: int, err: TextIO, ram: Optional[int]) -> Optional[str]:
    """Warms the page cache with a tqdm bar where it helps; returns a note when it was skipped."""
    if ram is not None and total > ram:
        from kimi_runtime.commands.units import fmt_bytes

        return (f"not pre-reading the file: {fmt_bytes(total)} > {fmt_bytes(ram)} of available RAM; "
                f"pages load from disk on first use")
    from tqdm import tqdm

    t0 = time.perf_counter()
    shown = show_progress(total, err)
    with tqdm(total=total, unit="B", unit_scale=True, desc="reading", file=err, leave=False,
              disable=not shown, mininterval=0.5) as bar:
        done = warm_files(paths, bar.update)
    if shown:
        from kimi_runtime.commands.units import fmt_bytes

        dt = time.perf_counter() - t0
        print(f"read {fmt_bytes(done)} into the page cache in {dt:.1f} s ({fmt_bytes(done / max(dt, 1e-9))}/s)",
              file=err)
    return None


def engine_accepts(name: str) -> bool:
    """Whether Engine takes keyword `name` (newer options arrive with newer engines)."""
    from kimi_runtime.engine import Engine

    params = {**inspect.signature(Engine.__init__).parameters,
              **inspect.signature(Engine.from_gguf).parameters}
    return name in params


def load_generator(path: str, err: Optional[TextIO] = None, *, info: Any = None, special: bool = False,
                   n_gpu_layers: Optional[int] = None, warm: bool = True, **kw: Any) -> Any:
    """The Generator for `path`, with a one-line report on stderr. `info`: the preflight's ModelInfo
    (template file, paths, sizes); `special`: print control tokens as text (llama.cpp's --special);
    `n_gpu_layers`: -ngl, kept on the engine as `n_gpu_layers` for the GPU tier."""
    from kimi_runtime.commands.common import available_ram, gpu_warning

    err = err or sys.stderr
    if warm and info is not None:
        note = warm_model(info.paths or [path], info.file_bytes, err, available_ram())
        if note:
            print(note, file=err)
    t0 = time.perf_counter()
    print(f"loading {path} ...", end="", file=err, flush=True)
    from kimi_runtime.generate import Generator

    lines: list[str] = []  # the placement report, printed after the one-line progress message
    if engine_accepts("report"):
        kw["report"] = lines.append
    if n_gpu_layers is not None and engine_accepts("n_gpu_layers"):
        kw["n_gpu_layers"] = n_gpu_layers
    try:
        gen = Generator.from_gguf(path, **kw)
        if n_gpu_layers is not None:
            gen.engine.n_gpu_layers = int(n_gpu_layers)
        if info is not None and info.template_source is not None:
            from kimi_runtime.text import ChatTemplate

            gen.template = ChatTemplate(info.template_source, name="file", bos_token=gen.template.bos_token,
                                        eos_token=gen.template.eos_token)
        if special:
            from kimi_runtime.text import StreamDecoder

            gen = Generator(gen.engine, gen.tokenizer, gen.template,
                            decoder_factory=lambda tok: StreamDecoder(tok, skip_special=False))
    except BaseException:
        print(" failed", file=err, flush=True)  # the error line then starts on its own line
        raise
    cfg = gen.engine.config
    print(f" done in {time.perf_counter() - t0:.2f} s ({cfg.n_layer} layers, {cfg.n_expert} experts, "
          f"vocab {cfg.n_vocab}, context {gen.n_ctx})", file=err, flush=True)
    for line in lines:
        print(f"placement: {line}", file=err)
    if not n_gpu_layers:
        return gen
    from kimi_runtime.gpu.attach import attach_gpu, emulated

    warning = None if emulated() else gpu_warning(n_gpu_layers)
    if warning:
        print(warning, file=err)
    else:
        for line in attach_gpu(gen.engine, int(n_gpu_layers), kw.get("gpu_budget")):
            print(f"placement: {line}", file=err)
    return gen
