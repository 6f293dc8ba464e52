"""Model zoo: every model returns ``ModelOutput(logits, feat, feats)``; build one with create_model."""

# Importing the model modules registers their factories.
from ssl_kd.models import cifar_resnet, cifar_wrn, mobilenetv2, resnet, shufflenet, small, vgg, wrn  # noqa: F401
from ssl_kd.models.base import ModelOutput
from ssl_kd.models.registry import create_model, list_models, model_options, register_model

__all__ = ["ModelOutput", "create_model", "list_models", "model_options", "register_model"]
