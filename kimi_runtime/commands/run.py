"""`kimi-runtime run MODEL -p PROMPT`: one generation, streamed to stdout, speed to stderr. Also holds
the model/sampling flags and the loading/printing helpers that chat, serve and demo share."""
from __future__ import annotations

import argparse
import inspect
import sys
import time
from typing import Any, Optional, TextIO

PRESETS = ("instant", "thinking", "greedy")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="path to a GGUF file (the first part of a split file)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help="context length (default: the "
                   "model's, at most 4096)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    # Also accepted after the subcommand; SUPPRESS keeps the top-level flag's value otherwise.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="timing breakdown and tracebacks")
    add_placement_args(p)


def add_placement_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("placement and expert cache")
    g.add_argument("-ot", "--override-tensor", action="append", default=[], metavar="REGEX=DEVICE",
                   help="place matching tensors on cpu|gpu|cache; first match wins (repeatable)")
    g.add_argument("--cpu-moe", action="store_true", help="all routed experts computed on the CPU")
    g.add_argument("--n-cpu-moe", type=int, default=0, metavar="N",
                   help="routed experts of the first N layers computed on the CPU")
    g.add_argument("--cache-fraction", type=float, default=None, metavar="F",
                   help="expert cache holding this fraction of the routed experts (0..1]")
    g.add_argument("--cache-slots", type=int, default=None, metavar="N", help="expert cache of N slots")
    g.add_argument("--gpu-budget", default=None, help="device memory budget, e.g. 24GiB (auto-fit)")
    g.add_argument("--ram-budget", default=None, help="host memory budget, e.g. 256GiB (auto-fit)")
    g.add_argument("--cache-policy", choices=("lru", "lfu"), default="lfu")
    g.add_argument("--prefetch", action="store_true",
                   help="prefetch layer l+1's experts guessed by its router on layer l's hidden state")
    g.add_argument("--miss-policy", choices=("auto", "cpu", "fetch"), default="auto",
                   help="serve a cache miss on the CPU from the file, by fetching into a slot, or by "
                        "the cost model measured at start-up (auto)")
    g.add_argument("--trace", default=None, metavar="FILE",
                   help="record per step and layer the token positions, expert ids and weights")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--preset", choices=PRESETS, default=None,
                   help="Kimi's recommended settings: instant (T=0.6), thinking (T=1.0), greedy")
    g.add_argument("--temp", "--temperature", dest="temperature", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repeat-penalty", dest="repetition_penalty", type=float, default=None)
    g.add_argument("--presence-penalty", type=float, default=None)
    g.add_argument("--frequency-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="same seed, same output")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def params_from_args(args: argparse.Namespace, max_tokens: Optional[int] = None,
                     thinking: bool = False) -> Any:
    """SamplingParams from the flags; the preset defaults to thinking/instant by mode."""
    from kimi_runtime.text import SamplingParams

    ov = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                                        "presence_penalty", "frequency_penalty", "seed", "stop")
          if getattr(args, k, None) is not None}
    if max_tokens is not None:
        ov["max_tokens"] = max_tokens
    preset = args.preset or ("thinking" if thinking else "instant")
    return SamplingParams.from_preset(preset, **ov)


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if getattr(args, "ctx_size", None):
        kw["n_ctx"] = args.ctx_size
    if getattr(args, "threads", None):
        kw["threads"] = args.threads
    for name in ("cache_fraction", "cache_slots", "gpu_budget", "ram_budget", "trace"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    if getattr(args, "override_tensor", None):
        kw["overrides"] = list(args.override_tensor)
    for name in ("cpu_moe", "prefetch"):
        if getattr(args, name, False):
            kw[name] = True
    if getattr(args, "n_cpu_moe", 0):
        kw["n_cpu_moe"] = args.n_cpu_moe
    if hasattr(args, "cache_policy"):
        kw["cache_policy"] = args.cache_policy
        kw["miss_policy"] = args.miss_policy
    return kw


def engine_accepts(name: str) -> bool:
    """Whether Engine takes keyword `name` (the expert cache options arrive with the cache)."""
    from kimi_runtime.engine import Engine

    params = {**inspect.signature(Engine.__init__).parameters,
              **inspect.signature(Engine.from_gguf).parameters}
    return name in params


def load_generator(path: str, err: Optional[TextIO] = None, **kw: Any) -> Any:
    """Loads with a one-line progress report on stderr."""
    from kimi_runtime.generate import Generator

    err = err or sys.stderr
    print(f"loading {path} ...", end="", file=err, flush=True)
    t0 = time.perf_counter()
    lines: list[str] = []  # the placement report, printed after the one-line progress message
    if engine_accepts("report"):
        kw["report"] = lines.append
    try:
        gen = Generator.from_gguf(path, **kw)
    except BaseException:
        print(" failed", file=err, flush=True)  # the error line then starts on its own line
        raise
    cfg = gen.engine.config
    print(f" done in {time.perf_counter() - t0:.2f} s ({cfg.n_layer} layers, {cfg.n_expert} experts, "
          f"vocab {cfg.n_vocab}, context {gen.n_ctx})", file=err, flush=True)
    for line in lines:
        print(f"placement: {line}", file=err)
    return gen


def stream_events(events: Any, out: TextIO, show_thinking: bool = True) -> Any:
    """Prints text as it arrives (reasoning between <think> markers unless hidden); returns the last
    event (finish reason, usage, timings) and the collected text."""
    last, text, in_think = None, [], False
    for ev in events:
        if ev.reasoning and show_thinking:
            if not in_think:
                out.write("<think>")
                in_think = True
            out.write(ev.reasoning)
        if ev.text:
            if in_think:
                out.write("</think>\n")
                in_think = False
            out.write(ev.text)
            text.append(ev.text)
        out.flush()
        if ev.finish_reason is not None:
            last = ev
    if in_think:
        out.write("</think>")
    out.write("\n")
    out.flush()
    return last, "".join(text)


def print_speed(last: Any, err: TextIO, verbose: bool = False, engine: Any = None) -> None:
    t, u = last.timings, last.usage
    cached = u.prompt_tokens - t.prefill_tokens
    reuse = f" ({cached} cached)" if cached else ""
    print(f"[{last.finish_reason}] prompt {u.prompt_tokens} tok{reuse} in {t.prefill_s:.3f} s "
          f"({t.prefill_tok_s:.1f} tok/s) | generated {u.completion_tokens} tok, decode "
          f"{t.decode_tokens} tok in {t.decode_s:.3f} s ({t.decode_tok_s:.1f} tok/s)", file=err)
    if verbose:
        print(f"  sampling {t.sample_s * 1e3:.1f} ms of the decode time", file=err)
        stats = engine.stats() if engine is not None and hasattr(engine, "stats") else {}
        for k, v in stats.items():
            if isinstance(v, (int, float)):
                print(f"  engine {k}: {v:.4g}" if isinstance(v, float) else f"  engine {k}: {v}",
                      file=err)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="generate from a prompt", description=__doc__)
    add_model_args(p)
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-n", "--n-predict", type=int, default=128, help="max tokens to generate")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=True,
                      help="wrap the prompt in the chat template (default)")
    mode.add_argument("--raw", dest="chat", action="store_false", help="use the prompt as is")
    p.add_argument("--system", default=None, help="system prompt (chat mode)")
    p.add_argument("--thinking", action="store_true", help="thinking mode (<think>...</think>)")
    p.add_argument("--hide-thinking", action="store_true", help="do not print the reasoning")
    add_sampling_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.n_predict < 1:
        raise ValueError("-n must be >= 1")
    gen = load_generator(args.model, **engine_kwargs(args))
    params = params_from_args(args, max_tokens=args.n_predict, thinking=args.thinking)
    if args.chat:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + \
               [{"role": "user", "content": args.prompt}]
        ids = gen.render_chat(msgs, thinking=args.thinking)
    else:
        ids = gen.encode_prompt(args.prompt)
    room = gen.n_ctx - len(ids)
    params.max_tokens = max(1, min(params.max_tokens, room))
    events = gen.generate(ids, params, extra_stops=gen.chat_stops if args.chat else [])
    last, _ = stream_events(events, sys.stdout, not args.hide_thinking)
    print_speed(last, sys.stderr, args.verbose, gen.engine)
    if args.trace:
        gen.engine.close()  # writes the routing trace
        print(f"routing trace written to {args.trace}", file=sys.stderr)
    return 0
