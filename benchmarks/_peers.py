"""Run a peer driver (benchmarks/peers/*.py) in the benchmark-only .venv-peers and collect its JSON result.

Importable from our benchmark scripts, which run in .venv; nothing here imports a peer package::

    from _peers import peers_available, run_peer

    if peers_available():
        result = run_peer("matchclot_pipeline.py", "--data", str(folder), "--seed", "0")
        result["match_score"], result["child_peak_rss_mb"], result["wall_s"]

The child's peak resident memory comes from ``os.wait4`` on that one child (its rusage covers the child and the
processes it waited for), so successive runs do not see each other's peaks, as ``RUSAGE_CHILDREN`` would.
Build the environment first with ``make peers`` (benchmarks/peers/setup_peers.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / ".venv-peers"
PEERS_PYTHON = PEERS_VENV / "bin" / "python"
DRIVERS = ROOT / "benchmarks" / "peers"
HEAVY_LOCK = Path("/tmp/mumatch-heavy.lock")
STDERR_TAIL_CHARS = 4000
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class PeerError(RuntimeError):
    """A peer driver failed; the message carries its exit status and the tail of its stderr."""


def peers_available() -> bool:
    """Whether .venv-peers was built to the end (setup_peers.sh touches .venv-peers/.ready last)."""
    return (PEERS_VENV / ".ready").exists() and PEERS_PYTHON.exists()


def _wait(process: subprocess.Popen, timeout: float | None) -> tuple[int, float, bool]:
    """Wait for the child; return (exit status, peak RSS in MiB, timed out)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.monotonic() > deadline and not timed_out:
            process.kill()
            timed_out = True
        time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024.0, timed_out  # Linux: ru_maxrss in KiB


def run_peer(
    driver: str,
    *args: str,
    timeout: float | None = None,
    lock: bool = False,
    check: bool = True,
    threads: int | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Run ``benchmarks/peers/<driver> *args --out <tmp.json>`` with .venv-peers' Python.

    Parameters
    ----------
    driver
        File name of the driver in benchmarks/peers (e.g. ``"matchclot_pipeline.py"``).
    *args
        Its command-line arguments (strings), without ``--out``.
    timeout
        Seconds before the child is killed (None: no limit).
    lock
        Hold ``/tmp/mumatch-heavy.lock`` (flock) while it runs, for runs over a minute or 2 GB.
    check
        Raise :class:`PeerError` when the driver fails; with ``check=False`` return a dict with ``error``,
        ``returncode``, ``stderr_tail``, ``child_peak_rss_mb`` and ``wall_s`` instead (e.g. a row "out of memory").
    threads
        Threads for the child's BLAS/OpenMP/torch (sets OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS);
        None inherits this process's settings. Give both sides of a comparison the same value: on a loaded 2-core
        machine, multithreaded BLAS can run tens of times slower than one thread (measured: randomized SVD of a
        311 x 1000 matrix, 11.3 s with 2 threads under load 9 against 0.28 s with 1).
    env
        Extra environment variables for the child.

    Returns
    -------
    The driver's JSON result, plus ``child_peak_rss_mb`` (peak RSS of the child process tree, MiB), ``wall_s``
    (wall time of the whole subprocess, start-up and imports included) and ``command``.
    """
    if not peers_available():
        raise PeerError(f"{PEERS_VENV} is not ready: run `make peers` (benchmarks/peers/setup_peers.sh) first")
    script = DRIVERS / driver
    if not script.exists():
        raise PeerError(f"no driver {script}; choose one of {sorted(p.name for p in DRIVERS.glob('[!_]*.py'))}")
    with tempfile.TemporaryDirectory(prefix="mumatch_peer_") as directory:
        out = Path(directory) / "result.json"
        stderr_path = Path(directory) / "stderr.txt"
        command = [str(PEERS_PYTHON), str(script), *map(str, args), "--out", str(out)]
        if lock:
            command = ["flock", str(HEAVY_LOCK), *command]
        child_env = {**os.environ, **(env or {})}
        if threads is not None:
            for name in THREAD_VARIABLES:
                child_env[name] = str(threads)
        start = time.perf_counter()
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT, env=child_env)
            returncode, peak_rss, timed_out = _wait(process, timeout)
        wall = time.perf_counter() - start
        stderr_tail = stderr_path.read_bytes()[-STDERR_TAIL_CHARS:].decode(errors="replace")
        if returncode != 0 or not out.exists():
            reason = f"timed out after {timeout} s" if timed_out else f"exit status {returncode}"
            if not check:
                return {
                    "error": reason,
                    "returncode": returncode,
                    "stderr_tail": stderr_tail,
                    "child_peak_rss_mb": peak_rss,
                    "wall_s": wall,
                    "command": command,
                }
            raise PeerError(f"{driver} failed ({reason}); stderr ends with:\n{stderr_tail}")
        result = json.loads(out.read_text())
    result.update({"child_peak_rss_mb": peak_rss, "wall_s": wall, "command": command, "threads": threads})
    return result
