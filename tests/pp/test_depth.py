from __future__ import annotations

import anndata as ad
import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mumatch as mm
from tests.helpers import assert_unchanged, snapshot

KEY = "X_lsi_harmony_depth"


@pytest.fixture
def embedded(simulated):
    mm.pp.lsi_harmony(simulated)
    return simulated


def tiny() -> mudata.MuData:
    """Two modalities of 5 cells in two batches; RNA stores an explicit zero, which is not a detected feature."""
    rna = sp.csr_matrix(np.array([[1, 0, 3], [0, 0, 1], [4, 4, 4], [2, 0, 0], [0, 5, 1]], dtype=np.float32))
    rna.data[0] = 0.0  # cell 0: an explicit zero where it had 1 (total 3, one detected feature)
    adt = np.array([[10, 1], [5, 5], [0, 7], [3, 3], [9, 0]], dtype=np.float32)
    obs = pd.DataFrame({"batch": ["a", "a", "a", "b", "b"]}, index=[f"c{i}" for i in range(5)])
    mods = {}
    for name, counts, width in (("rna", rna, 3), ("adt", adt, 2)):
        adata = ad.AnnData(X=counts.copy(), obs=obs.copy())
        adata.var_names = [f"{name}{j}" for j in range(width)]
        adata.layers["counts"] = counts
        adata.obsm["rep"] = np.arange(10, dtype=np.float32).reshape(5, 2) * (1 if name == "rna" else 3)
        mods[name] = adata
    return mudata.MuData(mods)


def test_depth_columns_standardised_within_batches_and_scaled_to_the_representation():
    mdata = tiny()
    mm.pp.append_depth(mdata, use_rep="rep")
    out = mdata["rna"].obsm["rep_depth"]
    assert out.dtype == np.float32 and out.shape == (5, 4)
    np.testing.assert_array_equal(out[:, :2], mdata["rna"].obsm["rep"])
    totals = np.log1p([3, 1, 12, 2, 6])
    detected = np.log1p([1, 1, 3, 1, 2])
    scale = np.sqrt(mdata["rna"].obsm["rep"].var(axis=0).mean())
    for column, values in ((2, totals), (3, detected)):
        expected = np.empty(5)
        for rows in (slice(0, 3), slice(3, 5)):
            centred = values[rows] - values[rows].mean()
            sd = centred.std()
            expected[rows] = 0 if sd == 0 else centred / sd
        np.testing.assert_allclose(out[:, column], scale * expected, rtol=1e-5, atol=1e-6)
    params = mdata["rna"].uns["rep_depth"]["params"]
    assert params["use_rep"] == "rep" and params["within_batches"] and params["scale"] == pytest.approx(scale)


def test_defaults_on_lsi_harmony_carry_its_fit_and_leave_it_alone(embedded):
    before = {mod: embedded[mod].obsm["X_lsi_harmony"].copy() for mod in embedded.mod}
    assert mm.pp.append_depth(embedded) is None
    for mod, adata in embedded.mod.items():
        rep = before[mod]
        np.testing.assert_array_equal(adata.obsm["X_lsi_harmony"], rep)
        assert adata.obsm[KEY].shape == (adata.n_obs, rep.shape[1] + 2)
        depth = adata.obsm[KEY][:, -2:] / np.sqrt(rep.var(axis=0).mean())
        for batch in adata.obs["batch"].unique():
            rows = (adata.obs["batch"] == batch).to_numpy()
            np.testing.assert_allclose(depth[rows].mean(axis=0), 0, atol=1e-5)
            np.testing.assert_allclose(depth[rows].std(axis=0), 1, rtol=1e-4)
        assert adata.uns[KEY]["params"]["fit_id"] == adata.uns["X_lsi_harmony"]["params"]["fit_id"]


def test_a_model_trains_on_it_and_matching_refuses_the_per_modality_projection(embedded):
    mm.pp.append_depth(embedded)
    mm.tl.train_clip(embedded, "rna", "atac", use_rep=KEY, ensemble=None, max_epochs=2, progress_bar=False)
    assert embedded["rna"].obsm["X_clip"].shape[0] == embedded["rna"].n_obs
    with pytest.raises(ValueError, match="own projection"):
        mm.tl.match_ot(embedded, "rna", "atac", use_rep=KEY)


def test_batch_key_none_missing_labels_and_one_cell_batches():
    mdata = tiny()
    mm.pp.append_depth(mdata, use_rep="rep", batch_key=None)
    depth = mdata["adt"].obsm["rep_depth"][:, -2:]
    np.testing.assert_allclose(depth.mean(axis=0), 0, atol=1e-5)
    assert not mdata["adt"].uns["rep_depth"]["params"]["within_batches"]

    mdata = tiny()
    mdata["adt"].obs["batch"] = pd.Series([None, "a", "a", "b", "b"], index=mdata["adt"].obs_names, dtype=object)
    mm.pp.append_depth(mdata, use_rep="rep")
    assert not mdata["adt"].uns["rep_depth"]["params"]["within_batches"]
    assert mdata["rna"].uns["rep_depth"]["params"]["within_batches"]

    mdata = tiny()
    mdata["rna"].obs["batch"] = ["a", "a", "a", "a", "b"]  # batch b: one cell
    mm.pp.append_depth(mdata, use_rep="rep", mods=["rna"])
    out = mdata["rna"].obsm["rep_depth"]
    assert np.isfinite(out).all() and (out[4, -2:] == 0).all()
    assert "rep_depth" not in mdata["adt"].obsm


def test_copy_returns_a_new_object_and_leaves_the_caller_alone():
    mdata = tiny()
    before = snapshot(mdata)
    result = mm.pp.append_depth(mdata, use_rep="rep", key_added="with_depth", copy=True)
    assert_unchanged(before, mdata)
    assert result["rna"].obsm["with_depth"].shape == (5, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"use_rep": "missing"}, KeyError, "use_rep='missing' not found"),
        ({"use_rep": "rep", "layer": "raw"}, KeyError, "layer='raw' not found"),
        ({"use_rep": "rep", "layer": ["counts"]}, ValueError, "layer must be the name of one layer"),
        ({"use_rep": "rep", "key_added": "rep"}, ValueError, "would overwrite use_rep"),
        ({"use_rep": "rep", "batch_key": "donor"}, KeyError, "batch_key='donor'"),
        ({"use_rep": "rep", "mods": ["prot"]}, KeyError, "prot"),
        ({"use_rep": ["rep"]}, ValueError, "use_rep must be the name"),
        ({"use_rep": "rep", "copy": "yes"}, ValueError, "copy"),
    ],
)
def test_bad_arguments_raise_and_write_nothing(kwargs, error, message):
    mdata = tiny()
    before = snapshot(mdata)
    with pytest.raises(error, match=message):
        mm.pp.append_depth(mdata, **kwargs)
    assert_unchanged(before, mdata)


def test_non_count_data_raise_and_write_nothing():
    mdata = tiny()
    mdata["adt"].layers["counts"] = mdata["adt"].layers["counts"] / 3.0
    before = snapshot(mdata)
    with pytest.raises(ValueError, match="non-integer values"):
        mm.pp.append_depth(mdata, use_rep="rep")
    assert_unchanged(before, mdata)  # rna, processed first, was not written either
    with pytest.raises(TypeError):
        mm.pp.append_depth(mdata.mod["rna"], use_rep="rep")


def warnings_of(monkeypatch) -> list[str]:
    from scanpy import logging as logg

    messages: list[str] = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: messages.append(message))
    return messages


@pytest.mark.parametrize("form", ["csc", "dense", "int64"])
def test_every_layer_format_gives_the_same_columns(form):
    expected = tiny()
    mm.pp.append_depth(expected, use_rep="rep")
    mdata = tiny()
    counts = mdata["rna"].layers["counts"]
    counts.eliminate_zeros()  # a dense copy cannot keep the explicit zero; its value is 0 either way
    converted = {"csc": counts.tocsc(), "dense": counts.toarray(), "int64": counts.astype(np.int64)}[form]
    mdata["rna"].layers["counts"] = converted
    mm.pp.append_depth(mdata, use_rep="rep")
    np.testing.assert_array_equal(mdata["rna"].obsm["rep_depth"], expected["rna"].obsm["rep_depth"])


def test_unlabelled_cells_or_a_missing_column_standardise_over_all_cells_with_a_warning(monkeypatch):
    messages = warnings_of(monkeypatch)
    mdata = tiny()
    mdata["adt"].obs["batch"] = pd.Series([None, "a", "a", "b", "b"], index=mdata["adt"].obs_names, dtype=object)
    del mdata["rna"].obs["batch"]
    mm.pp.append_depth(mdata, use_rep="rep")
    assert any("1 of 5 cells of 'adt' have no 'batch' label" in message for message in messages)
    assert any("'rna' has no 'batch' column" in message for message in messages)
    for mod in ("rna", "adt"):
        depth = mdata[mod].obsm["rep_depth"][:, -2:] / mdata[mod].uns["rep_depth"]["params"]["scale"]
        np.testing.assert_allclose(depth.mean(axis=0), 0, atol=1e-6)
        np.testing.assert_allclose(depth.std(axis=0), 1, rtol=1e-5)


def test_key_added_may_not_replace_a_fitted_projection(embedded):
    before = snapshot(embedded)
    with pytest.raises(ValueError, match="names the fitted projection"):
        mm.pp.append_depth(embedded, use_rep="X_lsi_harmony_uncorrected", key_added="X_lsi_harmony")
    assert_unchanged(before, embedded)


def test_a_query_gets_the_reference_scale_and_a_saved_model_embeds_it(embedded, tmp_path):
    names = embedded["rna"].obs_names[:200]
    reference = mudata.MuData({mod: embedded[mod][embedded[mod].obs_names.isin(names)].copy() for mod in embedded.mod})
    query = mudata.MuData({mod: embedded[mod][~embedded[mod].obs_names.isin(names)].copy() for mod in embedded.mod})
    mm.pp.lsi_harmony(reference)
    mm.pp.append_depth(reference)
    (model,) = mm.tl.train_clip(reference, "rna", "atac", use_rep=KEY, ensemble=None, max_epochs=2, progress_bar=False)
    model.save(tmp_path / "clip")
    mm.pp.lsi_harmony_transform(query, reference)
    with pytest.raises(KeyError, match="mm.pp.lsi_harmony, then mm.pp.append_depth"):
        mm.model.CLIP.load(tmp_path / "clip", reference).get_latent_representation(query, "rna")
    with pytest.raises(KeyError, match="reference has no append_depth output 'other'"):
        mm.pp.append_depth(query, reference=reference, key_added="other")
    with pytest.raises(TypeError, match="'reference' must be a mudata.MuData"):
        mm.pp.append_depth(query, reference=reference["rna"])
    reference["atac"].uns["other"] = "not a record"
    with pytest.raises(KeyError, match="reference has no append_depth output 'other' for 'atac'"):
        mm.pp.append_depth(query, mods=["atac"], reference=reference, key_added="other")
    assert KEY not in query["rna"].obsm  # every refusal above wrote nothing
    mm.pp.append_depth(query, reference=reference)
    for mod in ("rna", "atac"):
        assert query[mod].uns[KEY]["params"]["scale"] == reference[mod].uns[KEY]["params"]["scale"]
        assert query[mod].uns[KEY]["params"]["fit_id"] == reference[mod].uns[KEY]["params"]["fit_id"]
    embedding = mm.model.CLIP.load(tmp_path / "clip", reference).get_latent_representation(query, "rna")
    assert embedding.shape == (query["rna"].n_obs, model.init_params["n_latent"])
    assert np.isfinite(embedding).all()


def test_clue_says_when_its_input_cut_leaves_the_depth_columns_out(embedded, monkeypatch):
    mm.pp.append_depth(embedded)
    messages = warnings_of(monkeypatch)
    mm.model.CLUE.setup_mudata(embedded, ["rna", "atac"], rep_key=KEY)
    mm.model.CLUE(embedded, n_input_comps=100)
    cut = [message for message in messages if "appended columns" in message]
    assert len(cut) == 2 and "leading 100 of" in cut[0]
    messages.clear()
    mm.model.CLUE(embedded, n_input_comps=None)
    assert not [message for message in messages if "appended columns" in message]


def test_the_pipeline_trains_clip_on_the_depth_columns(multiome):
    from mumatch._pipeline import CLIP_REP, run_pipeline

    run_pipeline(multiome, "rna", "atac", progress=False)
    assert multiome.uns["X_clip"]["params"]["use_rep"] == {"rna": CLIP_REP, "atac": CLIP_REP}
    assert multiome["atac"].uns[CLIP_REP]["params"]["within_batches"]  # the pipeline labels the test cells first
