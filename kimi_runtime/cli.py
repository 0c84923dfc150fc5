"""The `kimi-runtime` command. Each subcommand lives in its own module under kimi_runtime/commands/
so the pieces can grow independently; this file only wires them."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from kimi_runtime.errors import KimiRuntimeError


def build_parser() -> argparse.ArgumentParser:
    from kimi_runtime import commands

    p = argparse.ArgumentParser(prog="kimi-runtime", description=__doc__)
    p.add_argument("--verbose", "-v", action="store_true", help="show timing details and tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    for mod in commands.all_commands():
        mod.register(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kimi-runtime ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except (KimiRuntimeError, OSError, ValueError) as e:
        if args.verbose:
            raise
        print(f"kimi-runtime {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
