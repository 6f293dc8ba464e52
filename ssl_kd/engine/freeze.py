"""`freeze:` parts of trained models, held frozen for their stage: no grad (so out of the optimizer and of DDP's
reduction), and eval mode wherever train()/eval() is toggled.

The mode is held on the modules themselves, not by a hook on a forward pass: every module of the part gets an
instance-level `train` that always sets eval mode. `nn.Module.train` recurses through `children()` calling each
child's `train`, so the evaluator restoring `train(True)` on a whole model, a wrapper (`MultiExit`, which calls
`backbone.stem` / `backbone.stages` directly, DDP, torch.compile), `model.apply(lambda m: m.train())` or a stage's own
`.train()` all leave the part in eval mode: its BatchNorm running statistics and `num_batches_tracked` do not move,
and a resumed run is in the same mode as an uninterrupted one. A deep copy (an EMA model) keeps the hold on its copy.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from torch import nn

from ssl_kd.errors import UserError, choices


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """`module.train(mode)` for a frozen module: eval mode whatever is asked (the children get the same call)."""
    return nn.Module.train(module, False)


def find_part(models: Mapping[str, nn.Module], path: str, where: str) -> nn.Module:
    """`model[.submodule]` of `models`, or one UserError naming `where` and the valid parts."""
    name, _, sub = path.partition(".")
    if name not in models:
        raise UserError(f"{where}: no model '{name}' (models: {choices(list(models))}).")
    model = models[name]
    try:
        return model.get_submodule(sub) if sub else model
    except AttributeError:
        parent, _, _ = sub.rpartition(".")
        try:
            under = model.get_submodule(parent) if parent else model
        except AttributeError:
            under, parent = model, ""
        prefix = f"{name}.{parent}." if parent else f"{name}."
        parts = [prefix + n for n, _ in under.named_children()]
        raise UserError(f"{where}: model '{name}' has no part '{sub}' (valid parts: {choices(parts)}).") from None


class FrozenPart:
    """A part held frozen until `release()` (at the stage's end)."""

    def __init__(self, part: nn.Module) -> None:
        self.part = part
        self.held = list(part.modules())
        part.requires_grad_(False)
        for m in self.held:
            m.train = functools.partial(_stay_in_eval, m)  # instance attribute: shadows nn.Module.train
        part.eval()

    def release(self) -> None:
        """Give the part back its own `train` (it stays in eval mode until the next stage sets the mode; the runner
        gives the trained models their gradients back)."""
        for m in self.held:
            m.__dict__.pop("train", None)

    remove = release  # the name a hook handle had


def freeze_part(models: Mapping[str, nn.Module], path: str, where: str) -> FrozenPart:
    """Freeze `model[.submodule]` for a stage (see the module docstring); `release()` undoes it."""
    return FrozenPart(find_part(models, path, where))


def check_freeze_parts(models: Mapping[str, nn.Module], stages: Mapping[str, object]) -> None:
    """Before any work (and under --dry-run): every enabled stage's `freeze:` names a part of a built model."""
    for name, scfg in stages.items():
        if getattr(scfg, "enabled", True):
            for i, path in enumerate(getattr(scfg, "freeze", ())):
                find_part(models, path, f"stages.{name}.freeze[{i}]")
