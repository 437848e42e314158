"""Which assay a modality holds, decided in one place for preprocessing and both models.

The assay chooses the preprocessing recipe (LSI for RNA and ATAC, CLR for ADT), CLIP's tuned defaults and CLUE's
count likelihood, so all of them must read the same answer from the same data.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

# Names in var['feature_types'] (the competition's GEX/ATAC/ADT, 10x's and muon's "Gene Expression", "Peaks",
# "Antibody Capture") and modality names (muon's "rna", "atac", "prot"), compared in lower case.
ASSAY_NAMES = {
    "rna": ("rna", "gex", "gene expression", "mrna"),
    "atac": ("atac", "peaks", "chromatin", "chromatin accessibility"),
    "adt": ("adt", "prot", "protein", "proteins", "antibody capture"),
}
_ASSAY_OF_NAME = {name: assay for assay, names in ASSAY_NAMES.items() for name in names}


def assay_of_feature_type(kind: object) -> str | None:
    """The assay (``'rna'``, ``'atac'``, ``'adt'``) a ``var['feature_types']`` value names, in any case, or None."""
    return _ASSAY_OF_NAME.get(str(kind).strip().lower())


def assay_of(mod: str, var: pd.DataFrame) -> str | None:
    """``'rna'``, ``'atac'``, ``'adt'`` or ``None`` (not recognised) for the modality ``mod`` with features ``var``.

    ``var['feature_types']`` decides when more than half of the features belong to one known assay, so that a
    modality holding a few antibody features beside its genes still counts as RNA. Otherwise (no such column, labels
    that name no assay, or no majority) the modality's name decides.

    Examples
    --------
    >>> import pandas as pd
    >>> assay_of("prot", pd.DataFrame(index=["CD3", "CD4"]))
    'adt'
    >>> assay_of("cite", pd.DataFrame({"feature_types": ["Antibody Capture"] * 2}))
    'adt'
    >>> assay_of("x", pd.DataFrame(index=["a"])) is None
    True
    """
    if "feature_types" in var and len(var):
        counts = Counter()
        for kind, count in var["feature_types"].astype(str).value_counts().items():
            assay = assay_of_feature_type(kind)
            if assay is not None:
                counts[assay] += int(count)
        if counts:
            assay, count = counts.most_common(1)[0]
            if 2 * count > len(var):
                return assay
    return _ASSAY_OF_NAME.get(mod.lower())
