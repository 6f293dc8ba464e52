"""The one training loop: for each stage -> for each step -> stage.train_step -> backward/step -> callbacks.

Accelerate owns devices, mixed precision and DDP; the runner owns ordering, state and resume. Everything that
must survive a restart (models, optimizer, scheduler, EMA, stage state, callback state, RNG, sampler position)
goes into `checkpoints/last.pt`, so a resumed run continues bit-for-bit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import nn

from ssl_kd.config.schema import Config, StageConfig
from ssl_kd.engine.callback import Callback
from ssl_kd.engine.checkpoint import (
    FORMAT,
    capture_rng,
    extract_state_dict,
    load_checkpoint,
    load_weights,
    restore_rng,
    save_atomic,
)
from ssl_kd.engine.registry import stage_types
from ssl_kd.engine.run_dir import RunDir
from ssl_kd.engine.seed import seed_everything
from ssl_kd.engine.stage import Stage
from ssl_kd.errors import UserError, choices
from ssl_kd.optim import GroupGrads, build_optimizer, build_scheduler, loss_groups


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. a loss became NaN); the message says why and what was kept."""


class Runner:
    def __init__(
        self,
        cfg: Config,
        run_dir: RunDir,
        resolved: dict[str, Any],
        *,
        resume: bool = False,
        accelerator: Accelerator | None = None,
        callbacks: list[Callback] | None = None,
        dry_run: bool = False,
    ) -> None:
        self.dry_run = dry_run
        self.cfg = cfg
        self.run_dir = run_dir
        self.resolved = resolved
        self.resume = resume
        self.accelerator = accelerator or Accelerator(mixed_precision=cfg.experiment.precision)
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self.world_size = self.accelerator.num_processes
        self.models: dict[str, nn.Module] = {}
        self.ema: dict[str, nn.Module] = {}  # filled by the EMA callback for the current stage
        self.results: dict[str, dict[str, Any]] = {}  # per-stage last/best metrics, for the summary
        self.experiment_callbacks = list(callbacks or [])
        self.stage: Stage | None = None
        self.stage_index = 0
        self.global_step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.callbacks: list[Callback] = []
        self.wandb_id: str | None = None
        self._data = None
        self._transforms: dict[str, Any] = {}
        self._split: tuple[np.ndarray, np.ndarray] | None = None
        self._eval_loaders: dict[int, Any] = {}

    # ================================================================ services for stages and callbacks
    @property
    def data(self):  # -> DatasetBundle
        if self._data is None:
            from ssl_kd.data import load_dataset

            self._data = load_dataset(self.cfg.data)
        return self._data

    def transform(self, kind: str):
        if kind not in self._transforms:
            from ssl_kd.data import build_transform

            self._transforms[kind] = build_transform(kind, self.data, self.cfg.data.augment)
        return self._transforms[kind]

    def ssl_split(self) -> tuple[np.ndarray, np.ndarray]:
        """Labelled/unlabelled indices: computed once per run, saved in the run folder, reloaded on resume."""
        if self._split is None:
            from ssl_kd.data import load_split, save_split, ssl_split

            scfg = self.cfg.data.ssl
            if scfg.num_labels is None:
                raise UserError(
                    f"stages.{self.stage.name if self.stage else '?'}: this stage needs a labelled subset; "
                    f"set data.ssl.num_labels (e.g. data.ssl.num_labels=40)."
                )
            if self.run_dir.split.exists():
                self._split = load_split(self.run_dir.split)
            else:
                seed = scfg.seed if scfg.seed is not None else self.cfg.experiment.seed
                self._split = ssl_split(
                    self.data.train.targets, scfg.num_labels, self.data.num_classes, seed,
                    include_labeled_in_unlabeled=scfg.include_labeled_in_unlabeled,
                )  # fmt: skip
                if self.is_main and not self.dry_run:
                    save_split(self.run_dir.split, *self._split)
        return self._split

    def log(self, record: dict[str, Any]) -> None:
        """Send one metrics record (already reduced across ranks) to every logger."""
        if not self.is_main:
            return
        base = {
            "stage": self.stage.name if self.stage else None,
            "step": self._step,
            "global_step": self.global_step,
        }
        if self.stage is not None:
            base["epoch"] = self.stage.progress.epoch
        record = {**base, **record}
        for cb in self._all_callbacks():
            cb.on_log(self, record)

    @property
    def _step(self) -> int:
        return self.stage.progress.step if self.stage else 0

    def eval_loader(self, batch_size: int):
        """This rank's share of the test split (every world_size-th image), in fixed order."""
        if batch_size not in self._eval_loaders:
            from ssl_kd.data import ViewDataset

            ds = ViewDataset(self.data.test, {"x": self.transform("test")})
            mine = list(range(self.accelerator.process_index, len(ds), self.world_size))
            batches = [[(i, 0) for i in mine[s : s + batch_size]] for s in range(0, len(mine), batch_size)]
            self._eval_loaders[batch_size] = torch.utils.data.DataLoader(
                ds, batch_sampler=batches, num_workers=self.cfg.data.num_workers,
                pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
        return self._eval_loaders[batch_size]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        """Top-1/top-5 and CE on the full test split; each rank takes a shard, sums are all-reduced (exact)."""
        was_training = model.training
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # top1, top5, ce, count
        for batch in self.eval_loader(batch_size):
            batch = send_to_device(batch, self.device, non_blocking=True)
            with self.accelerator.autocast():
                logits = model(batch["x"]).logits.float()
            y = batch["y"]
            hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
            sums += torch.stack([
                hit[:, 0].sum(), hit.any(dim=1).sum(),
                torch.nn.functional.cross_entropy(logits, y, reduction="sum"), torch.tensor(y.numel()),
            ]).to(sums)  # fmt: skip
        model.train(was_training)
        if self.world_size > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        top1, top5, ce, n = sums.tolist()
        return {"top1": top1 / n, "top5": top5 / n, "loss": ce / n}

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise max over ranks (e.g. FullMatch's adaptive k must agree on every rank)."""
        if self.world_size > 1:
            t = t.clone()
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate a tensor over ranks along dim 0 (rank order), e.g. to keep one global history."""
        return self.accelerator.gather(t) if self.world_size > 1 else t

    def reduce_mean(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        if not values:
            return {}
        keys = sorted(values)
        stacked = torch.stack([values[k].float().reshape(()) for k in keys])
        if self.world_size > 1:
            stacked = self.accelerator.reduce(stacked, reduction="mean")
        return dict(zip(keys, stacked.tolist()))

    # ================================================================ building
    def build_models(self, num_classes: int) -> None:
        from ssl_kd.models import create_model

        for name, mcfg in self.cfg.models.items():
            model = create_model(mcfg.arch, mcfg.num_classes or num_classes, **mcfg.kwargs)
            if mcfg.checkpoint:
                self.load_model_file(model, name, mcfg.checkpoint, f"models.{name}.checkpoint", strict=True)
            self.models[name] = model.to(self.device)

    def load_model_file(self, model: nn.Module, name: str, path: str, where: str, strict: bool) -> None:
        obj = load_checkpoint(path, where)
        state = extract_state_dict(obj, name)
        if state is None:
            have = choices(obj["models"]) if isinstance(obj.get("models"), dict) else "no recognisable weights"
            raise UserError(f"{where}: {path} has no weights for model '{name}' (it has: {have}).")
        load_weights(model, state, strict, f"{where} ({path}, model '{name}')")

    def _apply_init(self, name: str, cfg: StageConfig, index: int) -> None:
        init = cfg.init
        if init.mode == "continue":
            return
        if init.mode == "stage":
            src = init.stage or list(self.cfg.stages)[index - 1]
            if not self.cfg.stages[src].enabled:
                return  # its models come from elsewhere (e.g. models.<name>.checkpoint)
            path = self.run_dir.stage_file(src, init.which)
            where = f"stages.{name}.init (stage '{src}', {init.which})"
            if not path.is_file():
                raise UserError(f"{where}: {path} does not exist; did stage '{src}' run and evaluate?")
        else:
            path, where = init.path, f"stages.{name}.init.path"
        obj = load_checkpoint(path, where)
        targets = init.models or [m for m in (*cfg.train, *cfg.uses) if extract_state_dict(obj, m) is not None]
        if not targets:
            raise UserError(f"{where}: {path} has weights for none of this stage's models {[*cfg.train, *cfg.uses]}.")
        for m in targets:
            self.load_model_file(self.models[m], m, str(path), where, init.strict)

    def _micro_batch(self, stage: Stage, stream: str) -> int:
        """Per-process, per-accumulation-step batch of a stream: the global batch must divide evenly."""
        size, per = stage.streams[stream].batch_size, self.world_size * stage.cfg.grad_accum
        if size % per:
            raise UserError(
                f"stages.{stage.name}.batch_size: stream '{stream}' has global batch {size}, which must divide "
                f"evenly over {self.world_size} process(es) x {stage.cfg.grad_accum} accumulation step(s)."
            )
        return size // per

    def _make_iterators(self, stage: Stage, start_step: int) -> dict[str, Iterator]:
        from ssl_kd.data import StreamSampler

        iters = {}
        for i, (sname, stream) in enumerate(stage.streams.items()):
            micro = self._micro_batch(stage, sname)
            sampler = StreamSampler(
                len(stream.dataset), micro, seed=self.cfg.experiment.seed * 1000 + 17 * self.stage_index + i,
                rank=self.accelerator.process_index, world_size=self.world_size, drop_last=True,
                start_batch=start_step * stage.cfg.grad_accum,
            )  # fmt: skip
            nw = self.cfg.data.num_workers
            loader = torch.utils.data.DataLoader(
                stream.dataset, batch_sampler=sampler, num_workers=nw, pin_memory=self.device.type == "cuda",
                persistent_workers=False, generator=torch.Generator().manual_seed(0),
                prefetch_factor=4 if nw > 0 else None,
            )  # fmt: skip
            iters[sname] = iter(loader)
        return iters

    def _stage_lengths(self, stage: Stage) -> tuple[int, int]:
        cfg = stage.cfg
        if not stage.trains:
            return 0, 1
        if not stage.streams:
            raise RuntimeError(f"stage type '{stage.type_name}' declared no training stream in setup()")
        first = next(iter(stage.streams.values()))
        spe = cfg.steps_per_epoch or len(first.dataset) // first.batch_size
        if cfg.iters is not None:
            spe = max(1, spe)  # an epoch is only a reporting unit here (40 labels < one batch of 64 is fine)
        if spe < 1:
            raise UserError(
                f"stages.{stage.name}.batch_size: {first.batch_size} is larger than the training data "
                f"({len(first.dataset)} samples); lower it or set steps_per_epoch."
            )
        if cfg.epochs is None and cfg.iters is None:
            raise UserError(f"stages.{stage.name}: give the stage a length: `iters: N` or `epochs: N`.")
        total = cfg.epochs * spe if cfg.epochs is not None else cfg.iters
        return total, spe

    # ================================================================ checkpointing
    def checkpoint_state(self, in_stage: bool) -> dict[str, Any]:
        stage = self.stage
        state: dict[str, Any] = {
            "format": FORMAT,
            "config": self.resolved,
            "stage_index": self.stage_index if in_stage else self.stage_index + 1,
            "stage_name": stage.name if stage else None,
            "in_stage": in_stage,
            "step": self._step if in_stage else 0,
            "global_step": self.global_step,
            "models": {n: m.state_dict() for n, m in self.models.items()},
            "results": self.results,
            "metrics_bytes": self.run_dir.metrics_size() if self.is_main else 0,
            "wandb_id": self.wandb_id,
        }
        if in_stage and stage is not None:
            state["stage"] = {
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "modules": {n: m.state_dict() for n, m in stage.modules.items()},
                "states": {n: s.state_dict() for n, s in stage.states.items()},
                "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
            }
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        rng = capture_rng()
        if self.world_size > 1:
            per_rank: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(per_rank, rng)
            state["rng"] = per_rank
        else:
            state["rng"] = [rng]
        return state

    def save_checkpoint(self, in_stage: bool = True) -> None:
        self._check_finite()
        state = self.checkpoint_state(in_stage)
        if self.is_main:
            save_atomic(state, self.run_dir.last)
        self.accelerator.wait_for_everyone()

    def save_stage_weights(self, which: str, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        if self.is_main:
            save_atomic({"format": FORMAT, "stage": self.stage.name, "step": self._step, "models": weights},
                        self.run_dir.stage_file(self.stage.name, which))  # fmt: skip

    def _check_finite(self) -> None:
        for cb in self.callbacks:
            check = getattr(cb, "check", None)
            if check is not None:
                check(self)

    def _load_resume(self) -> dict[str, Any] | None:
        if not self.resume:
            return None
        ckpt = load_checkpoint(self.run_dir.last, "--resume")
        if ckpt.get("format") != FORMAT:
            raise UserError(
                f"--resume: {self.run_dir.last} is not an ssl_kd checkpoint (format {ckpt.get('format')!r})."
            )
        _check_compatible(ckpt["config"], self.resolved, str(self.run_dir.last))
        for name, sd in ckpt["models"].items():
            self.models[name].load_state_dict(sd)
        self.results = ckpt["results"]
        self.global_step = ckpt["global_step"]
        self.wandb_id = ckpt.get("wandb_id")
        if self.is_main:
            self.run_dir.truncate_metrics(ckpt["metrics_bytes"])
        return ckpt

    def _restore_rng(self, ckpt: dict[str, Any]) -> None:
        states = ckpt["rng"]
        restore_rng(states[self.accelerator.process_index] if len(states) == self.world_size else states[0])
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])

    # ================================================================ --dry-run
    def plan(self) -> str:
        """Validate data, models and every stage's set-up without training; describe what would run."""
        exp = self.cfg.experiment
        seed_everything(exp.seed)
        d = self.data
        lines = [
            f"Experiment '{exp.name}' (seed {exp.seed}, precision {exp.precision}, {self.world_size} process(es))",
            f"  run folder: {self.run_dir.root}",
            f"Data: {d.name}: {len(d.train)} train / {len(d.test)} test images, {d.num_classes} classes, "
            f"{d.image_size}px",
            "Models:",
        ]
        self.build_models(d.num_classes)
        for name, m in self.models.items():
            n = sum(p.numel() for p in m.parameters())
            src = f" <- {self.cfg.models[name].checkpoint}" if self.cfg.models[name].checkpoint else ""
            lines.append(f"  {name:<12} {self.cfg.models[name].arch:<14} {n:>12,} params{src}")
        lines.append("Stages:")
        types = stage_types()
        for i, (name, scfg) in enumerate(self.cfg.stages.items()):
            self.stage_index = i
            stage = types[scfg.type](name, scfg, self)
            self.stage = stage
            if not scfg.enabled:
                lines.append(f"  {i + 1}. {name:<14} {scfg.type:<11} (disabled)")
                continue
            if scfg.init.mode == "checkpoint":
                load_checkpoint(scfg.init.path, f"stages.{name}.init.path")
            stage.setup()
            total, spe = self._stage_lengths(stage)
            for sname in stage.streams if stage.trains else ():
                self._micro_batch(stage, sname)
            length = f"{scfg.epochs} epochs x {spe} = {total} steps" if scfg.epochs is not None else f"{total} steps"
            streams = ", ".join(f"{k}: {len(s.dataset)} imgs, batch {s.batch_size}" for k, s in stage.streams.items())
            parts = [f"  {i + 1}. {name:<14} {scfg.type:<11}"]
            if scfg.train:
                parts.append(f"trains {scfg.train}")
            if scfg.uses:
                parts.append(f"reads {scfg.uses}")
            parts.append(length if stage.trains else "evaluation only")
            if streams:
                parts.append(f"[{streams}]")
            if scfg.init.mode != "continue":
                parts.append(f"init: {scfg.init.mode} {scfg.init.stage or scfg.init.path or ''} {scfg.init.which}")
            lines.append(" ".join(parts))
        self.stage = None
        return "\n".join(lines)

    # ================================================================ the loop
    def run(self) -> dict[str, dict[str, Any]]:
        exp = self.cfg.experiment
        if self.is_main:
            self.run_dir.root.mkdir(parents=True, exist_ok=True)
        seed_everything(exp.seed, exp.deterministic)
        self.build_models(self.data.num_classes)
        ckpt = self._load_resume()
        if ckpt is not None and not ckpt["in_stage"]:
            self._restore_rng(ckpt)
        for cb in self._all_callbacks():
            cb.on_experiment_start(self)
        start = ckpt["stage_index"] if ckpt else 0
        types = stage_types()
        for index, (name, scfg) in enumerate(self.cfg.stages.items()):
            if index < start or not scfg.enabled:
                continue
            self.stage_index = index
            resume_here = ckpt if (ckpt and ckpt["in_stage"] and ckpt["stage_index"] == index) else None
            self._run_stage(types[scfg.type](name, scfg, self), resume_here)
        self.stage = None
        for cb in self._all_callbacks():
            cb.on_experiment_end(self)
        return self.results

    def _all_callbacks(self) -> list[Callback]:
        return sorted([*self.callbacks, *self.experiment_callbacks], key=lambda c: c.order)

    def _run_stage(self, stage: Stage, ckpt: dict[str, Any] | None) -> None:
        from ssl_kd.callbacks import stage_callbacks

        cfg = stage.cfg
        self.stage = stage
        if ckpt is None:
            self._apply_init(stage.name, cfg, self.stage_index)
        stage.setup()
        total, spe = self._stage_lengths(stage)
        stage.progress.total_steps, stage.progress.steps_per_epoch = total, spe

        for n in cfg.uses:
            self.models[n].eval().requires_grad_(False)
        for n in cfg.train:
            self.models[n].train().requires_grad_(True)
        prepared = {n: self.accelerator.prepare_model(self.models[n]) for n in cfg.train}
        stage._forward_models = {**{n: self.models[n] for n in cfg.uses}, **prepared}

        params = stage.parameters_to_train() if stage.trains else []
        self.optimizer = self.scheduler = self.loss_groups = None
        if params:
            raw_opt = build_optimizer(cfg.optimizer, params)
            self.loss_groups = loss_groups(cfg.optimizer, cfg.loss_weights)  # e.g. dot: [distill, task]
            if self.loss_groups and getattr(self.accelerator, "scaler", None) is not None:
                raise UserError(
                    f"stages.{stage.name}.optimizer.name: '{cfg.optimizer.name}' backpropagates its loss groups "
                    f"separately, which fp16 loss scaling does not support; use experiment.precision=bf16 or no."
                )
            self.optimizer = self.accelerator.prepare_optimizer(raw_opt)
            interval = cfg.scheduler.interval
            per_epoch = interval == "epoch" or (interval == "auto" and cfg.unit == "epochs")
            horizon = math.ceil(total / spe) if per_epoch else total
            self.scheduler = build_scheduler(cfg.scheduler, raw_opt, horizon)
            self.scheduler_per_epoch = per_epoch
        self.callbacks = stage_callbacks(self, stage)

        if ckpt is not None:
            st = ckpt["stage"]
            if self.optimizer is not None:
                self.optimizer.load_state_dict(st["optimizer"])
                self.scheduler.load_state_dict(st["scheduler"])
            for n, sd in st["modules"].items():
                stage.modules[n].load_state_dict(sd)
            for n, sd in st["states"].items():
                stage.states[n].load_state_dict(sd)
            for cb in self.callbacks:
                cb.load_state_dict(st["callbacks"].get(type(cb).__name__, {}))
            stage.progress.step = ckpt["step"]

        for cb in self._all_callbacks():
            cb.on_stage_start(self)
        iters = self._make_iterators(stage, stage.progress.step) if total else {}
        if ckpt is not None:
            self._restore_rng(ckpt)

        try:
            self._loop(stage, iters, total, spe)
        finally:
            del iters
        for cb in self._all_callbacks():
            cb.on_stage_end(self)
        for n in cfg.train:
            self.accelerator.unwrap_model(stage._forward_models[n], keep_fp32_wrapper=False)
            self.models[n].requires_grad_(True)
        self.save_checkpoint(in_stage=False)
        self.accelerator.free_memory()
        self.callbacks = []
        self._eval_loaders = {}

    def _loop(self, stage: Stage, iters: dict[str, Iterator], total: int, spe: int) -> None:
        cfg = stage.cfg
        weights = {k: w for k, w in cfg.loss_weights.items() if w != 0}
        accum = cfg.grad_accum
        callbacks = self._all_callbacks()
        train_models = [stage._forward_models[n] for n in cfg.train]
        params = [p for group in self.optimizer.param_groups for p in group["params"]] if self.optimizer else []
        # an optimizer with loss groups (DOT) gets each group's gradient separately: one backward per group,
        # synchronised across processes by hand (DDP's hooks assume one backward per forward)
        groups = self.loss_groups
        prog = stage.progress
        while prog.step < total:
            if prog.step % spe == 0:
                for cb in callbacks:
                    cb.on_epoch_start(self)
            terms: dict[str, torch.Tensor] = {}
            grads = GroupGrads(params, [g for g, _ in groups]) if groups else None
            for micro in range(accum):
                batch = send_to_device({k: next(it) for k, it in iters.items()}, self.device, non_blocking=True)
                with self._no_sync(train_models, micro < accum - 1 or grads is not None):
                    with self.accelerator.autocast():
                        out = stage.train_step(batch)
                    loss = _weighted_sum(out, weights, stage)
                    if grads is None:
                        self.accelerator.backward(loss / accum if accum > 1 else loss)
                    for i, (group, group_weights) in enumerate(groups or []):
                        part = _weighted_sum(out, group_weights, stage)
                        self.accelerator.backward(part / accum if accum > 1 else part, retain_graph=i < len(groups) - 1)
                        grads.take(group)
                out = {k: v.detach() for k, v in out.items()}
                out["loss"] = loss.detach()
                for k, v in out.items():
                    terms[k] = terms[k] + v / accum if k in terms else (v / accum if accum > 1 else v)
            if grads is not None:
                if self.world_size > 1:
                    grads.reduce(lambda g: self.accelerator.reduce(g, reduction="mean"))
                if cfg.clip_grad_norm:
                    grads.clip_(cfg.clip_grad_norm)
                grads.hand_over(getattr(self.optimizer, "optimizer", self.optimizer))  # the unwrapped optimizer
            else:
                if self.world_size > 1:
                    self._average_module_grads(stage)
                if cfg.clip_grad_norm:
                    self.accelerator.clip_grad_norm_(params, cfg.clip_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            prog.step += 1
            self.global_step += 1
            for cb in callbacks:
                cb.on_step_end(self, terms)
            if prog.step % spe == 0 or prog.step == total:
                for cb in callbacks:
                    cb.on_epoch_end(self)

    def _average_module_grads(self, stage: Stage) -> None:
        """A stage's extra modules (e.g. CTKD's temperature) are not DDP-wrapped: average their gradients here."""
        for module in stage.modules.values():
            for p in module.parameters():
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")

    @contextlib.contextmanager
    def _no_sync(self, models: list[nn.Module], skip_sync: bool):
        if not skip_sync or self.world_size == 1:
            yield
            return
        with contextlib.ExitStack() as stack:
            for m in models:
                stack.enter_context(self.accelerator.no_sync(m))
            yield


def _weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float], stage: Stage) -> torch.Tensor:
    missing = [k for k in weights if k not in terms]
    if missing:
        raise RuntimeError(
            f"stage '{stage.name}' ({stage.type_name}) returned no term {missing} but has a weight for it"
        )
    return sum(w * terms[k] for k, w in weights.items())


# keys that may differ between the run that wrote a checkpoint and the one resuming it
_RESUME_FREE = (
    "experiment.logger",
    "experiment.output_dir",
    "data.num_workers",
    "data.root",
    "data.download",
)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _check_compatible(old: dict[str, Any], new: dict[str, Any], where: str) -> None:
    a, b = _flatten(old), _flatten(new)
    diffs = [
        k for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>") and not k.startswith(_RESUME_FREE)
    ]  # fmt: skip
    if diffs:
        shown = "; ".join(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in diffs[:6])
        more = f" (+{len(diffs) - 6} more)" if len(diffs) > 6 else ""
        raise UserError(
            f"--resume: the config differs from the one {where} was written with: {shown}{more}. "
            f"Resume with the run's own config.yaml, or start a new run under another experiment.name."
        )
