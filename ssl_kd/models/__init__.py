"""Model zoo: every model returns ``ModelOutput(logits, feat, feats, aux)`` and has ``predict(batch)``; build one
with create_model (which records its constructor spec)."""

# Importing the model modules registers their factories.
from ssl_kd.models import cifar_resnet, cifar_wrn, mobilenetv2, resnet, shufflenet, small, vgg, wrn  # noqa: F401
from ssl_kd.models.base import ClassifierModel, ModelOutput, Prediction, select_maps
from ssl_kd.models.feature_heads import Embed, LinearProbe, seeded_linear
from ssl_kd.models.registry import (
    create_model,
    create_model_from_spec,
    list_models,
    model_options,
    model_spec,
    register_model,
)

__all__ = [
    "ClassifierModel",
    "Embed",
    "LinearProbe",
    "ModelOutput",
    "Prediction",
    "create_model",
    "create_model_from_spec",
    "list_models",
    "model_options",
    "model_spec",
    "register_model",
    "seeded_linear",
    "select_maps",
]
