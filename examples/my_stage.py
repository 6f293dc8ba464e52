# A stage of your own, named in a config as `type: past_predictions` (examples/my_stage.yaml imports this file):
# progressive self-distillation (PS-KD, Kim et al., ICCV 2021). The target mixes the label with the model's own
# prediction for the same image when it last saw it, with a weight rising linearly to `alpha` over the stage.
import torch
import torch.nn.functional as F
from pydantic import Field

from ssl_kd.config.schema import StageConfig
from ssl_kd.engine import Stage, register_stage
from ssl_kd.losses import accuracy, soft_cross_entropy


class PastPredictionsConfig(StageConfig):  # every stage key (train, epochs, optimizer, ...) plus its own
    alpha: float = Field(0.8, ge=0, le=1)  # weight of the past prediction at the end of the stage
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0})


class Bank(torch.nn.Module):  # one row per training image: its last predicted distribution (zeros: not seen yet)
    def __init__(self, num_images: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("p", torch.zeros(num_images, num_classes))


@register_stage("past_predictions")
class PastPredictions(Stage):
    Config = PastPredictionsConfig

    def setup(self) -> None:  # runs on every entry, fresh or resumed; registered state is restored after it
        self.net = self.single("train")
        self.add_stream("train", self.view_dataset(self.data.train, {"x": self.transform("weak")}))
        self.bank = self.register_state("bank", Bank(len(self.data.train), self.data.num_classes))

    def train_step(self, batch):
        x, y, idx = batch["train"]["x"], batch["train"]["y"], batch["train"]["idx"]
        logits = self.model(self.net)(x).logits
        bank = self.bank.to(x.device).p  # (one process: with several, each keeps the rows of its own images)
        past = bank[idx]
        alpha = self.cfg.alpha * self.progress.fraction * past.sum(1, keepdim=True)  # 0 for an unseen image
        target = (1 - alpha) * F.one_hot(y, logits.shape[1]).float() + alpha * past
        bank[idx] = F.softmax(logits.detach().float(), dim=1)
        return {"ce": soft_cross_entropy(logits, target)}, {"acc": accuracy(logits, y), "alpha": alpha.mean()}
