from __future__ import annotations

import mudata
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import mumatch as mm
from tests.helpers import assert_unchanged, snapshot

KEY = "X_lsi_harmony"


@pytest.fixture(scope="module")
def embedded_starters() -> dict:
    """Both bundled starters after lsi_harmony with its defaults (computed once for the module)."""
    result = {}
    for task in ("cite", "multiome"):
        mdata = mm.datasets.bmmc_starter(task)
        mm.pp.lsi_harmony(mdata)
        result[task] = mdata
    return result


@pytest.fixture
def small():
    """Small simulated RNA + ATAC + ADT with two batches."""
    return mm.datasets.simulate_paired(
        300, ("rna", "atac", "adt"), n_batches=2, n_genes=200, n_peaks=400, n_proteins=20, seed=3
    )


@pytest.mark.parametrize("task", ["cite", "multiome"])
def test_starters_every_cell_embedded_and_cell_types_separate(embedded_starters, task):
    mdata = embedded_starters[task]
    for mod, adata in mdata.mod.items():
        for key in (KEY, f"{KEY}_uncorrected"):
            embedding = adata.obsm[key]
            assert embedding.shape[0] == adata.n_obs
            assert embedding.dtype == np.float32
            assert np.isfinite(embedding).all()
        train = (adata.obs["split"] == "train").to_numpy()
        labels = adata.obs["cell_type"].astype(str).to_numpy()[train]
        chance = np.unique(labels, return_counts=True)[1].max() / labels.size
        accuracy = cross_val_score(KNeighborsClassifier(15), adata.obsm[KEY][train], labels, cv=5).mean()
        assert accuracy > 1.8 * chance, f"{task}/{mod}: kNN accuracy {accuracy:.2f}, chance {chance:.2f}"


def test_starters_default_sizes_and_harmony_decisions(embedded_starters):
    cite, multiome = embedded_starters["cite"], embedded_starters["multiome"]
    assert multiome["rna"].obsm[KEY].shape[1] == 192
    assert multiome["atac"].obsm[KEY].shape[1] == 256
    assert cite["adt"].obsm[KEY].shape[1] == cite["adt"].n_vars  # CLR of every protein
    assert multiome["atac"].uns[KEY]["n_dropped_components"] == 1
    assert multiome["rna"].uns[KEY]["n_dropped_components"] == 0
    assert cite["adt"].uns[KEY]["params"]["method"] == "clr"
    for mdata, mod2 in ((cite, "adt"), (multiome, "atac")):
        # The starters' test cells of mod2 have no batch: Harmony is skipped there, applied to RNA.
        assert mdata["rna"].uns[KEY]["harmony"]["applied"]
        assert not np.allclose(mdata["rna"].obsm[KEY], mdata["rna"].obsm[f"{KEY}_uncorrected"])
        assert not mdata[mod2].uns[KEY]["harmony"]["applied"]
        assert "no 'batch' label" in mdata[mod2].uns[KEY]["harmony"]["reason"]
        np.testing.assert_array_equal(mdata[mod2].obsm[KEY], mdata[mod2].obsm[f"{KEY}_uncorrected"])


@pytest.mark.parametrize("task", ["cite", "multiome"])
def test_projecting_the_reference_reproduces_its_uncorrected_embedding(embedded_starters, task):
    reference = embedded_starters[task]
    query = mm.datasets.bmmc_starter(task)
    assert mm.pp.lsi_harmony_transform(query, reference) is None
    for mod in reference.mod:
        np.testing.assert_allclose(
            query[mod].obsm[f"{KEY}_uncorrected"], reference[mod].obsm[f"{KEY}_uncorrected"], atol=1e-5
        )
        assert query[mod].uns[KEY]["params"]["reference_key"] == KEY


def test_projection_matches_features_by_name(small):
    mm.pp.lsi_harmony(small, harmony=False)
    order = np.random.default_rng(0).permutation(small["atac"].n_vars)
    query = mm.datasets.simulate_paired(
        300, ("rna", "atac", "adt"), n_batches=2, n_genes=200, n_peaks=400, n_proteins=20, seed=3
    )
    shuffled = query["atac"][:, order].copy()
    query.mod["atac"] = shuffled
    mm.pp.lsi_harmony_transform(query, small, mods=["atac"], harmony=False)
    np.testing.assert_allclose(query["atac"].obsm[KEY], small["atac"].obsm[KEY], atol=1e-5)


def test_projection_with_missing_features_counts_them_as_zeros(small):
    mm.pp.lsi_harmony(small, harmony=False)
    query = small["rna"][:, 20:].copy()  # drops 20 reference genes
    query_mdata = mm.datasets.simulate_paired(10, ("rna", "adt"), n_genes=5, n_proteins=5)
    query_mdata.mod["rna"] = query
    mm.pp.lsi_harmony_transform(query_mdata, small, mods=["rna"], harmony=False)
    assert query_mdata["rna"].obsm[KEY].shape == small["rna"].obsm[KEY].shape
    assert np.isfinite(query_mdata["rna"].obsm[KEY]).all()
    assert any("20 of 200 reference features are missing" in note for note in query_mdata["rna"].uns[KEY]["notes"])


def test_adt_pca_when_fewer_components_than_proteins(small):
    mm.pp.lsi_harmony(small, mods=["adt"], n_comps=5, harmony=False)
    assert small["adt"].obsm[KEY].shape == (small["adt"].n_obs, 5)
    assert small["adt"].uns[KEY]["params"]["method"] == "clr_pca"
    query = small.copy()
    mm.pp.lsi_harmony_transform(query, small, mods=["adt"], harmony=False, key_added="projected")
    np.testing.assert_allclose(query["adt"].obsm["projected"], small["adt"].obsm[KEY], atol=1e-5)


def test_harmony_reduces_batch_separation():
    mdata = mm.datasets.simulate_paired(800, ("rna", "atac"), n_batches=2, n_genes=300, n_peaks=600, batch_effect=1.0)
    mm.pp.lsi_harmony(mdata, mods=["rna"], n_comps=20)
    adata = mdata["rna"]
    batches = adata.obs["batch"].astype(str).to_numpy()

    def batch_accuracy(key: str) -> float:
        return cross_val_score(KNeighborsClassifier(15), adata.obsm[key], batches, cv=3).mean()

    assert adata.uns[KEY]["harmony"] == {"applied": True, "reason": "2 batches in 'batch'", "n_batches": 2}
    assert batch_accuracy(KEY) < batch_accuracy(f"{KEY}_uncorrected") - 0.1


def test_copy_semantics(small, monkeypatch):
    before = snapshot(small)
    result = mm.pp.lsi_harmony(small, n_comps=10, copy=True)
    assert result is not small
    assert_unchanged(before, small)
    assert KEY in result["rna"].obsm and KEY in result["atac"].obsm and KEY in result["adt"].obsm
    assert mm.pp.lsi_harmony(small, n_comps=10, copy=False) is None
    np.testing.assert_array_equal(small["atac"].obsm[KEY], result["atac"].obsm[KEY])  # deterministic
    # Replacing is said once for all modalities, and not at all for a copy (the caller's data is untouched).
    from scanpy import logging as logg

    messages = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: messages.append(message))
    mm.pp.lsi_harmony(small, n_comps=10, copy=True)
    assert not [message for message in messages if "overwriting" in message]
    mm.pp.lsi_harmony(small, n_comps=10)
    assert [message for message in messages if "overwriting" in message] == [
        f"overwriting .obsm['{KEY}'] (and '{KEY}_uncorrected') of ['rna', 'atac', 'adt']"
    ]
    query = mm.datasets.bmmc_starter("cite")
    with pytest.raises(KeyError, match="no fitted projection"):
        mm.pp.lsi_harmony_transform(query, query)


def test_mods_subset_and_key_added(small):
    mm.pp.lsi_harmony(small, mods=["rna"], n_comps={"rna": 7}, key_added="X_mine", batch_key=None)
    assert small["rna"].obsm["X_mine"].shape[1] == 7
    assert "X_mine" not in small["atac"].obsm
    assert small["rna"].uns["X_mine"]["harmony"] == {"applied": False, "reason": "batch_key=None"}


def test_all_zero_cells_and_features_stay_finite(small):
    for mod in ("rna", "atac", "adt"):
        counts = small[mod].layers["counts"].tolil()
        counts[:5] = 0
        counts[:, :3] = 0
        small[mod].layers["counts"] = counts.tocsr()
    mm.pp.lsi_harmony(small, n_comps=10)
    for mod in ("rna", "atac", "adt"):
        assert np.isfinite(small[mod].obsm[KEY]).all()
        assert np.isfinite(small[mod].obsm[f"{KEY}_uncorrected"]).all()
    for mod in ("rna", "atac"):  # an empty cell has no LSI signal (ADT's PCA centres it away from zero)
        np.testing.assert_array_equal(small[mod].obsm[f"{KEY}_uncorrected"][:5], 0)
    assert np.isfinite(small["atac"].uns[KEY]["idf"]).all()


def test_too_many_components_are_clamped_with_a_warning(small):
    mm.pp.lsi_harmony(small, mods=["rna", "atac"], n_comps=10_000, harmony=False)
    assert small["rna"].obsm[KEY].shape[1] == min(small["rna"].shape) - 1
    assert small["atac"].obsm[KEY].shape[1] == min(small["atac"].shape) - 2  # one more computed, then dropped
    assert "more than its data allow" in small["rna"].uns[KEY]["notes"][0]


def test_dense_counts_and_highly_variable_features(small):
    small["rna"].layers["counts"] = small["rna"].layers["counts"].toarray()
    small["rna"].var["highly_variable"] = np.arange(small["rna"].n_vars) < 50
    mm.pp.lsi_harmony(small, mods=["rna"], n_comps=10)
    assert small["rna"].uns[KEY]["feature_names"].size == 50
    assert small["rna"].uns[KEY]["params"]["use_highly_variable"]


def _set_layer(mdata, mod, values):
    mdata[mod].layers["counts"] = values


def _set_flags(mdata, values, dtype=None):
    flags = list(values) * (mdata["rna"].n_vars // 2)
    mdata["rna"].var["highly_variable"] = pd.Series(flags, index=mdata["rna"].var_names, dtype=dtype)


def _repeat_gene(mdata):
    names = list(mdata["rna"].var_names)
    names[1] = names[0]
    mdata["rna"].var_names = names


@pytest.mark.parametrize(
    ("prepare", "kwargs", "error", "match"),
    [
        (lambda m: _set_layer(m, "rna", m["rna"].layers["counts"] * 0.5), {}, ValueError, "layer="),
        (lambda m: _set_layer(m, "atac", -m["atac"].layers["counts"]), {}, ValueError, "negative"),
        (None, {"layer": "raw"}, KeyError, "layer='raw'"),
        (None, {"layer": ["counts"]}, ValueError, "layer must be the name of one layer"),
        (None, {"mods": ["protein"]}, KeyError, "not a modality"),
        (None, {"n_comps": {"rna": 1}}, ValueError, "n_comps for 'rna' must be an integer >= 2"),
        (None, {"n_comps": 0}, ValueError, "n_comps"),
        (None, {"n_comps": {"rna": 10, "other": 5}}, KeyError, "other"),
        (None, {"use_highly_variable": True}, KeyError, "highly_variable"),
        # Flags read back from a file as text, or with a missing value: astype(bool) took them all as True.
        (lambda m: _set_flags(m, ["True", "False"]), {}, ValueError, "must hold True/False"),
        (lambda m: _set_flags(m, [True, np.nan]), {}, ValueError, "must hold True/False"),
        (lambda m: _set_flags(m, [True, None], "boolean"), {}, ValueError, "must hold True/False"),
        (None, {"key_added": ""}, ValueError, "key_added"),
    ],
)
def test_bad_input_raises_and_leaves_mudata_unchanged(small, prepare, kwargs, error, match):
    if prepare is not None:
        prepare(small)
    before = snapshot(small)
    with pytest.raises(error, match=match):
        mm.pp.lsi_harmony(small, **kwargs)
    assert_unchanged(before, small)
    for adata in small.mod.values():
        assert KEY not in adata.obsm and KEY not in adata.uns


def test_bad_input_to_transform(small):
    with pytest.raises(TypeError, match="mudata.MuData"):
        mm.pp.lsi_harmony(small["rna"])
    reference = small.copy()
    mm.pp.lsi_harmony(reference, mods=["rna"], n_comps=5, harmony=False)
    before = snapshot(small)
    with pytest.raises(KeyError, match="no fitted projection"):
        mm.pp.lsi_harmony_transform(small, reference, mods=["atac"])
    other = mm.datasets.simulate_paired(50, ("rna", "adt"), n_genes=30, n_proteins=5)
    other["rna"].var_names = [f"x{i}" for i in range(30)]
    with pytest.raises(ValueError, match="shares no feature"):
        mm.pp.lsi_harmony_transform(other, reference, mods=["rna"])
    assert_unchanged(before, small)


def test_fitted_projection_survives_writing_and_reading(small, tmp_path):
    import mudata

    mm.pp.lsi_harmony(small, n_comps=8, batch_key=None)
    small.write(tmp_path / "reference.h5mu")
    reference = mudata.read_h5mu(tmp_path / "reference.h5mu")
    query = small.copy()
    mm.pp.lsi_harmony_transform(query, reference, batch_key=None, key_added="projected")
    for mod in small.mod:
        np.testing.assert_allclose(query[mod].obsm["projected"], small[mod].obsm[KEY], atol=1e-5)


def test_square_embedding_is_corrected_along_the_cells():
    # harmonypy reads a square matrix as components × cells: with as many cells as ADT features the correction must
    # still act on the cells (the same data with one more protein is the reference: Harmony leaves a zero column be).
    mdata = mm.datasets.simulate_paired(60, ("rna", "adt"), n_genes=50, n_proteins=30, batch_effect=1.0, seed=4)
    adt = mdata["adt"][mdata["adt"].obs_names[:30]].copy()
    assert adt.n_obs == adt.n_vars == 30
    from mumatch.pp._harmony import run_harmony

    embedding = np.random.default_rng(0).standard_normal((30, 30)).astype(np.float32)
    embedding[adt.obs["batch"].to_numpy() == "batch1", :5] += 3
    batches = adt.obs["batch"].astype(str)
    square = run_harmony(embedding, batches)
    widened = run_harmony(np.hstack([embedding, np.zeros((30, 1), np.float32)]), batches)[:, :30]
    np.testing.assert_allclose(square, widened, atol=1e-4)
    correlation = [np.corrcoef(a, b)[0, 1] for a, b in zip(square, embedding, strict=True)]
    assert np.mean(correlation) > 0.5


def test_modality_without_batch_column_is_left_uncorrected(small):
    del small["adt"].obs["batch"]
    mm.pp.lsi_harmony(small, n_comps=10)
    assert small["rna"].uns[KEY]["harmony"]["applied"]
    assert small["adt"].uns[KEY]["harmony"] == {"applied": False, "reason": "no 'batch' column in its .obs"}
    assert "skipping Harmony for 'adt'" in small["adt"].uns[KEY]["notes"][0]
    before = snapshot(small)
    with pytest.raises(KeyError, match="batch_key='donor' is not a column of mdata.obs or of the .obs of any of"):
        mm.pp.lsi_harmony(small, mods=["rna"], n_comps=10, batch_key="donor", key_added="X_donor")  # a misspelling
    assert_unchanged(before, small)
    query = small.copy()
    del query["rna"].obs["batch"]
    mm.pp.lsi_harmony_transform(query, small, mods=["rna"], key_added="projected")
    assert not query["rna"].uns["projected"]["harmony"]["applied"]


def test_duplicated_sparse_entries_count_once(small):
    import scipy.sparse as sp

    counts = small["rna"].layers["counts"].tocoo()
    half = np.floor(counts.data / 2)
    duplicated = small.copy()
    # csr_matrix((data, (row, col))) sums duplicates: store the pieces side by side by hand instead
    order = np.lexsort((np.tile(counts.col, 2), np.tile(counts.row, 2)))
    rows = np.tile(counts.row, 2)[order]
    data = np.concatenate([half, counts.data - half])[order]
    indptr = np.searchsorted(rows, np.arange(counts.shape[0] + 1))
    pieces = sp.csr_matrix((data, np.tile(counts.col, 2)[order], indptr), shape=counts.shape)
    assert not pieces.has_canonical_format and (pieces != small["rna"].layers["counts"]).nnz == 0
    duplicated["rna"].layers["counts"] = pieces
    stored = pieces.data.copy()
    mm.pp.lsi_harmony(small, mods=["rna"], n_comps=10, harmony=False)
    mm.pp.lsi_harmony(duplicated, mods=["rna"], n_comps=10, harmony=False)
    np.testing.assert_allclose(duplicated["rna"].obsm[KEY], small["rna"].obsm[KEY], atol=1e-4)
    np.testing.assert_array_equal(duplicated["rna"].layers["counts"].data, stored)  # the caller's matrix untouched


def test_n_comps_none_for_a_modality_means_its_default(small):
    mm.pp.lsi_harmony(small, mods=["rna", "adt"], n_comps={"rna": None, "adt": None}, harmony=False)
    assert small["rna"].obsm[KEY].shape[1] == 192
    assert small["adt"].obsm[KEY].shape[1] == small["adt"].n_vars


def test_adt_components_beyond_the_proteins_are_noted(small):
    mm.pp.lsi_harmony(small, mods=["adt"], n_comps=50, harmony=False)
    assert small["adt"].obsm[KEY].shape[1] == small["adt"].n_vars
    assert "n_comps=50 for 'adt' is more than its data allow" in small["adt"].uns[KEY]["notes"][0]


def test_too_few_cells_for_an_lsi():
    tiny = mm.datasets.simulate_paired(3, ("rna", "atac"), n_genes=30, n_peaks=50)
    before = snapshot(tiny)
    with pytest.raises(ValueError, match="too few for an LSI"):
        mm.pp.lsi_harmony(tiny)
    assert_unchanged(before, tiny)


def test_transform_refuses_to_replace_a_fitted_projection(small):
    mm.pp.lsi_harmony(small, mods=["rna"], n_comps=10, harmony=False)
    before = snapshot(small)
    with pytest.raises(ValueError, match="replace its fitted projection"):
        mm.pp.lsi_harmony_transform(small, small, mods=["rna"])
    sharing = mudata.MuData({"rna": small["rna"]})  # another MuData around the reference's own AnnData
    with pytest.raises(ValueError, match="replace its fitted projection"):
        mm.pp.lsi_harmony_transform(sharing, small, mods=["rna"])
    assert_unchanged(before, small)
    projected = mm.pp.lsi_harmony_transform(small, small, mods=["rna"], harmony=False, copy=True)  # writes a copy
    assert "feature_names" in small["rna"].uns[KEY] and "feature_names" not in projected["rna"].uns[KEY]
    mm.pp.lsi_harmony_transform(small, small, mods=["rna"], harmony=False, key_added="X_projected")
    np.testing.assert_allclose(small["rna"].obsm["X_projected"], small["rna"].obsm[KEY], atol=1e-5)
    query = small.copy()  # a query that carries the reference's .uns: replaced, with a note
    mm.pp.lsi_harmony_transform(query, small, mods=["rna"], harmony=False)
    assert "replacing the fitted projection" in query["rna"].uns[KEY]["notes"][0]
    assert "feature_names" in small["rna"].uns[KEY]
    query = small.copy()
    del query["rna"].uns[KEY]
    _repeat_gene(query)
    with pytest.raises(ValueError, match="repeats feature names that the projection uses"):
        mm.pp.lsi_harmony_transform(query, small, mods=["rna"])
    extra = query["rna"].var_names.tolist()
    extra[:2] = ["not-in-the-reference", "not-in-the-reference"]  # repeated, but unused by the projection: fine
    query["rna"].var_names = extra
    mm.pp.lsi_harmony_transform(query, small, mods=["rna"], harmony=False)
    assert query["rna"].obsm[KEY].shape == small["rna"].obsm[KEY].shape


def test_repeated_feature_names_fit_but_cannot_be_projected(small):
    _repeat_gene(small)
    mm.pp.lsi_harmony(small, mods=["rna"], n_comps=10, harmony=False)  # the fit needs no names
    assert "repeats feature names" in small["rna"].uns[KEY]["notes"][0]
    query = small.copy()
    del query["rna"].uns[KEY]
    with pytest.raises(ValueError, match="fitted on repeated feature names"):
        mm.pp.lsi_harmony_transform(query, small, mods=["rna"])


def test_harmony_reads_batch_labels_as_matching_does():
    import pandas as pd

    from mumatch.pp._harmony import harmony_batches

    obs = pd.DataFrame({"batch": ["a", "b", "nan", "a"]})
    batches, reason, warn = harmony_batches(obs, "batch")
    assert batches is None and reason == "1 of 4 cells have no 'batch' label"  # the text "nan" is no batch
    assert warn
    batches, reason, _ = harmony_batches(pd.DataFrame({"batch": [1.0, 2.0, 1.0]}), "batch")
    assert list(batches) == ["1", "2", "1"] and reason == "2 batches in 'batch'"
    # One batch or batch_key=None: skipped without a warning (nothing to correct, or asked for).
    assert harmony_batches(pd.DataFrame({"batch": ["a", "a"]}), "batch") == (None, "'batch' has a single level", False)
    assert not harmony_batches(obs, None).warn


def test_counts_of_a_backed_mudata_are_read_from_disk(tmp_path):
    # mudata.read_h5mu(backed=True) leaves a sparse .X on disk: it is read, and the embedding is the in-memory one's.
    mdata = mm.datasets.simulate_paired(120, ("rna", "atac"), n_batches=2, n_genes=80, n_peaks=200, seed=2)
    for adata in mdata.mod.values():
        adata.X = adata.layers.pop("counts")
    mdata.write_h5mu(tmp_path / "counts.h5mu")
    backed = mudata.read_h5mu(tmp_path / "counts.h5mu", backed=True)
    in_memory = mudata.read_h5mu(tmp_path / "counts.h5mu")
    for data in (backed, in_memory):
        mm.pp.lsi_harmony(data, layer=None, n_comps=8)
    for mod in ("rna", "atac"):
        np.testing.assert_array_equal(backed[mod].obsm[KEY], in_memory[mod].obsm[KEY])


class _HarmonyCall:
    """Records what harmonypy.run_harmony is given; returns the input unchanged (harmonypy 2.x: cells × components)."""

    def __init__(self):
        self.calls = []

    def __call__(self, data, meta, vars_use, **kwargs):
        from types import SimpleNamespace

        self.calls.append({"data": np.array(data), "batches": meta[vars_use].astype(str).tolist(), **kwargs})
        return SimpleNamespace(Z_corr=np.array(data).T)


@pytest.mark.parametrize(("n_cells", "n_clusters"), [(20, 1), (44, 1), (46, 2), (300, 10), (3100, 100), (5000, 100)])
def test_harmony_gets_one_cluster_per_30_cells_at_most_100_and_the_seed(monkeypatch, n_cells, n_clusters):
    import harmonypy

    from mumatch.pp._harmony import run_harmony

    recorder = _HarmonyCall()
    monkeypatch.setattr(harmonypy, "__version__", "2.1.0")
    monkeypatch.setattr(harmonypy, "run_harmony", recorder)
    embedding = np.arange(n_cells * 3, dtype=np.float32).reshape(n_cells, 3)
    batches = pd.Series(np.where(np.arange(n_cells) % 3 == 0, "a", "b"))
    corrected = run_harmony(embedding, batches, random_state=7)
    (call,) = recorder.calls
    assert call["nclust"] == n_clusters and call["random_state"] == 7
    np.testing.assert_array_equal(call["data"], embedding.T)  # components × cells, as every version reads it
    assert call["batches"] == batches.tolist()  # the cells' own labels, in their order
    np.testing.assert_array_equal(corrected, embedding)


def test_lsi_harmony_and_its_transform_hand_harmony_every_cell_its_batch_and_the_seed(small, monkeypatch):
    import harmonypy

    recorder = _HarmonyCall()
    monkeypatch.setattr(harmonypy, "run_harmony", recorder)
    # The batch only in mdata.obs: read from there.
    small.obs["donor"] = small["rna"].obs["batch"].reindex(small.obs_names).astype(str).to_numpy()
    mm.pp.lsi_harmony(small, mods=["rna"], n_comps=5, batch_key="donor", random_state=3)
    (call,) = recorder.calls
    assert call["random_state"] == 3 and call["nclust"] == 10
    assert call["batches"] == small["rna"].obs["batch"].astype(str).tolist()
    np.testing.assert_array_equal(call["data"].T, small["rna"].obsm[f"{KEY}_uncorrected"])
    assert small["rna"].uns[KEY]["harmony"]["applied"]
    query = small[small.obs_names[::2]].copy()
    mm.pp.lsi_harmony_transform(query, small, mods=["rna"], batch_key="donor", random_state=5, key_added="projected")
    call = recorder.calls[-1]
    assert call["random_state"] == 5 and call["nclust"] == 5
    assert call["batches"] == query["rna"].obs["batch"].astype(str).tolist()
    np.testing.assert_array_equal(call["data"].T, query["rna"].obsm["projected_uncorrected"])
    assert query["rna"].uns["projected"]["harmony"]["applied"]


@pytest.mark.parametrize(("mod", "n_comps"), [("rna", 8), ("atac", 8), ("adt", 5)])
def test_projecting_some_of_the_reference_cells_reproduces_their_rows(small, mod, n_comps):
    # The projection uses the fit's IDF, components (and ADT mean), not statistics of the query: the reference's own
    # cells, projected without the others, get their rows of the reference's uncorrected embedding.
    mm.pp.lsi_harmony(small, mods=[mod], n_comps=n_comps, harmony=False)
    cells = small.obs_names[np.random.default_rng(0).permutation(small.n_obs)[:40]]
    query = small[cells].copy()
    del query[mod].uns[KEY]
    mm.pp.lsi_harmony_transform(query, small, mods=[mod], harmony=False)
    expected = pd.DataFrame(small[mod].obsm[f"{KEY}_uncorrected"], index=small[mod].obs_names)
    np.testing.assert_allclose(query[mod].obsm[KEY], expected.loc[query[mod].obs_names].to_numpy(), atol=1e-5)
