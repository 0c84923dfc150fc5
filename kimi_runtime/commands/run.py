"""`kimi-runtime run MODEL -p PROMPT`: one generation, streamed to stdout, speed to stderr. Also holds
the model/sampling flags and the loading/printing helpers that chat, serve and demo share."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, TextIO

from kimi_runtime.commands.common import UsageError, add_model_arg, positive_int, preflight, read_prompt
from kimi_runtime.commands.loading import engine_accepts, load_generator  # noqa: F401 - shared API
from kimi_runtime.commands.units import fmt_seconds, stats_lines

PRESETS = ("instant", "thinking", "greedy")


def add_model_args(p: argparse.ArgumentParser) -> None:
    add_model_arg(p)
    p.add_argument("-c", "--ctx-size", type=positive_int, default=None, help="context length (default: "
                   "the model's, at most 4096; checked against the model's maximum and free RAM)")
    p.add_argument("-t", "--threads", type=positive_int, default=None, help="CPU threads")
    p.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers", type=int, default=None,
                   metavar="N", help="layers to offload to the GPU (the GPU tier; without a CUDA device: "
                   "a warning, and the CPU runs everything)")
    p.add_argument("--chat-template-file", default=None, metavar="FILE",
                   help="Jinja chat template to use instead of the GGUF's")
    p.add_argument("--jinja", action="store_true",
                   help="accepted for llama.cpp compatibility: templates are always rendered with Jinja")
    p.add_argument("--no-warm", action="store_true",
                   help="do not read the file into the page cache before loading")
    p.add_argument("--cache-type", choices=("f16", "f32"), default="f16",
                   help="latent KV cache type (f32: exact, twice the memory)")
    p.add_argument("-ub", "--ubatch-size", type=positive_int, default=512, metavar="N",
                   help="prompt tokens per micro-batch (bounds the transient memory)")
    # Also accepted after the subcommand; SUPPRESS keeps the top-level flag's value otherwise.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="timing breakdown and tracebacks")
    add_placement_args(p)


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--special", action="store_true",
                   help="print special tokens (turn markers, tool-call markers) as text")


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
    g.add_argument("--gpu-budget", default=None, help="device memory budget, e.g. 24GiB; a bare number "
                   "is GiB (auto-fit)")
    g.add_argument("--ram-budget", default=None, help="host memory budget, e.g. 256GiB; a bare number "
                   "is GiB (auto-fit)")
    g.add_argument("--mlock", action="store_true", help="lock the non-expert weights in RAM")
    g.add_argument("--expert-reads", choices=("auto", "mmap", "pread", "direct"), default="auto",
                   help="how expert slots are filled; auto: O_DIRECT reads (the disk tier) when "
                        "--ram-budget holds fewer slots than experts")
    g.add_argument("--readers", type=int, default=None, metavar="N",
                   help="reader threads filling expert slots (default 4 on the disk tier, else 1)")
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


SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                  "frequency_penalty", "seed", "stop")


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags given on the command line (None = not given)."""
    return {k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k, None) is not None}


def params_from_args(args: argparse.Namespace, max_tokens: Optional[int] = None,
                     thinking: bool = False) -> Any:
    """SamplingParams from the flags; the preset defaults to thinking/instant by mode."""
    from kimi_runtime.text import SamplingParams

    ov = sampling_overrides(args)
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
    if getattr(args, "cache_type", None):
        kw["cache_type"] = args.cache_type
    if getattr(args, "ubatch_size", None):
        if args.ubatch_size < 1:
            raise SystemExit("error: --ubatch-size must be >= 1")
        kw["ubatch"] = args.ubatch_size
    for name in ("cache_fraction", "cache_slots", "gpu_budget", "ram_budget", "trace"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    if getattr(args, "override_tensor", None):
        kw["overrides"] = list(args.override_tensor)
    for name in ("cpu_moe", "prefetch", "mlock"):
        if getattr(args, name, False):
            kw[name] = True
    if getattr(args, "expert_reads", "auto") != "auto":
        kw["expert_reads"] = args.expert_reads
    if getattr(args, "readers", None):
        kw["n_readers"] = args.readers
    if getattr(args, "n_cpu_moe", 0):
        kw["n_cpu_moe"] = args.n_cpu_moe
    if hasattr(args, "cache_policy"):
        kw["cache_policy"] = args.cache_policy
        kw["miss_policy"] = args.miss_policy
    return kw


def load_from_args(args: argparse.Namespace, err: Optional[TextIO] = None) -> Any:
    """Preflight (no torch yet: bad files and contexts fail fast), then the generator."""
    info = preflight(args)
    return load_generator(args.model, err, info=info, special=getattr(args, "special", False),
                          n_gpu_layers=getattr(args, "n_gpu_layers", None),
                          warm=_warm(args), **engine_kwargs(args))


def _warm(args: argparse.Namespace) -> bool:
    """Read the file into the page cache first, except where the user asked for the disk tier (a RAM
    budget or direct reads): there the page cache must not hold the experts a second time."""
    if getattr(args, "no_warm", False) or getattr(args, "ram_budget", None):
        return False
    return getattr(args, "expert_reads", "auto") not in ("direct", "pread")


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
        print(f"  sampling {fmt_seconds(t.sample_s)} of the decode time", file=err)
        stats = engine.stats() if engine is not None and hasattr(engine, "stats") else {}
        for line in stats_lines(stats):
            print(f"  engine {line}", file=err)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", usage="%(prog)s [-m] MODEL (-p PROMPT | -f FILE) [options]", help="generate from a prompt", description=__doc__)
    add_model_args(p)
    p.add_argument("-p", "--prompt", default=None, help="the prompt; '-' reads it from stdin")
    p.add_argument("-f", "--file", default=None, help="read the prompt from FILE")
    p.add_argument("-n", "--n-predict", type=int, default=128,
                   help="max tokens to generate (-1: until the context is full)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=True,
                      help="wrap the prompt in the chat template (default)")
    mode.add_argument("--raw", dest="chat", action="store_false", help="use the prompt as is")
    p.add_argument("--system", default=None, help="system prompt (chat mode)")
    p.add_argument("--thinking", action="store_true", help="thinking mode (<think>...</think>)")
    p.add_argument("--hide-thinking", action="store_true", help="do not print the reasoning")
    p.add_argument("--ignore-eos", action="store_true",
                   help="keep generating past end-of-generation tokens (as llama.cpp's --ignore-eos)")
    add_output_args(p)
    add_sampling_args(p)
    p.set_defaults(func=main)


def check_n_predict(n: int) -> None:
    if n == 0 or n < -1:
        raise UsageError(f"-n must be >= 1, or -1 for 'until the context is full' (got {n})")


def main(args: argparse.Namespace) -> int:
    check_n_predict(args.n_predict)
    if args.prompt is None and args.file is None:
        raise UsageError("no prompt: give -p TEXT, -p - (read stdin) or -f FILE")
    gen = load_from_args(args)
    prompt = read_prompt(args)
    params = params_from_args(args, max_tokens=args.n_predict if args.n_predict > 0 else gen.n_ctx,
                              thinking=args.thinking)
    if args.chat:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + \
               [{"role": "user", "content": prompt}]
        ids = gen.render_chat(msgs, thinking=args.thinking)
    else:
        ids = gen.encode_prompt(prompt)
    room = gen.n_ctx - len(ids)
    if room < 1:
        raise ValueError(f"the prompt has {len(ids)} tokens; the context holds {gen.n_ctx} (raise -c)")
    params.max_tokens = max(1, min(params.max_tokens, room))
    events = gen.generate(ids, params, extra_stops=gen.chat_stops if args.chat else [],
                          ignore_eos=args.ignore_eos)
    last, _ = stream_events(events, sys.stdout, not args.hide_thinking)
    print_speed(last, sys.stderr, args.verbose, gen.engine)
    if args.trace:
        gen.engine.close()  # writes the routing trace
        print(f"routing trace written to {args.trace}", file=sys.stderr)
    return 0
