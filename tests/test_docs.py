"""The documentation builds without warnings (fast mode: tutorials rendered without executing them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mumatch as mm

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    env = {**os.environ, "MUMATCH_DOCS_EXECUTE": "off"}
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "-d",
        str(tmp_path / "doctrees"),
    ]
    result = subprocess.run(
        [*command, str(DOCS), str(tmp_path / "html")], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-5000:]
    html = tmp_path / "html"
    for namespace in ("pp", "tl", "pl", "model", "datasets", "metrics", "ot"):
        for name in getattr(mm, namespace).__all__:
            assert (html / "generated" / f"mumatch.{namespace}.{name}.html").exists(), f"no API page for {name}"
    assert "mumatch.pl.plan" in (html / "api.html").read_text()
