#!/usr/bin/env bash
# Build the benchmark-only virtualenv .venv-peers (git-ignored) holding the peer methods that the benchmarks
# compare mumatch with: matchclot, scglue (CLUE), POT, harmony-pytorch, geomloss, ott-jax, muon/scanpy/harmonypy.
# The peers are never dependencies of mumatch; benchmarks call them through benchmarks/_peers.py as subprocesses.
# Idempotent: a finished environment is marked by .venv-peers/.ready; rerunning it then does nothing
# (pass --force to reinstall on top).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ROOT}/.venv-peers"
PY="${VENV}/bin/python"
TORCH="torch==2.13.0"
PEERS=(matchclot scglue pot harmony-pytorch harmonypy anndata mudata scanpy muon geomloss ott-jax psutil)

if [[ -f "${VENV}/.ready" && "${1:-}" != "--force" ]]; then
    echo "setup_peers: ${VENV} is ready (pass --force to reinstall)"
    exit 0
fi

if [[ ! -x "${PY}" ]]; then
    python3 -m venv "${VENV}"
fi
"${PY}" -m pip install -q --upgrade pip
# The CPU torch goes in first and stays pinned: an unpinned torch would pull several GB of CUDA packages.
"${PY}" -m pip install -q "${TORCH}"
"${PY}" -m pip install -q "${PEERS[@]}" -c "${ROOT}/constraints.txt"
# ott-jax 0.6.0 calls jax's batching.is_vmappable, which newer jax releases removed: keep jax at a release it runs on.
"${PY}" -m pip install -q "jax==0.6.2" "jaxlib==0.6.2" -c "${ROOT}/constraints.txt"

# pykeops is optional: it gives GeomLoss its "online" backend, compiling kernels with the machine's C++ compiler
# on first use. It is kept only when a tiny reduction compiles and runs here.
if "${PY}" -m pip install -q pykeops -c "${ROOT}/constraints.txt" \
    && "${PY}" - <<'PYEOF'
import numpy as np
import pykeops.numpy as pknp

x = np.random.default_rng(0).random((50, 3))
lazy_sq = ((pknp.LazyTensor(x[:, None, :]) - pknp.LazyTensor(x[None, :, :])) ** 2).sum(-1)
assert np.isfinite(lazy_sq.sum(axis=1)).all()
PYEOF
then
    echo "setup_peers: pykeops works (GeomLoss online backend available)"
    echo "available" >"${VENV}/.pykeops"
else
    echo "setup_peers: pykeops unavailable here; GeomLoss runs with its tensorized backend only"
    "${PY}" -m pip uninstall -q -y pykeops keopscore >/dev/null 2>&1 || true
    echo "unavailable" >"${VENV}/.pykeops"
fi

"${PY}" - <<'PYEOF'
import importlib.metadata as md

for name in ["torch", "matchclot", "scglue", "pot", "harmony-pytorch", "harmonypy", "anndata", "mudata", "scanpy",
             "muon", "geomloss", "ott-jax", "jax", "numpy", "scipy", "scikit-learn", "psutil"]:
    print(f"{name}=={md.version(name)}")
PYEOF
touch "${VENV}/.ready"
echo "setup_peers: done (${VENV})"
