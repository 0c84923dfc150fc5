"""`kimi-runtime serve MODEL`: the OpenAI-compatible HTTP server (uvicorn; Ctrl-C / SIGTERM stop it
cleanly). Binds 127.0.0.1 unless told otherwise."""
from __future__ import annotations

import argparse
import inspect
import os
import sys
from typing import Any, Callable, Optional

from kimi_runtime.commands.run import add_model_args, add_sampling_args, load_from_args, sampling_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", usage="%(prog)s [-m] MODEL [--host HOST] [--port PORT] [options]", help="OpenAI-compatible HTTP server", description=__doc__)
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=os.environ.get("KIMI_RUNTIME_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $KIMI_RUNTIME_API_KEY)")
    p.add_argument("--alias", default=None, help="model id clients use (default: the file name)")
    p.add_argument("--queue", type=int, default=8, help="requests allowed to wait (429 beyond)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes")
    add_sampling_args(p)  # server-wide defaults; a request's own fields win
    p.set_defaults(func=main)


def model_id(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    return name[:-5] if name.endswith(".gguf") else name


def sampling_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """--temp/--top-k/... (and --preset) as the server's defaults for requests that leave them out."""
    d = sampling_overrides(args)
    if getattr(args, "preset", None):
        d["preset"] = args.preset
    return d


def build_app(args: argparse.Namespace, gen: Any, factory: Optional[Callable[..., Any]] = None,
              err: Any = None) -> Any:
    """The ASGI app for `gen`; sampling defaults go to the factory when it takes `sampling_defaults`."""
    if factory is None:
        from kimi_runtime.server import create_app as factory
    err = err or sys.stderr
    kw: dict[str, Any] = {"api_key": args.api_key, "queue_size": args.queue, "max_body": args.max_body}
    defaults = sampling_defaults(args)
    if defaults:
        if "sampling_defaults" in inspect.signature(factory).parameters:
            kw["sampling_defaults"] = defaults
        else:
            print("warning: this server build takes no sampling defaults; ignoring "
                  + ", ".join(f"{k}={v}" for k, v in defaults.items()), file=err)
    return factory(gen, args.alias or model_id(args.model), **kw)


def main(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.queue < 0 or args.max_body < 1:
        raise ValueError("--queue must be >= 0 and --max-body >= 1")
    gen = load_from_args(args)
    import uvicorn

    name = args.alias or model_id(args.model)
    app = build_app(args, gen)
    auth = "API key required" if args.api_key else "no API key"
    print(f"serving {name!r} on http://{args.host}:{args.port}/v1 ({auth}); Ctrl-C to stop",
          file=sys.stderr)
    # After 5 s of shutdown, open streams are cancelled, which cancels their generations.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                timeout_graceful_shutdown=5)
    return 0
