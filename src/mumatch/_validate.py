"""Shared input checks that raise clear errors naming the argument and the fix.

Every check only reads its inputs, so a public function that runs its checks first leaves the caller's data
untouched when one fails.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData

# The plain checks live in _checks (numpy only, for mumatch.ot); importers of _validate find them here too.
from ._checks import check_int as check_int
from ._checks import check_positive as check_positive
from ._checks import is_number as is_number

# Where the models record their setup in ``mdata.uns`` (see mumatch.model); no output may be written under it.
SETUP_KEY = "_mumatch_setup"
# The function that writes each default embedding, named when an embedding is missing.
REP_PRODUCERS = {
    "X_lsi_harmony": "mm.pp.lsi_harmony",
    "X_lsi_harmony_depth": "mm.pp.lsi_harmony, then mm.pp.append_depth",
    "X_clip": "mm.tl.train_clip",
    "X_clue": "mm.tl.train_clue",
}
# The batch column of the data layout: when no modality has it, the data have no batches.
DEFAULT_BATCH_KEY = "batch"
# Columns listed in a message about a missing one.
LISTED_COLUMNS = 20


def check_mudata(mdata: object, argument: str = "mdata") -> MuData:
    """Raise unless ``mdata`` is a MuData."""
    if not isinstance(mdata, MuData):
        raise TypeError(f"'{argument}' must be a mudata.MuData, got {type(mdata).__name__}")
    return mdata


def check_copy(mdata: MuData, copy: object) -> None:
    """Raise unless ``copy`` is a bool that mudata can honour (a backed MuData is copied only to a new file)."""
    if not isinstance(copy, bool | np.bool_):
        raise ValueError(f"copy must be True or False, got {copy!r}")
    if copy and mdata.isbacked:
        raise ValueError(
            "copy=True cannot copy a MuData read with backed=True (mudata copies it only to a new file): load it "
            "with mdata = mdata.to_memory() first, or leave copy=False to write into this object"
        )


def check_key_added(key_added: object, argument: str = "key_added") -> str:
    """Raise unless ``key_added`` can name an output: a non-empty string without '/', not the models' setup key."""
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"{argument} must be a non-empty string, got {key_added!r}")
    if "/" in key_added:
        # An .h5mu file would store it as nested groups that cannot be read back as one entry.
        raise ValueError(f"{argument}={key_added!r} must not contain '/'; choose another name")
    if key_added == SETUP_KEY:
        raise ValueError(f"{argument}={key_added!r} is where the models record their setup; choose another name")
    return key_added


def obs_column(mdata: MuData, mod: str, key: str) -> pd.Series | None:
    """Column ``key`` for the cells of modality ``mod``: its own ``.obs[key]``, else the MuData's ``mdata.obs[key]``.

    muon users keep sample-level columns (batch, donor) in the MuData's own ``.obs``: its rows for the modality's cells
    are read then. None when neither has the column. A cell missing from ``mdata.obs_names`` (a modality changed
    without ``mdata.update()``) raises a ValueError.
    """
    obs = mdata[mod].obs
    if key in obs:
        return obs[key]
    if key not in mdata.obs.columns:
        return None
    if not mdata.obs_names.is_unique:
        raise ValueError(
            f"mdata.obs_names repeats names, so mdata.obs['{key}'] cannot be read cell by cell for '{mod}'; make "
            "the names unique (e.g. mdata.obs_names_make_unique()) or put the column in each modality's .obs"
        )
    missing = obs.index[~obs.index.isin(mdata.obs_names)]
    if len(missing):
        # Read as missing labels they would silently drop the cells from their batch (and from Harmony).
        raise ValueError(
            f"{len(missing)} cells of mdata['{mod}'] (e.g. {missing[0]!r}) are missing from mdata.obs_names, so "
            f"mdata.obs['{key}'] has no row for them (the modality changed without mdata.update()); run "
            f"mdata.update() and fill mdata.obs['{key}'] for those cells, or put the column in mdata['{mod}'].obs"
        )
    return mdata.obs[key].reindex(obs.index)


def check_batch_key(mdata: MuData, mods: Sequence[str], batch_key: object) -> bool:
    """Whether ``batch_key`` (a column name or None) is a column of some modality's ``.obs`` (or of ``mdata.obs``).

    A column that no modality has is a misspelling, and raises a KeyError, unless it is the default
    :data:`DEFAULT_BATCH_KEY`: data without batches is common and works with the defaults.
    """
    if batch_key is None:
        return False
    if not isinstance(batch_key, str):
        raise ValueError(f"batch_key must be a column name or None, got {batch_key!r}")
    if any(obs_column(mdata, mod, batch_key) is not None for mod in mods):
        return True
    if batch_key == DEFAULT_BATCH_KEY:
        return False
    raise KeyError(
        f"batch_key={batch_key!r} is not a column of mdata.obs or of the .obs of any of {list(mods)}; pass an "
        "existing column, or batch_key=None when there are no batches"
    )


def check_mod(mdata: MuData, mod: str, argument: str = "mod") -> str:
    """Raise a KeyError unless ``mod`` is a modality of ``mdata``."""
    if not isinstance(mod, str) or mod not in mdata.mod:
        raise KeyError(f"{argument}={mod!r} is not a modality of mdata; choose one of {list(mdata.mod)}")
    return mod


def check_obs_names(mdata: MuData, mod: str, *, in_mudata: bool = True) -> None:
    """Raise unless modality ``mod``'s obs names are unique and (``in_mudata``) all present in ``mdata.obs_names``.

    Cells are identified by their obs name across modalities (a paired cell has the same name in each), so a name
    used twice within a modality, or a modality renamed without ``mdata.update()``, would silently mix cells up.
    What writes only to the modalities themselves (``.obsm``) needs unique names, not the MuData's.
    """
    names = mdata[mod].obs_names
    if not names.is_unique:
        repeated = names[names.duplicated()].unique()[:3].tolist()
        raise ValueError(
            f"mdata['{mod}'].obs_names repeats names (e.g. {repeated}); a cell is identified by its name, so make them "
            f"unique (mdata['{mod}'].obs_names_make_unique(), then mdata.update())"
        )
    if in_mudata and not mdata.obs_names.is_unique:
        # Another modality's repeated names repeat in the MuData's, where the plans and labels are indexed.
        repeating = [other for other in mdata.mod if not mdata[other].obs_names.is_unique]
        where = f"mdata['{repeating[0]}'].obs_names" if repeating else "mdata.obs_names"
        raise ValueError(
            f"{where} repeats names; a cell is identified by its name, so make them unique "
            f"({where}_make_unique(), then mdata.update())"
        )
    if in_mudata and (mdata.obs_names.get_indexer(names) < 0).any():
        raise ValueError(
            f"mdata['{mod}'] has cells missing from mdata.obs_names (modified after the MuData was built); run "
            "mdata.update() first"
        )


def check_mods(mdata: MuData, mods: Sequence[str] | str | None, argument: str = "mods") -> list[str]:
    """Resolve ``mods`` (None means all modalities) and check each name."""
    if mods is None:
        return list(mdata.mod)
    names = [mods] if isinstance(mods, str) else list(mods)
    if not names:
        raise ValueError(f"'{argument}' is empty; pass None to use every modality")
    if len(set(names)) != len(names):
        raise ValueError(f"'{argument}' repeats a modality: {names}")
    for name in names:
        check_mod(mdata, name, argument)
    return names


def check_rep(mdata: MuData, mod: str, rep: str, argument: str = "use_rep") -> np.ndarray:
    """Return ``mdata[mod].obsm[rep]`` as a dense float array, raising when missing or not finite."""
    if rep not in mdata[mod].obsm:
        producer = REP_PRODUCERS.get(rep, "mm.pp.lsi_harmony, mm.tl.train_clip or mm.tl.train_clue")
        raise KeyError(
            f"{argument}={rep!r} not found in mdata['{mod}'].obsm (it has {list(mdata[mod].obsm)}); "
            f"compute it first, with {producer}"
        )
    values = mdata[mod].obsm[rep]
    values = values.toarray() if sp.issparse(values) else np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"mdata['{mod}'].obsm['{rep}'] must be a 2-d array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"mdata['{mod}'].obsm['{rep}'] contains NaN or infinite values; recompute the embedding")
    return values


def check_layer(mdata: MuData, mod: str, layer: str | None, argument: str = "layer") -> np.ndarray | sp.spmatrix:
    """Return the matrix of ``layer`` (``.X`` when None) of modality ``mod``, in memory.

    A MuData read with ``backed=True`` keeps ``.X`` on disk (anndata's sparse dataset, or an h5py dataset when dense):
    it is read, so that every caller gets a numpy array or a scipy sparse matrix.
    """
    adata = mdata[mod]
    if layer is not None and not isinstance(layer, str):
        raise ValueError(
            f"{argument} must be the name of one layer of mdata['{mod}'].layers (a string) or None for .X, "
            f"got {type(layer).__name__} {layer!r}"
        )
    if layer is None:
        matrix = adata.X
    elif layer not in adata.layers:
        raise KeyError(
            f"{argument}={layer!r} not found in mdata['{mod}'].layers (it has {list(adata.layers)}); "
            f"pass {argument}=None to use .X"
        )
    else:
        matrix = adata.layers[layer]
    if matrix is None or sp.issparse(matrix) or isinstance(matrix, np.ndarray):
        return matrix
    if hasattr(matrix, "to_memory"):
        return matrix.to_memory()
    return np.asarray(matrix)


def check_counts(
    matrix: np.ndarray | sp.spmatrix, where: str, argument: str = "layer", remedy: str | None = None
) -> None:
    """Raise unless ``matrix`` holds non-negative integers (raw counts).

    The message says what to do: choose another ``argument=`` (a layer with raw counts), or ``remedy`` when given.
    """
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if values.size == 0:
        return
    other = remedy or f"choose another {argument}="
    if not np.isfinite(values).all():
        raise ValueError(f"{where} contains NaN or infinite values; raw counts are expected ({other})")
    if (values < 0).any():
        raise ValueError(f"{where} contains negative values; raw counts are expected ({other})")
    if not np.array_equal(values, np.round(values)):
        naming = remedy or f"pass {argument}= naming the layer with raw counts, e.g. {argument}='counts'"
        raise ValueError(
            f"{where} contains non-integer values, which looks like normalised data; raw counts are expected ({naming})"
        )


def check_obs_key(mdata: MuData, mod: str, key: str, argument: str, *, allow_none: bool = False) -> None:
    """Raise a KeyError unless ``key`` is a column of ``mdata[mod].obs`` (the message lists those there are)."""
    if key not in mdata[mod].obs:
        columns = [str(column) for column in mdata[mod].obs.columns]
        listed = ", ".join(repr(column) for column in columns[:LISTED_COLUMNS])
        if len(columns) > LISTED_COLUMNS:
            listed += f" and {len(columns) - LISTED_COLUMNS} more"
        fix = f"pass one of its columns{f' or {argument}=None' if allow_none else ''}"
        raise KeyError(f"{argument}={key!r} not found in mdata['{mod}'].obs (it has {listed or 'no column'}); {fix}")
