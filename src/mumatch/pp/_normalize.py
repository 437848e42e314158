"""Count normalisations with no AnnData in sight: TF-IDF for RNA/ATAC (LSI input) and CLR for ADT."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .._validate import check_counts

SCALE_FACTOR = 1e4  # log1p(x · 1e4) after TF-IDF and L1 normalisation, as in Seurat v3 and MatchCLOT's lsiTransformer
ROW_BLOCK = 4096  # cells transformed at a time (TF-IDF temporaries of a few tens of MB)
CHECK_CHUNK = 1 << 22  # entries checked or summed at a time: temporaries stay small on atlas-sized data


def as_csr(matrix: np.ndarray | sp.spmatrix) -> sp.csr_matrix:
    """``matrix`` as canonical CSR, without copying when it already is one (dense input is converted).

    A CSR matrix may store one entry in several pieces; the transforms act on stored values (``log1p`` of each piece
    is not ``log1p`` of their sum), so such a matrix is summed into a copy: the caller's matrix is not touched.
    """
    if sp.issparse(matrix):
        matrix = matrix if sp.isspmatrix_csr(matrix) else sp.csr_matrix(matrix)
        if not matrix.has_canonical_format:
            matrix = matrix.copy()
            matrix.sum_duplicates()
        return matrix
    return sp.csr_matrix(np.asarray(matrix))


def check_count_values(matrix: sp.csr_matrix, where: str, argument: str = "layer") -> None:
    """Raise unless the stored values are non-negative integers, checking in chunks to bound the temporaries."""
    values = matrix.data
    for start in range(0, values.size, CHECK_CHUNK):
        check_counts(values[start : start + CHECK_CHUNK], where, argument)


def inverse_document_frequency(counts: sp.csr_matrix) -> np.ndarray:
    """IDF of every feature: n_cells / feature total (Seurat v3), 0 for features with no counts.

    A feature never seen gets weight 0 instead of infinity, so it cannot bring NaN into a projection later.
    """
    # In chunks: np.bincount converts its whole input to int64 indices and float64 weights, temporaries four times
    # the size of the stored values (1.9 GB at 50k cells × 100k peaks, measured as the preprocessing's peak).
    totals = np.zeros(counts.shape[1], dtype=np.float64)
    for start in range(0, counts.nnz, CHECK_CHUNK):
        chunk = slice(start, start + CHECK_CHUNK)
        totals += np.bincount(counts.indices[chunk], weights=counts.data[chunk], minlength=counts.shape[1])
    idf = np.zeros(counts.shape[1], dtype=np.float64)
    seen = totals > 0
    idf[seen] = counts.shape[0] / totals[seen]
    return idf.astype(np.float32)


def tfidf_log1p(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """TF-IDF → L1 row normalisation → log1p(x · 1e4), computed on a copy of the stored values only.

    The term frequency (counts / cell total) cancels in the L1 normalisation that follows, so each entry is
    ``c_ij · idf_j / Σ_j c_ij · idf_j``: one pass over the non-zeros, in float32, in blocks of rows so that the
    temporaries stay small. The result shares ``indices`` and ``indptr`` with ``counts`` (neither is ever modified):
    the only new array is the values. Ecosystem implementations (muon's ``atac.pp.tfidf``, MatchCLOT's ``tfidf``)
    build several full-size float64 intermediates instead. Cells without counts stay all-zero rows.
    """
    values = np.empty(counts.nnz, dtype=np.float32)
    ones = np.ones(counts.shape[1], dtype=np.float32)
    for first in range(0, counts.shape[0], ROW_BLOCK):
        rows = counts.indptr[first : first + ROW_BLOCK + 1]
        begin, end = rows[0], rows[-1]
        block = np.multiply(counts.data[begin:end], idf[counts.indices[begin:end]], dtype=np.float32)
        row_sums = (
            sp.csr_matrix((block, counts.indices[begin:end], rows - begin), shape=(rows.size - 1, ones.size)) @ ones
        )
        row_sums[row_sums == 0] = 1  # cells without counts, or whose counts all fall on zero-IDF features
        block /= np.repeat(row_sums, np.diff(rows))
        block *= SCALE_FACTOR
        np.log1p(block, out=values[begin:end])
    return sp.csr_matrix((values, counts.indices, counts.indptr), shape=counts.shape, copy=False)


def clr(counts: sp.csr_matrix) -> np.ndarray:
    """Per-cell centred log-ratio of protein counts (muon's ``prot.pp.clr``, Seurat flavour, ``axis=1``), dense.

    muon works in place on ``.X``, so it gets a float32 copy in a throwaway AnnData. Cells with no counts give zeros.
    """
    from muon import prot  # muon takes seconds to import; only ADT needs it

    adata = ad.AnnData(X=counts.astype(np.float32, copy=True))
    prot.pp.clr(adata, axis=1)
    return np.asarray(adata.X.toarray() if sp.issparse(adata.X) else adata.X, dtype=np.float32)
