from __future__ import annotations

import shutil

import anndata as ad
import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp

import mumatch as mm
from mumatch._layout import embed_block, extract_block, paired_names, split_index, unpaired_mask

TASKS = {"cite": ("rna", "adt"), "multiome": ("rna", "atac")}


@pytest.mark.parametrize("task", TASKS)
def test_layout_of_starter(data_root, task):
    folder = data_root / "neurips2021_starter" / task
    mdata = mm.datasets.read_neurips2021(folder)
    mod1, mod2 = TASKS[task]
    assert set(mdata.mod) == {mod1, mod2}
    train1 = ad.read_h5ad(folder / "train_mod1.h5ad")
    test1 = ad.read_h5ad(folder / "test_mod1.h5ad")
    test2 = ad.read_h5ad(folder / "test_mod2.h5ad")
    # training cells paired under mod1's names, test cells unpaired
    assert list(paired_names(mdata, mod1, mod2)) == list(train1.obs_names)
    assert mdata[mod1].n_obs == train1.n_obs + test1.n_obs
    assert (mdata[mod2].obs["split"] == "test").sum() == test2.n_obs
    assert not mdata[mod2].obs_names[mdata[mod2].obs["split"] == "test"].isin(mdata[mod1].obs_names).any()
    # counts kept raw, integer, float32 CSR
    counts = mdata[mod2].layers["counts"]
    assert sp.isspmatrix_csr(counts) and counts.dtype == np.float32
    assert np.array_equal(counts.data, np.round(counts.data))
    # the files' batch where they give it; test mod2 has none in the starter
    assert mdata[mod1].obs["batch"].notna().all()
    test2_batch = mdata[mod2].obs["batch"][(mdata[mod2].obs["split"] == "test").to_numpy()]
    assert test2_batch.isna().all()
    assert mdata[mod2].obs["batch"][(mdata[mod2].obs["split"] == "train").to_numpy()].notna().all()


@pytest.mark.parametrize("task", TASKS)
def test_train_pairing_follows_train_sol(data_root, task):
    folder = data_root / "neurips2021_starter" / task
    mdata = mm.datasets.read_neurips2021(folder)
    mod2 = TASKS[task][1]
    train2 = ad.read_h5ad(folder / "train_mod2.h5ad")
    pairing = sp.csr_matrix(ad.read_h5ad(folder / "train_sol.h5ad").X).indices
    train_cells = (mdata[mod2].obs["split"] == "train").to_numpy()
    ours = mdata[mod2].layers["counts"][train_cells]
    assert abs(ours - sp.csr_matrix(train2.layers["counts"])[pairing]).sum() == 0
    # the full files hold the same cells under mod1's names: the pairing must agree with them
    full = ad.read_h5ad(folder / "full_mod2.h5ad")
    names = mdata[mod2].obs_names[train_cells]
    assert abs(ours - sp.csr_matrix(full[names].layers["counts"])).sum() == 0


@pytest.mark.parametrize("task", TASKS)
def test_match_true_reproduces_test_sol(data_root, task):
    folder = data_root / "neurips2021_starter" / task
    mdata = mm.datasets.read_neurips2021(folder)
    mod1, mod2 = TASKS[task]
    truth = extract_block(
        mdata, mdata.obsp["match_true"], mod1, mod2, split_index(mdata, mod1), split_index(mdata, mod2)
    )
    solution = sp.csr_matrix(ad.read_h5ad(folder / "test_sol.h5ad").X)
    assert abs(truth - solution).sum() == 0
    # a prediction equal to the truth scores perfectly
    mdata.obsp["perfect"] = mdata.obsp["match_true"]
    assert mm.metrics.match_score(mdata, key="perfect") == 1.0


@pytest.mark.parametrize("task", TASKS)
def test_bundled_equals_reader(data_root, task):
    read = mm.datasets.read_neurips2021(data_root / "neurips2021_starter" / task)
    bundled = mm.datasets.bmmc_starter(task)
    assert list(read.obs_names) == list(bundled.obs_names)
    assert abs(read.obsp["match_true"] - bundled.obsp["match_true"]).sum() == 0
    for mod in read.mod:
        assert read[mod].obs.equals(bundled[mod].obs)
        assert abs(read[mod].layers["counts"] - bundled[mod].layers["counts"]).sum() == 0
        assert abs(read[mod].X - bundled[mod].X).sum() == 0


def test_cell_types_of_test_mod2_follow_the_truth(data_root):
    mdata = mm.datasets.read_neurips2021(data_root / "neurips2021_starter" / "cite")
    truth = mdata.obsp["match_true"].tocoo()
    names = mdata.obs_names
    type1 = mdata["rna"].obs["cell_type"].reindex(names[truth.row]).to_numpy()
    type2 = mdata["adt"].obs["cell_type"].reindex(names[truth.col]).to_numpy()
    assert (type1 == type2).all()
    assert mdata["rna"].obs["cell_type"].notna().all()


def test_h5mu_round_trip_with_plan(data_root, tmp_path):
    mdata = mm.datasets.read_neurips2021(data_root / "neurips2021_starter" / "multiome")
    rng = np.random.default_rng(0)
    plan = sp.random(mdata.n_obs, mdata.n_obs, density=0.01, random_state=rng, format="csr", dtype=np.float32)
    mdata.obsp["match"] = plan
    mdata.write_h5mu(tmp_path / "x.h5mu")
    back = md.read_h5mu(tmp_path / "x.h5mu")
    assert list(back.obs_names) == list(mdata.obs_names)
    assert abs(back.obsp["match"] - plan).sum() == 0
    assert abs(back.obsp["match_true"] - mdata.obsp["match_true"]).sum() == 0
    for mod in mdata.mod:
        assert back[mod].obs.equals(mdata[mod].obs)


def test_write_prediction(multiome, tmp_path):
    rng = np.random.default_rng(0)
    index1, index2 = split_index(multiome, "rna"), split_index(multiome, "atac")
    block = sp.csr_matrix(rng.random((index1.size, index2.size)).astype(np.float32))
    multiome.obsp["match"] = embed_block(multiome, "rna", "atac", block, index1, index2)
    mm.datasets.write_prediction(multiome, "match", tmp_path / "prediction.h5ad")
    prediction = ad.read_h5ad(tmp_path / "prediction.h5ad")
    assert prediction.shape == (index1.size, index2.size)
    assert sp.issparse(prediction.X)
    assert np.diff(sp.csr_matrix(prediction.X).indptr).max() <= 1000
    assert list(prediction.obs_names) == list(multiome["rna"].obs["original_name"].iloc[index1])
    assert list(prediction.var_names) == [str(i) for i in range(index2.size)]
    # with fewer than 1000 columns nothing is cut
    assert np.allclose(prediction.X.toarray(), block.toarray())
    with pytest.raises(KeyError, match="mod2='protein'"):
        mm.datasets.prediction_matrix(multiome, "match", mod2="protein")


def test_write_prediction_refuses_an_empty_submission(multiome, tmp_path):
    # The truth is stored with the rna cells along its rows and has no record: asked for atac → rna it is empty there.
    with pytest.raises(ValueError, match="no weight from a test cell of 'atac' to a test cell of 'rna'"):
        mm.datasets.write_prediction(multiome, "match_true", tmp_path / "p.h5ad", mod1="atac", mod2="rna")
    assert not (tmp_path / "p.h5ad").exists()


def test_write_prediction_keeps_top_1000_per_row(tmp_path):
    mdata = mm.datasets.simulate_paired(2300, ("rna", "adt"), n_genes=50, n_proteins=5, paired_fraction=0.0)
    index1 = np.flatnonzero(unpaired_mask(mdata, "rna", "adt"))
    index2 = np.flatnonzero(unpaired_mask(mdata, "adt", "rna"))
    rng = np.random.default_rng(1)
    block = rng.random((5, index2.size)).astype(np.float32)
    full = np.zeros((index1.size, index2.size), dtype=np.float32)
    full[:5] = block
    mdata.obsp["match"] = embed_block(mdata, "rna", "adt", sp.csr_matrix(full), index1, index2)
    with pytest.raises(KeyError, match="original_name"):  # not read with read_neurips2021
        mm.datasets.write_prediction(mdata, "match", tmp_path / "p.h5ad", mod1="rna", mod2="adt")
    with pytest.raises(ValueError, match="must differ"):
        mm.datasets.write_prediction(mdata, "match", tmp_path / "p.h5ad", mod1="rna", mod2="rna")
    mdata.mod["rna"].obs["original_name"] = mdata["rna"].obs_names
    mdata.mod["adt"].obs["original_name"] = mdata["adt"].obs_names
    mm.datasets.write_prediction(mdata, "match", tmp_path / "p.h5ad", mod1="rna", mod2="adt")
    written = sp.csr_matrix(ad.read_h5ad(tmp_path / "p.h5ad").X)
    assert np.diff(written.indptr)[:5].tolist() == [1000] * 5
    kept = written[0].toarray().ravel()
    assert kept[kept > 0].min() >= np.sort(block[0])[-1000]


def _copy_folder(data_root, tmp_path, task="cite"):
    folder = tmp_path / task
    shutil.copytree(data_root / "neurips2021_starter" / task, folder)
    return folder


def test_prediction_of_a_one_modality_mudata_names_the_missing_argument(multiome, tmp_path):
    # One modality and no recorded task: there is no default mod2, which the error must say (not an IndexError).
    one = md.MuData({"rna": multiome["rna"].copy()})
    one.obsp["match"] = sp.identity(one.n_obs, format="csr", dtype=np.float32)
    with pytest.raises(KeyError, match="mod2=None"):
        mm.datasets.prediction_matrix(one, "match")
    with pytest.raises(KeyError, match="mod2=None"):
        mm.datasets.write_prediction(one, "match", tmp_path / "p.h5ad", mod1="rna")
    assert not (tmp_path / "p.h5ad").exists()


def test_read_files_refuses_a_folder_for_the_mapping(data_root):
    # A folder given to the function that reads the files one by one: say which reader takes a folder.
    with pytest.raises(ValueError, match="read_neurips2021"):
        mm.datasets.read_neurips2021_files(str(data_root / "neurips2021_starter" / "cite"))


def test_missing_file(data_root, tmp_path):
    folder = _copy_folder(data_root, tmp_path)
    (folder / "train_sol.h5ad").unlink()
    with pytest.raises(FileNotFoundError, match="train_sol"):
        mm.datasets.read_neurips2021(folder)


def test_different_train_sizes(data_root, tmp_path):
    folder = _copy_folder(data_root, tmp_path)
    train2 = ad.read_h5ad(folder / "train_mod2.h5ad")
    train2[:-1].copy().write_h5ad(folder / "train_mod2.h5ad")
    with pytest.raises(ValueError, match="training cells must be paired"):
        mm.datasets.read_neurips2021(folder)


def test_train_sol_not_a_permutation(data_root, tmp_path):
    folder = _copy_folder(data_root, tmp_path)
    solution = ad.read_h5ad(folder / "train_sol.h5ad")
    matrix = sp.lil_matrix(solution.shape, dtype=np.float32)
    matrix[:, 0] = 1  # every row paired with the same column
    solution.X = sp.csr_matrix(matrix)
    solution.write_h5ad(folder / "train_sol.h5ad")
    with pytest.raises(ValueError, match="permutation"):
        mm.datasets.read_neurips2021(folder)


def test_unknown_feature_types(data_root, tmp_path):
    folder = _copy_folder(data_root, tmp_path)
    train2 = ad.read_h5ad(folder / "train_mod2.h5ad")
    train2.var["feature_types"] = "Methylation"
    train2.write_h5ad(folder / "train_mod2.h5ad")
    with pytest.raises(ValueError, match=r"train_mod2: var\['feature_types'\] holds \['Methylation'\].*same assay"):
        mm.datasets.read_neurips2021(folder)


def test_mixed_feature_types_in_one_file_are_refused(data_root, tmp_path):
    folder = _copy_folder(data_root, tmp_path)
    train2 = ad.read_h5ad(folder / "train_mod2.h5ad")
    train2.var["feature_types"] = ["ADT"] * (train2.n_vars - 1) + ["GEX"]
    train2.write_h5ad(folder / "train_mod2.h5ad")
    with pytest.raises(ValueError, match="every feature of a file must name the same assay"):
        mm.datasets.read_neurips2021(folder)


def test_feature_types_of_10x_and_muon_in_any_case(data_root, tmp_path):
    # The reader names modalities as the rest of the package reads assays (10x's names, lower case, spaces).
    folder = _copy_folder(data_root, tmp_path)
    for part, kind in [("train_mod1", "Gene Expression"), ("test_mod1", "gex"), ("train_mod2", "Antibody Capture "),
                       ("test_mod2", "adt")]:  # fmt: skip
        adata = ad.read_h5ad(folder / f"{part}.h5ad")
        adata.var["feature_types"] = kind
        adata.write_h5ad(folder / f"{part}.h5ad")
    mdata = mm.datasets.read_neurips2021(folder)
    assert list(mdata.mod) == ["rna", "adt"]


def test_non_integer_counts(data_root, tmp_path):
    folder = _copy_folder(data_root, tmp_path)
    test1 = ad.read_h5ad(folder / "test_mod1.h5ad")
    test1.layers["counts"] = test1.layers["counts"] * 0.5
    test1.write_h5ad(folder / "test_mod1.h5ad")
    with pytest.raises(ValueError, match="non-integer.*store the raw counts in test_mod1's layers"):
        mm.datasets.read_neurips2021(folder)


@pytest.mark.parametrize("axis", ["rows", "columns"])
def test_solution_in_another_order_follows_its_names(data_root, tmp_path, axis):
    # The rows of a solution file name the mod1 cells, its columns may name the mod2 file's cells: shuffled (with
    # their names) they are the same pairing.
    reference = mm.datasets.read_neurips2021(data_root / "neurips2021_starter" / "multiome")
    folder = _copy_folder(data_root, tmp_path, task="multiome")
    order = np.random.default_rng(0).permutation
    for part in ("train_sol", "test_sol"):
        solution = ad.read_h5ad(folder / f"{part}.h5ad")
        if axis == "rows":
            solution = solution[order(solution.n_obs)]
        else:
            solution.var_names = ad.read_h5ad(folder / f"{part.replace('sol', 'mod2')}.h5ad").obs_names
            solution = solution[:, order(solution.n_vars)]
        solution.copy().write_h5ad(folder / f"{part}.h5ad")
    shuffled = mm.datasets.read_neurips2021(folder)
    assert abs(shuffled["atac"].layers["counts"] - reference["atac"].layers["counts"]).sum() == 0
    assert abs(shuffled.obsp["match_true"] - reference.obsp["match_true"]).sum() == 0


def test_unequal_test_sets_with_their_solution(data_root, tmp_path):
    # Fewer test cells of mod1 than of mod2: the ground truth pairs each mod1 cell with one mod2 cell.
    reference = mm.datasets.read_neurips2021(data_root / "neurips2021_starter" / "cite")
    folder = _copy_folder(data_root, tmp_path)
    for part in ("test_mod1", "test_sol"):
        adata = ad.read_h5ad(folder / f"{part}.h5ad")
        adata[10:].copy().write_h5ad(folder / f"{part}.h5ad")
    mdata = mm.datasets.read_neurips2021(folder)
    truth = mdata.obsp["match_true"]
    assert truth.nnz == reference.obsp["match_true"].nnz - 10
    kept = mdata.obs_names[truth.nonzero()[0]]
    assert abs(reference.obsp["match_true"][reference.obs_names.get_indexer(kept)].sum() - truth.nnz) == 0
    # mod2 cells that the truth pairs with no mod1 cell have no cell type
    test2 = (mdata["adt"].obs["split"] == "test").to_numpy()
    assert mdata["adt"].obs["cell_type"][test2].isna().sum() == 10
    solution = ad.read_h5ad(folder / "test_sol.h5ad")
    solution[:, :-1].copy().write_h5ad(folder / "test_sol.h5ad")
    with pytest.raises(ValueError, match=r"test_sol has shape \(279, 288\), expected \(279, 289\)"):
        mm.datasets.read_neurips2021(folder)


def test_whole_number_batches_are_named_alike_in_every_file(data_root, tmp_path):
    # An integer batch column in one file and a float one (an integer column that gained a NaN) in another name
    # the same batches: 2 and 2.0 are batch '2', and matching finds both modalities in it.
    folder = _copy_folder(data_root, tmp_path)
    for part in ("train_mod1", "test_mod1"):
        adata = ad.read_h5ad(folder / f"{part}.h5ad")
        adata.obs["batch"] = adata.obs["batch"].map({"s1d1": 1, "s1d2": 2}).astype(int)
        adata.write_h5ad(folder / f"{part}.h5ad")
    test2 = ad.read_h5ad(folder / "test_mod2.h5ad")
    test2.obs["batch"] = 2.0
    test2.obs.iloc[0, test2.obs.columns.get_loc("batch")] = np.nan
    test2.write_h5ad(folder / "test_mod2.h5ad")
    mdata = mm.datasets.read_neurips2021(folder)
    assert set(mdata["rna"].obs["batch"].cat.categories) == {"1", "2"}
    assert set(mdata["adt"].obs["batch"].cat.categories) == {"1", "2"}
    assert mdata["adt"].obs["batch"].isna().sum() == 1
    for mod in mdata.mod:
        mdata[mod].obsm["X_e"] = np.random.default_rng(0).normal(size=(mdata[mod].n_obs, 4))
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_e")
    solved = [block for block in mdata.uns["match"]["blocks"].values() if block["status"] == "solved"]
    assert [(block["name"], block["n_cells2"]) for block in solved] == [("2", 288)]


def test_training_batch_from_the_mod2_file(data_root, tmp_path):
    reference = mm.datasets.read_neurips2021(data_root / "neurips2021_starter" / "multiome")
    folder = _copy_folder(data_root, tmp_path, task="multiome")
    # The batch moves from the mod1 file to the mod2 file (the starter's training cells are all from s1d1).
    train1 = ad.read_h5ad(folder / "train_mod1.h5ad")
    assert (train1.obs["batch"] == "s1d1").all()
    del train1.obs["batch"]
    train1.write_h5ad(folder / "train_mod1.h5ad")
    train2 = ad.read_h5ad(folder / "train_mod2.h5ad")
    train2.obs["batch"] = "s1d1"
    train2.write_h5ad(folder / "train_mod2.h5ad")
    mdata = mm.datasets.read_neurips2021(folder)
    for mod in ("rna", "atac"):
        train = (mdata[mod].obs["split"] == "train").to_numpy()
        assert mdata[mod].obs["batch"][train].notna().all()
        assert (mdata[mod].obs["batch"].astype(str) == reference[mod].obs["batch"].astype(str)).all()


def test_file_prefix(data_root, tmp_path):
    folder = data_root / "neurips2021_starter" / "multiome"
    for file in folder.glob("*.h5ad"):
        shutil.copy(file, tmp_path / f"task_{file.name}")
    by_prefix = mm.datasets.read_neurips2021(f"{tmp_path}/task_")
    assert list(by_prefix.obs_names) == list(mm.datasets.read_neurips2021(folder).obs_names)


def test_repeated_cell_names_are_refused(data_root, tmp_path):
    folder = _copy_folder(data_root, tmp_path)
    test1 = ad.read_h5ad(folder / "test_mod1.h5ad")
    test1.obs_names = [test1.obs_names[0]] * 2 + list(test1.obs_names[2:])
    test1.write_h5ad(folder / "test_mod1.h5ad")
    with pytest.raises(ValueError, match="test_mod1 names several cells alike"):
        mm.datasets.read_neurips2021(folder)


def test_test_features_in_another_order_are_aligned_by_name(data_root, tmp_path):
    folder = _copy_folder(data_root, tmp_path)
    original = mm.datasets.read_neurips2021(folder)
    test1 = ad.read_h5ad(folder / "test_mod1.h5ad")
    test1[:, test1.var_names[::-1]].copy().write_h5ad(folder / "test_mod1.h5ad")
    aligned = mm.datasets.read_neurips2021(folder)
    mod1 = original.uns["neurips2021"]["mod1"]
    assert aligned[mod1].var_names.equals(original[mod1].var_names)
    assert (aligned[mod1].layers["counts"] != original[mod1].layers["counts"]).nnz == 0
    test1 = ad.read_h5ad(folder / "test_mod1.h5ad")
    test1[:, 1:].copy().write_h5ad(folder / "test_mod1.h5ad")  # a feature fewer: not the same modality's files
    with pytest.raises(ValueError, match="train_mod1 and test_mod1 have different features"):
        mm.datasets.read_neurips2021(folder)
