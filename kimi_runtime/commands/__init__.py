"""Subcommands of `kimi-runtime`. A module here exposes `register(subparsers)`, which adds its
parser and sets `func`. Modules whose dependencies are missing are skipped, not fatal."""
from __future__ import annotations

import importlib
from types import ModuleType

# Order is the order shown in --help.
_NAMES = ["demo", "run", "chat", "serve", "inspect", "plan", "trace", "synth", "info"]


def all_commands() -> list[ModuleType]:
    mods = []
    for name in _NAMES:
        try:
            mods.append(importlib.import_module(f"kimi_runtime.commands.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"kimi_runtime.commands.{name}":
                raise
    return mods
