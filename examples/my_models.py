# A model of your own, named in a config as `arch: tiny_cnn` (examples/custom_model.yaml imports this file).
from torch import nn

from ssl_kd.models import ClassifierModel, register_model


@register_model("tiny_cnn")
class TinyCNN(ClassifierModel):  # stem -> stages -> global pool -> fc: the base class does the forward
    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU())])
        self.fc, self.num_classes, self.feat_dim = nn.Linear(2 * width, num_classes), num_classes, 2 * width
        self.feat_channels = (width, 2 * width)
