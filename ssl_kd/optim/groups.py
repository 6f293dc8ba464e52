"""Which loss terms an optimizer backpropagates separately (its loss groups), resolved from config and checked.

Used twice: by the config schema (a wrong group is a config error with its YAML path, before any work) and by the
grouped backward strategy (`ssl_kd.optim.backward`).
"""

from __future__ import annotations

import torch

from ssl_kd.optim.config import OptimizerConfig
from ssl_kd.optim.dot import DOT

# optimizers that take their loss in groups; the others take one summed loss
GROUPED: dict[str, type[torch.optim.Optimizer]] = {"dot": DOT}


def loss_groups(cfg: OptimizerConfig, weights: dict[str, float]) -> list[tuple[str, dict[str, float]]] | None:
    """The weighted loss terms of each loss group, in backward order; None for an optimizer that takes one sum.

    An optimizer class may declare `loss_groups = {group: terms | None}` (ordered; None = every weighted term no
    other group claims) and `step_group(group)`. The runner then backpropagates each group separately, hands each
    group but the last to `step_group`, and calls `step()` with the last group's gradient in `.grad`.
    `cfg.loss_groups` overrides the declared terms per group. Raises ValueError (a config error) on a term that is
    not a loss term of the stage, a term in two groups, a term in none, or a group left without weighted terms.
    """
    declared = getattr(GROUPED.get(cfg.name), "loss_groups", None)
    if declared is None:
        if cfg.loss_groups:
            raise ValueError(
                f"optimizer.loss_groups: optimizer '{cfg.name}' takes one summed loss; only {sorted(GROUPED)} "
                f"backpropagate loss groups"
            )
        return None
    given = cfg.loss_groups or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"optimizer.loss_groups: optimizer '{cfg.name}' has no group {unknown}; its groups are "
                         f"{list(declared)}")  # fmt: skip
    owner: dict[str, str] = {}
    catch_all = None
    for group, default in declared.items():
        terms = given.get(group, default)
        if terms is None:
            catch_all = group
            continue
        for term in terms:
            if term not in weights:
                raise ValueError(f"optimizer.loss_groups.{group}: '{term}' is not a loss term of this stage; its "
                                 f"terms are {sorted(weights)}")  # fmt: skip
            if term in owner:
                raise ValueError(f"optimizer.loss_groups: term '{term}' is in both '{owner[term]}' and '{group}'")
            owner[term] = group
    out = []
    for group in declared:
        terms = {t: w for t, w in weights.items() if w != 0 and owner.get(t, catch_all) == group}
        if not terms:
            raise ValueError(
                f"optimizer.loss_groups.{group}: optimizer '{cfg.name}' needs at least one term with a non-zero "
                f"loss weight in its '{group}' group; loss weights here are {weights}"
            )
        out.append((group, terms))
    stray = sorted(t for t, w in weights.items() if w != 0 and owner.get(t, catch_all) is None)
    if stray:
        raise ValueError(f"optimizer.loss_groups: term(s) {stray} belong to no group of optimizer '{cfg.name}'")
    return out
