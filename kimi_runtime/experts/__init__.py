"""Expert caching: the native cache facade (cache.py), replayable routing traces (trace.py), cache
policies for research (policies.py) and their offline replay against Belady's optimum (replay.py)."""
from __future__ import annotations

from kimi_runtime.experts.policies import POLICIES, make_policy
from kimi_runtime.experts.trace import Trace, TraceWriter, load_trace, synthetic_trace

__all__ = ["POLICIES", "make_policy", "Trace", "TraceWriter", "load_trace", "synthetic_trace"]
