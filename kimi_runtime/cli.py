"""The `kimi-runtime` command. Each subcommand lives in its own module under kimi_runtime/commands/
so the pieces can grow independently; this file only wires them."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from kimi_runtime.errors import KimiRuntimeError


def build_parser() -> argparse.ArgumentParser:
    from kimi_runtime import __version__, commands

    p = argparse.ArgumentParser(prog="kimi-runtime", description=__doc__)
    p.add_argument("--verbose", "-v", action="store_true", help="show timing details and tracebacks")
    p.add_argument("--version", action="version", version=f"kimi-runtime {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for mod in commands.all_commands():
        mod.register(sub)
    p.set_defaults(_subparsers=sub)
    return p


def _subparser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    sub = getattr(args, "_subparsers", None)
    return sub.choices.get(args.command, parser) if sub is not None else parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from kimi_runtime.commands.common import UsageError, resolve_model

    parser = build_parser()
    try:
        # Unknown flags are collected, not fatal here, so they are reported with the usage of the
        # subcommand they were given to rather than the top-level one.
        args, extra = parser.parse_known_args(argv)
        sub = _subparser(parser, args)
        if extra:
            sub.error(f"unrecognized arguments: {' '.join(extra)}")
        if hasattr(args, "model_flag"):
            try:
                resolve_model(args)
            except UsageError as e:
                sub.error(str(e))
    except SystemExit as e:  # --help, --version and usage errors: argparse already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kimi-runtime ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except UsageError as e:
        sub.print_usage(sys.stderr)
        print(f"kimi-runtime {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (KimiRuntimeError, OSError, ValueError) as e:
        if args.verbose:
            raise
        print(f"kimi-runtime {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
