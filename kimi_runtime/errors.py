"""Exceptions shared across kimi_runtime; every user-facing failure is one of these, with a message
that names the file, the field and the problem."""


class KimiRuntimeError(Exception):
    """Base class of kimi_runtime's own errors."""


class GGUFError(KimiRuntimeError, ValueError):
    """A GGUF file (or split set) is malformed, hostile, truncated or not what we support."""


class ConfigError(KimiRuntimeError, ValueError):
    """Model metadata is missing, of the wrong type, or inconsistent."""
