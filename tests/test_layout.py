"""Placing block matrices into a matrix over ``mdata.obs_names``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mumatch._layout import MISSING_BATCH, batch_blocks, batch_labels, embed_block, embed_blocks, obs_positions


def coo_embedding(mdata, mod1, mod2, blocks) -> sp.csr_matrix:
    """The reference: every block's entries at their cells' positions, one COO matrix summing repeats."""
    rows, cols, data = [], [], []
    for matrix, index1, index2 in blocks:
        coo = sp.coo_matrix(matrix)
        rows.append(obs_positions(mdata, mod1)[index1][coo.row])
        cols.append(obs_positions(mdata, mod2)[index2][coo.col])
        data.append(coo.data)
    shape = (mdata.n_obs, mdata.n_obs)
    return sp.csr_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=shape)


def test_embed_blocks_places_and_sums_like_one_coo_matrix(simulated):
    rng = np.random.default_rng(0)
    n1, n2 = simulated["rna"].n_obs, simulated["atac"].n_obs
    blocks = []
    for size in (5, 40, 1, 40):  # the last block overlaps the second one: its entries add up
        index1 = np.sort(rng.choice(n1, size, replace=False))
        index2 = np.sort(rng.choice(n2, size + 3, replace=False))
        matrix = sp.random(size, size + 3, density=0.3, format="csr", dtype=np.float32, random_state=rng)
        blocks.append((matrix, index1, index2))
    blocks[3] = (blocks[3][0], blocks[1][1], blocks[1][2])
    # A cell named twice in one block, a dense block and an empty one.
    blocks.append((np.array([[1.0, 0.0], [2.0, 3.0]], dtype=np.float32), np.array([7, 7]), np.array([2, 9])))
    blocks.append((sp.csr_matrix((3, 2), dtype=np.float32), np.arange(3), np.arange(2)))
    embedded = embed_blocks(simulated, "rna", "atac", blocks)
    expected = coo_embedding(simulated, "rna", "atac", blocks)
    assert embedded.has_canonical_format and embedded.dtype == np.float32
    np.testing.assert_array_equal(embedded.indptr, expected.indptr)
    np.testing.assert_array_equal(embedded.indices, expected.indices)
    np.testing.assert_array_equal(embedded.data, expected.data)


def test_embed_block_is_embed_blocks_of_one(simulated):
    block = sp.csr_matrix(np.array([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]]))
    index1, index2 = np.array([3, 1]), np.array([0, 10, 20])
    embedded = embed_block(simulated, "rna", "atac", block, index1, index2)
    expected = coo_embedding(simulated, "rna", "atac", [(block, index1, index2)])
    assert (embedded != expected).nnz == 0 and embedded.dtype == np.float64
    assert embed_blocks(simulated, "rna", "atac", []).nnz == 0


def test_batch_blocks_hold_the_cells_of_each_level_in_order(simulated):
    rng = np.random.default_rng(1)
    for mod in ("rna", "atac"):
        # 40 levels, some found on one side only, and cells without a label among labelled ones.
        levels = rng.integers(0, 40 if mod == "rna" else 45, simulated[mod].n_obs).astype(object)
        levels[rng.random(levels.size) < 0.05] = np.nan
        simulated[mod].obs["b"] = levels
    masks = [rng.random(simulated[mod].n_obs) < 0.7 for mod in ("rna", "atac")]
    blocks, _ = batch_blocks(simulated, "rna", "atac", *masks, "b")
    # The reference: each level's cells picked by comparing every cell's label with it.
    values = [
        batch_labels(simulated, mod, "b").to_numpy()[np.flatnonzero(mask)]
        for mod, mask in zip(("rna", "atac"), masks, strict=True)
    ]
    labelled = [side[side != MISSING_BATCH] for side in values]
    levels = [str(level) for level in pd.unique(np.concatenate(labelled))] + [MISSING_BATCH]
    assert [block.name for block in blocks] == levels and len(levels) > 40
    for block in blocks:
        for index, side, mask in ((block.index1, values[0], masks[0]), (block.index2, values[1], masks[1])):
            np.testing.assert_array_equal(index, np.flatnonzero(mask)[side == block.name])


def test_embed_blocks_refuses_cells_missing_from_obs_names(simulated):
    stale = simulated.copy()
    names = stale["rna"].obs_names.to_numpy().copy()
    names[0] = "renamed0"
    stale.mod["rna"].obs_names = names  # without mdata.update(): obs_names lacks 'renamed0'
    block = (sp.csr_matrix(np.ones((2, 2))), np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"mdata\.update\(\)"):
        embed_blocks(stale, "rna", "atac", [block])
