import subprocess
import sys

import pytest

import mumatch as mm


def test_preprocessing_does_not_import_torch():
    # Namespaces load on first use: preprocessing alone must not pay torch/scvi-tools' ~300 MB of imports.
    code = "import sys, mumatch as mm; mm.pp.lsi_harmony; mm.datasets.simulate_paired; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_namespaces_resolve_and_unknown_attributes_raise():
    assert mm.model.CLIP.__name__ == "CLIP"
    # Tab completion offers the namespaces, not the helpers the package's __init__ imports.
    assert [name for name in dir(mm) if not name.startswith("__")] == sorted(mm.__all__)
    assert "__version__" in dir(mm)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        mm.nonexistent  # noqa: B018


def test_matching_does_not_import_the_training_stack():
    # Matching stored embeddings needs torch, not Lightning or scvi-tools (2.5 s and ~120 MB more to import).
    code = (
        "import sys, mumatch as mm; mm.tl.match_ot; mm.tl.transfer_labels; "
        "print('lightning' in sys.modules, 'scvi' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False False"


def test_tool_functions_resolve_and_unknown_ones_raise():
    assert mm.tl.train_clue.__name__ == "train_clue"
    assert [name for name in dir(mm.tl) if not name.startswith("__")] == sorted(mm.tl.__all__)
    with pytest.raises(AttributeError, match="no attribute 'train_nothing'"):
        mm.tl.train_nothing  # noqa: B018


def test_solvers_alone_do_not_import_the_anndata_stack():
    # mm.ot works on plain arrays; the OT benchmark loads it without the package's AnnData imports and measures its
    # memory so (importing mudata through a shared check cost ~70 MB of its peak).
    code = (
        "import sys, types, importlib, importlib.util; "
        "stub = types.ModuleType('mumatch'); "
        "stub.__path__ = list(importlib.util.find_spec('mumatch').submodule_search_locations); "
        "sys.modules['mumatch'] = stub; importlib.import_module('mumatch.ot'); "
        "print(sorted({'mudata', 'anndata', 'pandas', 'scanpy'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
