"""`kimi-runtime chat MODEL`: an interactive multi-turn chat on stdin/stdout with /reset, /stats,
/system TEXT and /quit."""
from __future__ import annotations

import argparse
import sys

from kimi_runtime.commands.run import (add_model_args, add_sampling_args, engine_kwargs,
                                       load_generator, params_from_args, print_speed, stream_events)

HELP = "commands: /reset (forget the conversation), /stats, /system TEXT, /quit"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="interactive chat", description=__doc__)
    add_model_args(p)
    p.add_argument("-n", "--n-predict", type=int, default=512, help="max tokens per reply")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--thinking", action="store_true", help="thinking mode (<think>...</think>)")
    p.add_argument("--hide-thinking", action="store_true", help="do not print the reasoning")
    add_sampling_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    gen = load_generator(args.model, **engine_kwargs(args))
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    last = None
    interactive = sys.stdin.isatty()
    print(HELP, file=sys.stderr)
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
        if line == "/reset":
            history.clear()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line == "/stats":
            if last is None:
                print("(nothing generated yet)", file=sys.stderr)
            else:
                print_speed(last, sys.stderr, True, gen.engine)
            print(f"(history: {len(history)} messages)", file=sys.stderr)
            continue
        if line.startswith("/system"):
            system = [{"role": "system", "content": line[len("/system"):].strip()}]
            print("(system prompt set)", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        ids = gen.render_chat(system + history, thinking=args.thinking)
        room = gen.n_ctx - len(ids)
        if room < 1:
            history.pop()
            print("(the conversation fills the context; /reset to start over)", file=sys.stderr)
            continue
        params = params_from_args(args, max_tokens=min(args.n_predict, room), thinking=args.thinking)
        try:
            events = gen.generate(ids, params, extra_stops=gen.chat_stops)
            last, text = stream_events(events, sys.stdout, not args.hide_thinking)
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the session
            print("\n(interrupted)", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": text})
        if args.verbose:
            print_speed(last, sys.stderr, False)
    return 0
