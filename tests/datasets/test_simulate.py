from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mumatch as mm
from mumatch._layout import paired_names, unpaired_mask


def test_layout_and_counts():
    mdata = mm.datasets.simulate_paired(800, ("rna", "atac"), n_batches=3, n_genes=300, n_peaks=30000, seed=2)
    rna, atac = mdata["rna"], mdata["atac"]
    assert rna.shape == (800, 300) and atac.shape == (800, 30000)
    paired = paired_names(mdata, "rna", "atac")
    assert (rna.obs.loc[paired, "split"] == "train").all()
    assert 0.4 < paired.size / 800 < 0.6
    for adata in (rna, atac):
        assert sp.isspmatrix_csr(adata.layers["counts"]) and adata.X.dtype == np.float32
        assert np.array_equal(adata.X.data, np.round(adata.X.data)) and (adata.X.data > 0).all()
        assert adata.X.has_canonical_format
        assert set(adata.obs["batch"]) == {"batch0", "batch1", "batch2"}
    # with realistically many peaks ATAC is sparse and mostly binary; RNA libraries are around the requested mean
    assert np.mean(atac.X.data == 1) > 0.8
    assert 1000 < rna.X.sum(axis=1).mean() < 2200
    # the ground truth pairs each unpaired RNA cell with the same simulated cell in ATAC
    truth = mdata.obsp["match_true"].tocoo()
    assert truth.nnz == unpaired_mask(mdata, "rna", "atac").sum()
    names1, names2 = mdata.obs_names[truth.row], mdata.obs_names[truth.col]
    assert all(a.removeprefix("rna:") == b.removeprefix("atac:") for a, b in zip(names1, names2, strict=True))


def test_row_positions_do_not_reveal_the_partners():
    # Rows sorted by group and aligned across modalities put each unpaired cell's partner at its own row: a matcher
    # breaking ties by position would then look perfect on an embedding that carries nothing.
    mdata = mm.datasets.simulate_paired(400, ("rna", "atac"), n_genes=50, n_peaks=80, seed=0)
    for mod in mdata.mod:
        mdata[mod].obsm["X_constant"] = np.ones((mdata[mod].n_obs, 4), dtype=np.float32)
    mm.tl.match_ot(mdata, "rna", "atac", use_rep="X_constant", method="exact", key_added="ties")
    assert mm.metrics.match_score(mdata, key="ties", mod1="rna", mod2="atac") < 0.1
    rna_types = mdata["rna"].obs["cell_type"].to_numpy()
    assert (rna_types[:-1] == rna_types[1:]).mean() < 0.5  # not sorted by cell type


def test_shared_state_drives_both_modalities():
    mdata = mm.datasets.simulate_paired(600, ("rna", "adt"), n_genes=400, n_proteins=30, n_cell_types=4, seed=0)
    for mod in ("rna", "adt"):
        x = mdata[mod].X.toarray()
        x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
        types = mdata[mod].obs["cell_type"].to_numpy()
        centroids = np.stack([x[types == t].mean(0) for t in np.unique(types)])
        nearest = np.unique(types)[((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)]
        assert (nearest == types).mean() > 0.9


def test_three_modalities_and_determinism():
    first = mm.datasets.simulate_paired(300, ("rna", "atac", "adt"), n_genes=100, n_peaks=300, n_proteins=10, seed=5)
    again = mm.datasets.simulate_paired(300, ("rna", "atac", "adt"), n_genes=100, n_peaks=300, n_proteins=10, seed=5)
    other = mm.datasets.simulate_paired(300, ("rna", "atac", "adt"), n_genes=100, n_peaks=300, n_proteins=10, seed=6)
    assert set(first.mod) == {"rna", "atac", "adt"}
    for mod in first.mod:
        assert (first[mod].X != again[mod].X).nnz == 0
    assert (first["rna"].X != other["rna"].X).nnz > 0
    n_unpaired = unpaired_mask(first, "rna", ["atac", "adt"]).sum()
    assert first.obsp["match_true"].nnz == 3 * n_unpaired


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modalities": ("rna",)}, "two or three"),
        ({"modalities": ("rna", "hic")}, "two or three"),
        ({"paired_fraction": 1.5}, "paired_fraction"),
        ({"n_batches": 0}, "n_batches"),
        ({"n_genes": 0}, "n_genes"),
        ({"batch_effect": -1.0}, "batch_effect"),
        ({"batch_effect": "0.3"}, "batch_effect"),
        ({"paired_fraction": None}, "paired_fraction"),
        ({"seed": -1}, "seed"),
        ({"library_size": {"rna": -5.0}}, "library_size"),
        ({"library_size": 1000}, "library_size"),
        ({"pairing": {"rna+atac": 0.5}}, "sum to 1"),
        ({"pairing": {"rna+atac": -0.5, "rna+atac+adt": 1.5}}, "fraction >= 0"),
        ({"pairing": ["rna+atac"]}, "pairing must map"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mm.datasets.simulate_paired(100, **kwargs)
    with pytest.raises(KeyError, match="adt"):  # a modality that is not simulated
        mm.datasets.simulate_paired(100, library_size={"adt": 100.0})


def test_partial_pairing_of_three_modalities():
    options = {"n_genes": 30, "n_peaks": 60, "n_proteins": 8, "seed": 2}
    full = mm.datasets.simulate_paired(600, ("rna", "atac", "adt"), **options)
    pairing = {"rna+atac+adt": 0.5, "rna+atac": 0.3, "atac+adt": 0.2}
    partial = mm.datasets.simulate_paired(600, ("rna", "atac", "adt"), pairing=pairing, **options)
    paired = full["rna"].obs_names[full["rna"].obs["split"] == "train"]
    seen = pd.DataFrame({mod: paired.isin(partial[mod].obs_names) for mod in partial.mod}, index=paired)
    combos = seen.apply(lambda row: "+".join(mod for mod in partial.mod if row[mod]), axis=1).value_counts()
    assert set(combos.index) == set(pairing)  # every paired cell is in one of the combinations, in two or more
    for name, fraction in pairing.items():
        assert abs(combos[name] / len(paired) - fraction) < 0.1
    for mod in partial.mod:
        # The cells kept are those of the same seed without pairing, with the same counts; the truth is unchanged.
        kept = full[mod].obs_names.get_indexer(partial[mod].obs_names)
        assert (kept >= 0).all() and (full[mod].X[kept] != partial[mod].X).nnz == 0
        assert (partial[mod].layers["counts"] != partial[mod].X).nnz == 0
    assert partial.obsp["match_true"].nnz == full.obsp["match_true"].nnz
    assert partial.uns["simulation"]["params"]["pairing"] == pairing
    with pytest.raises(KeyError, match="pairing names 'rna'"):
        mm.datasets.simulate_paired(100, ("rna", "atac", "adt"), pairing={"rna": 1.0})
    with pytest.raises(KeyError, match=r"pairing names 'rna\+hic'"):
        mm.datasets.simulate_paired(100, ("rna", "atac", "adt"), pairing={"rna+hic": 1.0})


def test_every_argument_is_recorded():
    mdata = mm.datasets.simulate_paired(
        100, ("rna", "adt"), n_genes=40, n_proteins=7, library_size={"adt": 500.0}, seed=1
    )
    params = mdata.uns["simulation"]["params"]
    assert params["n_genes"] == 40 and params["n_proteins"] == 7 and "n_peaks" not in params
    assert params["library_size"] == {"rna": 1500.0, "adt": 500.0}


def test_pairing_that_leaves_a_modality_empty_is_refused():
    with pytest.raises(ValueError, match=r"leaves \['adt'\] without cells"):
        mm.datasets.simulate_paired(100, ("rna", "atac", "adt"), paired_fraction=1.0, pairing={"rna+atac": 1.0})
    # With unpaired cells the modality keeps those.
    mdata = mm.datasets.simulate_paired(100, ("rna", "atac", "adt"), pairing={"rna+atac": 1.0}, seed=1)
    assert (mdata["adt"].obs["split"] == "test").all() and mdata["adt"].n_obs > 0
