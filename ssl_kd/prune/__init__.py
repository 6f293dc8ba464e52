"""Filter pruning while a stage trains (SFP, SRFP, ASRFP, GHFP) and its export to a physically smaller network.

Pure functions (`functional.py`, checked against an independent implementation in tests/unit/test_prune_parts.py), the
per-architecture description of prunable convs (`units.py`), the stage-side component holding one model's masks
(`FilterPruner`), the `prune:` option block any training stage carries (`PruneConfig`), and the export.
The callback that runs the masks at the stage's lifecycle points is `ssl_kd.callbacks.prune.Prune`.
"""

from ssl_kd.prune.compact import ExportResult, count_flops, count_params, export_pruned, kept_filters
from ssl_kd.prune.config import PruneConfig
from ssl_kd.prune.functional import (
    DECAY_FLOOR,
    asfp_keep_ratio,
    asrfp_decay,
    bn_factors,
    filter_norm_mask,
    filter_norms,
    ghfp_hard_fraction,
    ghfp_hard_fraction_cosine,
    ghfp_masks,
    global_masks,
    mask_factors,
    pruned_count,
)
from ssl_kd.prune.masker import FilterPruner
from ssl_kd.prune.units import Unit, prunable_units

__all__ = [
    "DECAY_FLOOR",
    "ExportResult",
    "FilterPruner",
    "PruneConfig",
    "Unit",
    "asfp_keep_ratio",
    "asrfp_decay",
    "bn_factors",
    "count_flops",
    "count_params",
    "export_pruned",
    "filter_norm_mask",
    "filter_norms",
    "ghfp_hard_fraction",
    "ghfp_hard_fraction_cosine",
    "ghfp_masks",
    "global_masks",
    "kept_filters",
    "mask_factors",
    "prunable_units",
    "pruned_count",
]
