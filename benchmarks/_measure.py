"""Run a Python snippet in a fresh interpreter and measure its wall time and peak memory (RSS)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap

PRELUDE = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
_start = time.perf_counter()
"""
EPILOGUE = """
_result = dict(result) if "result" in dir() else {}
_result["seconds"] = time.perf_counter() - _start
_result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print("__RESULT__" + json.dumps(_result))
"""


def measure(code: str, python: str = sys.executable, timeout: float | None = None) -> dict:
    """Run ``code`` in its own process; return its ``result`` dict plus ``seconds`` and ``peak_rss_gb``.

    ``seconds`` counts from the start of ``code`` (imports inside ``code`` included); the peak RSS is the child's own.
    """
    script = PRELUDE + textwrap.dedent(code) + EPILOGUE
    completed = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=timeout)
    for line in completed.stdout.splitlines():
        if line.startswith("__RESULT__"):
            return json.loads(line.removeprefix("__RESULT__"))
    raise RuntimeError(f"benchmark child failed ({completed.returncode}):\n{completed.stderr[-3000:]}")


def peak_rss_children_gb() -> float:
    """Peak RSS of the largest finished child process so far."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
