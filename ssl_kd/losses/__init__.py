"""Pure loss functions: no state, no config; stages compose them."""

from ssl_kd.losses.ce import SmoothingConvention, accuracy, smooth_targets, soft_cross_entropy
from ssl_kd.losses.contrastive import (
    contrast_exp_scores,
    crd_nce_loss,
    instance_discrimination_loss,
    nce_normaliser,
)
from ssl_kd.losses.cskd import align_dense, ckf_target, patch_distill_loss
from ssl_kd.losses.dkd import dkd_loss, dkd_parts
from ssl_kd.losses.hsakd import hierarchical_kd, joint_ce, mutual_kd
from ssl_kd.losses.ka import knowledge_adjust
from ssl_kd.losses.kd import kd_loss
from ssl_kd.losses.mcl import ensemble_kd_loss, kl_t, mcl_losses, similarity_logits, sup_contrastive_loss
from ssl_kd.losses.mixskd import interpolate_rows, mixskd_losses, mixup_ce
from ssl_kd.losses.pad import PAD_EPS, feature_l2_loss, pad_l2_loss
from ssl_kd.losses.sskd import (
    error_level_keep,
    kept_kl,
    similarity_matrix,
    source_index,
    sskd_head_loss,
    sskd_similarity_loss,
    sskd_transform_loss,
    true_rank,
)
from ssl_kd.losses.ssl import (
    adaptive_topk,
    anl_loss,
    consistency_loss,
    convex_mapping,
    eml_loss,
    flexmatch_beta,
    flexmatch_class_thresholds,
    topk_rank,
)
from ssl_kd.losses.temperature import (
    GlobalTemperature,
    InstanceTemperature,
    as_column,
    ctkd_lambda,
    dtd_temperature,
    grad_reverse,
)

__all__ = [
    "hierarchical_kd",
    "joint_ce",
    "mutual_kd",
    "GlobalTemperature",
    "InstanceTemperature",
    "as_column",
    "align_dense",
    "ckf_target",
    "ctkd_lambda",
    "patch_distill_loss",
    "dkd_loss",
    "dkd_parts",
    "dtd_temperature",
    "grad_reverse",
    "knowledge_adjust",
    "accuracy",
    "adaptive_topk",
    "anl_loss",
    "consistency_loss",
    "contrast_exp_scores",
    "crd_nce_loss",
    "convex_mapping",
    "eml_loss",
    "flexmatch_beta",
    "flexmatch_class_thresholds",
    "instance_discrimination_loss",
    "interpolate_rows",
    "kd_loss",
    "PAD_EPS",
    "ensemble_kd_loss",
    "feature_l2_loss",
    "kl_t",
    "mcl_losses",
    "pad_l2_loss",
    "similarity_logits",
    "sup_contrastive_loss",
    "mixskd_losses",
    "mixup_ce",
    "nce_normaliser",
    "smooth_targets",
    "SmoothingConvention",
    "soft_cross_entropy",
    "topk_rank",
    # SSKD
    "error_level_keep",
    "kept_kl",
    "similarity_matrix",
    "source_index",
    "sskd_head_loss",
    "sskd_similarity_loss",
    "sskd_transform_loss",
    "true_rank",
]
