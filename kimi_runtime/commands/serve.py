"""`kimi-runtime serve MODEL`: the OpenAI-compatible HTTP server (uvicorn; Ctrl-C / SIGTERM stop it
cleanly). Binds 127.0.0.1 unless told otherwise."""
from __future__ import annotations

import argparse
import os
import sys

from kimi_runtime.commands.run import add_model_args, engine_kwargs, load_generator


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server", description=__doc__)
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=os.environ.get("KIMI_RUNTIME_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $KIMI_RUNTIME_API_KEY)")
    p.add_argument("--alias", default=None, help="model id clients use (default: the file name)")
    p.add_argument("--queue", type=int, default=8, help="requests allowed to wait (429 beyond)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes")
    p.set_defaults(func=main)


def model_id(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    return name[:-5] if name.endswith(".gguf") else name


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from kimi_runtime.server import create_app

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.queue < 0 or args.max_body < 1:
        raise ValueError("--queue must be >= 0 and --max-body >= 1")
    gen = load_generator(args.model, **engine_kwargs(args))
    name = args.alias or model_id(args.model)
    app = create_app(gen, name, api_key=args.api_key, queue_size=args.queue, max_body=args.max_body)
    auth = "API key required" if args.api_key else "no API key"
    print(f"serving {name!r} on http://{args.host}:{args.port}/v1 ({auth}); Ctrl-C to stop",
          file=sys.stderr)
    # After 5 s of shutdown, open streams are cancelled, which cancels their generations.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                timeout_graceful_shutdown=5)
    return 0
