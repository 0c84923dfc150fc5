"""`kimi-runtime chat MODEL`: an interactive multi-turn chat on stdin/stdout. Each reply ends with
a short speed line; /help lists the commands (/reset, /stats, /system TEXT, /quit)."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, TextIO

from kimi_runtime.commands.run import (add_model_args, add_output_args, add_sampling_args, check_n_predict,
                                       load_from_args, params_from_args, stream_events)
from kimi_runtime.commands.units import fmt_seconds, stats_lines

HELP = ("commands: /help (this list), /reset (forget the conversation and zero the stats), "
        "/stats (speed and cache counters), /system TEXT (set the system prompt), /quit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", usage="%(prog)s [-m] MODEL [options]", help="interactive chat", description=__doc__)
    add_model_args(p)
    p.add_argument("-n", "--n-predict", type=int, default=512, help="max tokens per reply (-1: no limit)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--thinking", action="store_true", help="thinking mode (<think>...</think>)")
    p.add_argument("--hide-thinking", action="store_true", help="do not print the reasoning")
    add_output_args(p)
    add_sampling_args(p)
    p.set_defaults(func=main)


def turn_line(last: Any) -> str:
    """One line after each reply: tokens, time and speed of that turn."""
    t, u = last.timings, last.usage
    total_s = t.prefill_s + t.decode_s
    speed = f"{t.decode_tok_s:.1f} tok/s" if t.decode_tokens else "- tok/s"
    return (f"[{u.completion_tokens} tok in {fmt_seconds(total_s)}, {speed}; prompt {u.prompt_tokens} tok "
            f"at {t.prefill_tok_s:.1f} tok/s]")


class Session:
    """The conversation and the totals that /stats reports since the start or the last /reset."""

    def __init__(self, gen: Any, system: Optional[str]) -> None:
        self.gen = gen
        self.system = [{"role": "system", "content": system}] if system else []
        self.history: list[dict] = []
        self.reset_totals()

    def reset_totals(self) -> None:
        self.turns = self.generated = 0
        self.decode_tokens = 0
        self.decode_s = self.prefill_s = 0.0
        self.prompt_tokens = 0

    def add_turn(self, last: Any) -> None:
        t, u = last.timings, last.usage
        self.turns += 1
        self.generated += u.completion_tokens
        self.prompt_tokens += t.prefill_tokens
        self.decode_tokens += t.decode_tokens
        self.decode_s += t.decode_s
        self.prefill_s += t.prefill_s

    def reset(self) -> None:
        """Forgets the conversation, the KV cache and every counter (the expert cache keeps its contents)."""
        self.history.clear()
        self.reset_totals()
        eng = self.gen.engine
        if hasattr(eng, "reset"):
            eng.reset()
        if hasattr(eng, "reset_stats"):
            eng.reset_stats()

    def stats(self, err: TextIO) -> None:
        if not self.turns:
            print("(nothing generated since the start or the last /reset)", file=err)
        else:
            rate = f"{self.decode_tokens / self.decode_s:.1f} tok/s" if self.decode_s > 0 else "- tok/s"
            pre = f"{self.prompt_tokens / self.prefill_s:.1f} tok/s" if self.prefill_s > 0 else "- tok/s"
            print(f"{self.turns} replies, {self.generated} tokens generated; decode {rate}, prompt {pre}",
                  file=err)
            eng = self.gen.engine
            for line in stats_lines(eng.stats() if hasattr(eng, "stats") else {}):
                print(f"  {line}", file=err)
        print(f"history: {len(self.history)} messages", file=err)


def main(args: argparse.Namespace) -> int:
    check_n_predict(args.n_predict)
    gen = load_from_args(args)
    s = Session(gen, args.system)
    err = sys.stderr
    interactive = sys.stdin.isatty()
    print(HELP, file=err)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit", "/q"):
            break
        if line in ("/help", "/?"):
            print(HELP, file=err)
            continue
        if line == "/reset":
            s.reset()
            print("(conversation and stats cleared)", file=err)
            continue
        if line == "/stats":
            s.stats(err)
            continue
        if line == "/system" or line.startswith("/system "):
            text = line[len("/system"):].strip()
            s.system = [{"role": "system", "content": text}] if text else []
            print("(system prompt set)" if text else "(system prompt cleared)", file=err)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=err)
            continue
        s.history.append({"role": "user", "content": line})
        ids = gen.render_chat(s.system + s.history, thinking=args.thinking)
        room = gen.n_ctx - len(ids)
        if room < 1:
            s.history.pop()
            print("(the conversation fills the context; /reset to start over)", file=err)
            continue
        limit = room if args.n_predict < 0 else min(args.n_predict, room)
        params = params_from_args(args, max_tokens=limit, thinking=args.thinking)
        try:
            events = gen.generate(ids, params, extra_stops=gen.chat_stops)
            last, text = stream_events(events, sys.stdout, not args.hide_thinking)
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the session
            print("\n(interrupted)", file=err)
            s.history.pop()
            continue
        s.history.append({"role": "assistant", "content": text})
        s.add_turn(last)
        print(turn_line(last), file=err)
    return 0
