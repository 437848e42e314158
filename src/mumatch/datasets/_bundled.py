"""Real data shipped inside the package, as scanpy ships ``pbmc68k_reduced``."""

from __future__ import annotations

from importlib import resources
from typing import Literal

import mudata as md
from mudata import MuData

TASKS = ("cite", "multiome")


def bundled_path(task: str) -> resources.abc.Traversable:
    """Location of the compact ``.h5mu`` file of a starter task inside the installed package."""
    return resources.files("mumatch") / "data" / f"bmmc_{task}.h5mu"


def bmmc_starter(task: Literal["cite", "multiome"] = "multiome") -> MuData:
    """The NeurIPS 2021 BMMC starter subsets, bundled with the package.

    Public competition data (bone marrow mononuclear cells, donor s1; training cells from site d1, test cells from
    site d2), in the layout of :func:`mumatch.datasets.read_neurips2021`: training cells paired, test cells unpaired,
    raw counts in ``.X`` and ``.layers['counts']``, ``obs['batch']`` (missing for the test cells of the second
    modality, as in the competition), ``obs['split']``, ``obs['cell_type']`` (for evaluation only) and the ground
    truth ``mdata.obsp['match_true']``.

    Parameters
    ----------
    task
        ``"cite"``: RNA (1,000 genes) + ADT (134 proteins), 311 training and 289 test cells.
        ``"multiome"``: RNA (600 genes) + ATAC (600 peaks), 221 training and 279 test cells.

    Returns
    -------
    A new MuData each call.

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.bmmc_starter("cite")
    >>> sorted(mdata.mod)
    ['adt', 'rna']
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not a bundled starter; choose one of {list(TASKS)}")
    with resources.as_file(bundled_path(task)) as path:
        mdata = md.read_h5mu(path)
    # The file stores the counts once (in .layers['counts']) to stay small; .X holds them again, as the reader does.
    for adata in mdata.mod.values():
        adata.X = adata.layers["counts"].copy()
    return mdata
