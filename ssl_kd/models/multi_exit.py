"""Multi-exit networks built from any registered stage-based backbone (DKS / BYOT / MixSKD style).

Exit k (after backbone stage k) runs **fresh copies of stages k+1..end** (same block types and depths, weights
initialised as a new backbone would be), the backbone's pre-pool head (copied the same way), global pooling and its
own fc. Every exit therefore ends in a map of the backbone's final shape, which is what MixSKD's self-teacher
concatenates. This is Self-KD-Lib's ``Auxiliary_Classifier`` (models/resnet_mixskd.py), for any backbone that has
``stem`` and ``stages`` (see ``ClassifierModel.pre_pool_modules``).

    model = create_model("multi_exit", 100, backbone="cifar_resnet18", backbone_kwargs={"stem_relu": False})
    out = model(x)           # out.logits: the backbone exit; out.aux: "exit1".."exit3" logits, "exit<k>_map",
                             # "backbone_map" (each exit's final pre-pool map)
    model.predict(batch)     # {"backbone": ..., "exit1": ..., ...}: evaluation reports every exit and their max
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ssl_kd.errors import UserError
from ssl_kd.models.base import ClassifierModel, ModelOutput, Prediction, global_pool, is_stage_based, select_maps
from ssl_kd.models.registry import create_model, register_model


class _Tail(nn.Module):
    """Stages ``start..end`` of a freshly built backbone, its pre-pool head and an fc of ``outputs`` logits: one
    auxiliary exit. After the last stage (``start`` = number of stages) the tail is one fresh stride-1 copy of the
    last stage (HSAKD's third branch), which needs a backbone that can build a stage (``build_stage``)."""

    def __init__(self, fresh: ClassifierModel, start: int, outputs: int) -> None:
        super().__init__()
        n = len(fresh.stages)
        if start < n:
            self.stages = nn.ModuleList(list(fresh.stages)[start:])
        else:
            width = fresh.feat_channels[-1]
            self.stages = nn.ModuleList([fresh.build_stage(n - 1, width, 1)])
        for name in type(fresh).pre_pool_modules:  # the modules the backbone's pre_pool reads, under their names
            setattr(self, name, getattr(fresh, name))
        self._pre_pool = type(fresh).pre_pool  # called with this module as `self`: it reads only those names
        self.fc = fresh.fc if outputs == fresh.fc.out_features else nn.Linear(fresh.fc.in_features, outputs)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for stage in self.stages:
            x = stage(x)
        final = self._pre_pool(self, x)
        return final, self.fc(global_pool(final))


class MultiExit(ClassifierModel):
    """A backbone plus auxiliary exits after the stages in ``exits`` (1-based; default: every stage but the last).

    ``logits``/``feat``/``feats`` are the backbone's own (so the model drops in wherever its backbone does, e.g. as a
    KD teacher); ``aux`` holds each exit's logits (``exit<k>``) and final map (``exit<k>_map``) and the backbone's
    final pre-pool map (``backbone_map``). The auxiliary exits do not see the backbone's extra inputs (``fuse``).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str,
        backbone_kwargs: Mapping[str, Any] | None = None,
        exits: Sequence[int] | None = None,
        exit_label_factor: int = 1,
    ) -> None:
        super().__init__()
        kwargs = dict(backbone_kwargs or {})
        self.backbone = create_model(backbone, num_classes, **kwargs)
        if not is_stage_based(self.backbone):
            raise UserError(
                f"Model 'multi_exit': backbone '{backbone}' is not stage-based (it needs `stem` and `stages`, see "
                f"ssl_kd.models.base.ClassifierModel); e.g. cifar_resnet18, resnet18, resnet8x4, wrn_40_2."
            )
        n = len(self.backbone.stages)
        last = n if hasattr(self.backbone, "build_stage") else n - 1
        exits = list(range(1, n)) if exits is None else list(exits)
        if not exits or sorted(set(exits)) != exits or not all(isinstance(k, int) and 1 <= k <= last for k in exits):
            extra = (
                f"; {n} adds a stride-1 copy of the last stage"
                if last == n
                else f" (backbone '{backbone}' cannot build an extra stage, so no exit after its last one)"
            )
            raise UserError(
                f"Model 'multi_exit': option exits={exits!r} is invalid; expected increasing stage numbers in "
                f"1..{last} (backbone '{backbone}' has {n} stages{extra})."
            )
        if not isinstance(exit_label_factor, int) or exit_label_factor < 1:
            raise UserError(
                f"Model 'multi_exit': option exit_label_factor={exit_label_factor!r} is invalid; expected a positive "
                f"integer (4: HSAKD's joint class x rotation labels)."
            )
        self.exit_after = tuple(exits)
        self.exit_label_factor = exit_label_factor
        outputs = num_classes * exit_label_factor
        self.branches = nn.ModuleList(_Tail(create_model(backbone, num_classes, **kwargs), k, outputs) for k in exits)
        self.num_classes = num_classes
        self.feat_dim = self.backbone.feat_dim
        self.feat_channels = self.backbone.feat_channels
        self.extra_inputs = self.backbone.extra_inputs

    @property
    def fc(self) -> nn.Linear:  # the backbone exit's classifier (not registered twice)
        return self.backbone.fc

    @property
    def exit_names(self) -> tuple[str, ...]:
        """Exits in depth order, the backbone last (MixSKD's [aux1, aux2, aux3, backbone])."""
        return (*(f"exit{k}" for k in self.exit_after), "backbone")

    def forward(self, x: Tensor, return_feats: bool | Sequence[int] = False, **inputs: Tensor) -> ModelOutput:
        if inputs.keys() != set(self.extra_inputs):
            self._bad_inputs(inputs)
        bb = self.backbone
        out = bb.stem(x)
        maps = [out]
        for stage in bb.stages:
            out = stage(out)
            maps.append(out)
        final = bb.pre_pool(out)
        feat = bb.fuse(global_pool(final), **inputs)
        aux: dict[str, Tensor] = {}
        for k, branch in zip(self.exit_after, self.branches):
            aux[f"exit{k}_map"], aux[f"exit{k}"] = branch(maps[k])
        aux["backbone_map"] = final
        return ModelOutput(bb.fc(feat), feat, select_maps(maps, return_feats), aux)

    def exit_logits(self, out: ModelOutput) -> list[Tensor]:
        """Each exit's logits, in `exit_names` order."""
        return [out.aux[f"exit{k}"] for k in self.exit_after] + [out.logits]

    def exit_maps(self, out: ModelOutput) -> list[Tensor]:
        """Each exit's final (pre-pool) map, in `exit_names` order."""
        return [out.aux[f"exit{k}_map"] for k in self.exit_after] + [out.aux["backbone_map"]]

    def predict(self, batch: Mapping[str, Any]) -> Prediction:
        """Every exit: the backbone first (the headline), then exit1, exit2, ... in depth order. Exits over joint
        labels (``exit_label_factor`` > 1, class-major as ``ssl_kd.data.rotation``) are scored on the class: the
        sum of each class's joint logits, as the HSAKD references report an auxiliary head's class accuracy."""
        out = self(batch["x"], **self.inputs_from(batch))
        exits = {f"exit{k}": out.aux[f"exit{k}"] for k in self.exit_after}
        if self.exit_label_factor > 1:
            exits = {k: v.unflatten(1, (-1, self.exit_label_factor)).sum(-1) for k, v in exits.items()}
        return {"backbone": out.logits, **exits}


@register_model("multi_exit")
def multi_exit(
    num_classes: int,
    backbone: str = "cifar_resnet18",
    backbone_kwargs: dict[str, Any] | None = None,
    exits: list[int] | None = None,
    exit_label_factor: int = 1,
) -> MultiExit:
    """A stage-based backbone plus auxiliary exits after the given stages (default: all but the last), each a fresh
    copy of the later stages + head + fc (MixSKD / DKS / BYOT); an exit after the last stage is a stride-1 copy of
    it (HSAKD). ``exit_label_factor``: the exits predict factor x num_classes joint labels (4 for HSAKD's class x
    rotation). ``backbone_kwargs`` go to the backbone."""
    if not isinstance(backbone, str):
        raise UserError(f"Model 'multi_exit': option backbone={backbone!r} is invalid; expected a model name.")
    if backbone_kwargs is not None and not isinstance(backbone_kwargs, dict):
        raise UserError(f"Model 'multi_exit': backbone_kwargs={backbone_kwargs!r} is invalid; expected a mapping.")
    return MultiExit(num_classes, backbone, backbone_kwargs, exits, exit_label_factor)
