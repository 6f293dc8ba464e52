"""Model zoo: every model returns ``ModelOutput(logits, feat, feats, aux)`` and has ``predict(batch)``; build one
with create_model (which records its constructor spec)."""

# Importing the model modules registers their factories.
from ssl_kd.models import (  # noqa: F401
    cifar_resnet,
    cifar_wrn,
    fusion,
    mobilenetv1,
    mobilenetv2,
    multi_exit,
    regnet,
    resnet,
    shufflenet,
    small,
    vgg,
    vit,
    wrn,
)
from ssl_kd.models.base import ClassifierModel, ModelOutput, Prediction, dense_logits, is_stage_based, select_maps
from ssl_kd.models.feature_heads import Connector, Embed, LinearProbe, MLPHead, connector_for, seeded_linear
from ssl_kd.models.fusion import ConcatHead, DynamicMLPHead, FCNet, FusionModule
from ssl_kd.models.heads import FeatureCritics, SelfTeacher, roi_features
from ssl_kd.models.multi_exit import MultiExit
from ssl_kd.models.registry import (
    create_model,
    create_model_from_spec,
    list_models,
    model_options,
    model_spec,
    register_head,
    register_model,
)

__all__ = [
    "ClassifierModel",
    "ConcatHead",
    "DynamicMLPHead",
    "Connector",
    "Embed",
    "MLPHead",
    "connector_for",
    "FCNet",
    "FusionModule",
    "FeatureCritics",
    "LinearProbe",
    "ModelOutput",
    "MultiExit",
    "Prediction",
    "SelfTeacher",
    "create_model",
    "create_model_from_spec",
    "dense_logits",
    "is_stage_based",
    "list_models",
    "model_options",
    "model_spec",
    "register_head",
    "register_model",
    "roi_features",
    "seeded_linear",
    "select_maps",
]
