"""The documentation builds without warnings (fast mode: tutorials rendered without executing them)."""

from __future__ import annotations

import os
import re
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


def test_clue_page_snippets_run_one_after_the_other(tmp_path, monkeypatch):
    # The page's second snippet continues from the first one's data (the CITE-seq starter: rna + adt).
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "clue.md").read_text(), flags=re.S)
    quick_start, class_api = blocks[:2]
    # The snippets, not the training, are under test: one epoch each.
    short = {'key_added="X_clue")': 'key_added="X_clue", max_epochs=1)', "model.train()": "model.train(max_epochs=1)"}
    for long, brief in short.items():
        assert long in quick_start + class_api
        quick_start, class_api = quick_start.replace(long, brief), class_api.replace(long, brief)
    monkeypatch.chdir(tmp_path)  # model.save("clue_model")
    namespace: dict = {}
    exec(compile(quick_start + class_api, str(DOCS / "clue.md"), "exec"), namespace)
    assert namespace["embedding"].shape[0] == namespace["mdata"]["adt"].n_obs


def test_installation_page_names_every_optional_dependency():
    import tomllib

    pyproject = tomllib.loads((DOCS.parent / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    rows = {
        match.group(1): match.group(2).lower()
        for match in re.finditer(r"^\|\s*`(\w+)`\s*\|([^|]*)\|", (DOCS / "installation.md").read_text(), re.M)
    }
    for extra, requirements in extras.items():
        assert extra in rows, f"docs/installation.md has no row for the {extra!r} extra"
        for requirement in requirements:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
            nested = re.search(r"\[(\w+)\]", requirement)
            expected = f"`{nested.group(1)}` extra" if name == "mumatch" and nested else name
            assert expected in rows[extra], f"the {extra!r} row of docs/installation.md does not name {expected!r}"
