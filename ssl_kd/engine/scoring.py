"""Evaluation on the test split: each rank scores a fixed shard, sums are all-reduced (exact, no duplicates).

What is scored is a `predict(batch)` function, not a model: a model's logits, each exit of a multi-exit model
(named predictions, the first is the headline), an ensemble of several models, or a model that needs metadata
(the batch carries every field of the dataset).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import nn

from ssl_kd.data import ViewDataset
from ssl_kd.engine.interrupt import ignore_stop_signals
from ssl_kd.engine.services import DataServices
from ssl_kd.engine.streams import finish_batch

Predict = Callable[[Mapping[str, torch.Tensor]], torch.Tensor | dict[str, torch.Tensor]]


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Modules in eval mode for the duration, each back in its own mode afterwards."""
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, w in zip(modules, was):
            m.train(w)


class Evaluator:
    def __init__(self, services: DataServices, accelerator: Accelerator, num_workers: int) -> None:
        self.services, self.accelerator, self.num_workers = services, accelerator, num_workers
        self._loaders: dict[int, Any] = {}

    def loader(self, batch_size: int):
        """This rank's share of the test split (every world_size-th image), in fixed order."""
        if batch_size not in self._loaders:
            acc = self.accelerator
            on_gpu = acc.device.type == "cuda"  # test images travel as uint8 and are normalised there
            ds = ViewDataset(self.services.data.test, {"x": self.services.transform("test")}, defer_normalize=on_gpu)
            mine = list(range(acc.process_index, len(ds), acc.num_processes))
            batches = [[(i, 0) for i in mine[s : s + batch_size]] for s in range(0, len(mine), batch_size)]
            self._loaders[batch_size] = torch.utils.data.DataLoader(
                ds, batch_sampler=batches, num_workers=self.num_workers,
                pin_memory=acc.device.type == "cuda", generator=torch.Generator().manual_seed(0),
                worker_init_fn=ignore_stop_signals,
            )  # fmt: skip
        return self._loaders[batch_size]

    def reset(self) -> None:
        self._loaders = {}

    @torch.no_grad()
    def evaluate(self, predict: Predict, batch_size: int) -> dict[str, float]:
        """Top-1/top-5 and CE of each prediction on the full test split: `{"top1", "top5", "loss"}` for the
        headline, `{"<name>/top1", ...}` for every further named prediction, and with several predictions
        `max/top1`, the best of them (what multi-exit papers such as MixSKD report)."""
        acc = self.accelerator
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros((), dtype=torch.float64, device=acc.device)
        loader = self.loader(batch_size)
        for batch in loader:
            batch = finish_batch(loader.dataset, send_to_device(batch, acc.device, non_blocking=True))
            with acc.autocast():
                out = predict(batch)
            named = out if isinstance(out, dict) else {"": out}
            y = batch["y"]
            for name, logits in named.items():
                logits = logits.float()
                hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
                s = torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum(), F.cross_entropy(logits, y, reduction="sum")])
                sums[name] = sums[name] + s.to(count) if name in sums else s.to(count)
            count += y.numel()
        names = list(sums)
        if not names:
            return {}
        stacked = torch.cat([torch.stack([sums[n] for n in names]).flatten(), count[None]])
        if acc.num_processes > 1:
            stacked = acc.reduce(stacked, reduction="sum")
        values = stacked.tolist()
        n = values[-1]
        out: dict[str, float] = {}
        for i, name in enumerate(names):
            prefix = "" if i == 0 else f"{name}/"
            top1, top5, ce = values[3 * i : 3 * i + 3]
            out.update({f"{prefix}top1": top1 / n, f"{prefix}top5": top5 / n, f"{prefix}loss": ce / n})
        if len(names) > 1 and "max" not in names:  # several outputs (e.g. the exits of a multi-exit model)
            out["max/top1"] = max(out[f"{'' if i == 0 else f'{name}/'}top1"] for i, name in enumerate(names))
        return out
