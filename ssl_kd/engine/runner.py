"""The one training loop: for each stage -> for each step -> stage.train_step -> backward/step -> hooks, callbacks.

Accelerate owns devices, mixed precision and DDP; the runner owns ordering, and delegates the rest:
`build` (models, weights, stage init), `state` (checkpoint/resume), `evaluation` (scoring `predict` functions on
the test split), `streams` (stage length, loaders), `plan` (--dry-run), `services` (dataset, transforms, split),
and the optimizer's backward strategy (`ssl_kd.optim.backward`). It knows no method: a stage's behaviour enters
only through the Stage hooks and the callbacks it is given.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import nn

from ssl_kd.config.registry import stage_types
from ssl_kd.config.schema import Config, StageConfig
from ssl_kd.data import mix_seed
from ssl_kd.engine import resume as ckpt_io
from ssl_kd.engine.build import apply_init, apply_module_init, build_models, check_stage_files, take_snapshots
from ssl_kd.engine.callback import Callback
from ssl_kd.engine.checkpoint_io import save_atomic
from ssl_kd.engine.feed import DeviceFeed
from ssl_kd.engine.freeze import check_freeze_parts, freeze_part
from ssl_kd.engine.interrupt import StopRequests
from ssl_kd.engine.plan import plan, preflight
from ssl_kd.engine.resources import (
    apply_threads,
    choose_resources,
    choose_speed,
    device_type_here,
    local_processes,
)
from ssl_kd.engine.run_dir import RunDir
from ssl_kd.engine.run_state import RunState
from ssl_kd.engine.scoring import Evaluator, Predict, eval_mode
from ssl_kd.engine.seed import seed_everything
from ssl_kd.engine.services import DataServices
from ssl_kd.engine.stage import Prepared, Stage
from ssl_kd.engine.streams import finish_batch, make_iterators, one_pass, stage_lengths
from ssl_kd.errors import TrainingStopped, UserError
from ssl_kd.memory import EMAModel
from ssl_kd.models import model_spec
from ssl_kd.optim import MissingTerm, build_optimizer, build_scheduler, loss_groups, make_backward

__all__ = ["Runner", "TrainingStopped"]

StageCallbacks = Callable[["Runner", Stage], list[Callback]]


def _run_state(name: str) -> property:
    """A Runner attribute that is a field of its RunState (callbacks read them on the runner, Catalyst-style)."""
    return property(lambda self: getattr(self.state, name), lambda self, v: setattr(self.state, name, v))


class RunnerStageContext:
    """The Runner's `StageContext` for one stage: the run's models, the stage's data services, its seed and the few
    things a stage may do to the run, and what the runner prepares for its forward passes."""

    def __init__(self, runner: Runner, name: str, scfg: StageConfig, index: int) -> None:
        self._runner, self._name, self._scfg, self._index = runner, name, scfg, index
        self.device = runner.device
        self.is_main = runner.is_main
        self.prepared = Prepared()

    def raw_model(self, name: str) -> nn.Module:
        return self._runner.models[name]

    def data_services(self) -> DataServices:
        return self._runner.services_for(self._name, self._scfg)

    def stage_seed(self, *parts: int) -> int:
        return mix_seed(self._runner.cfg.experiment.seed, self._index, *parts)

    def one_pass(self, dataset, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        return self._runner.one_pass(dataset, batch_size, seed)

    def replace_model(self, name: str, model: nn.Module) -> None:
        self._runner.replace_model(name, model)

    def log(self, record: dict[str, Any]) -> None:
        self._runner.log(record)

    def save_stage_weights(self, which: str, weights: dict[str, Any]) -> None:
        self._runner.save_stage_weights(which, weights)


class Runner:
    # the run's position and the stage's training objects live in `self.state` (a RunState)
    models = _run_state("models")
    stage = _run_state("stage")
    stage_index = _run_state("stage_index")
    global_step = _run_state("global_step")
    results = _run_state("results")
    wandb_id = _run_state("wandb_id")
    optimizer = _run_state("optimizer")
    scheduler = _run_state("scheduler")
    scheduler_per_epoch = _run_state("scheduler_per_epoch")
    callbacks = _run_state("callbacks")

    def __init__(
        self,
        cfg: Config,
        run_dir: RunDir,
        resolved: dict[str, Any],
        *,
        resume: bool = False,
        accelerator: Accelerator | None = None,
        callbacks: list[Callback] | None = None,
        stage_callbacks: StageCallbacks | None = None,
        dry_run: bool = False,
    ) -> None:
        self.dry_run = dry_run
        self.cfg = cfg
        self.run_dir = run_dir
        self.resolved = resolved
        self.resume = resume
        exp = cfg.experiment
        if accelerator is None:
            accelerator = Accelerator(mixed_precision=choose_speed(exp.precision, "auto", device_type_here()).precision)
        self.accelerator = accelerator
        self.device = self.accelerator.device
        # precision / channels_last with `auto` resolved for this device; the precision is the accelerator's own
        speed = choose_speed(exp.precision, exp.channels_last, self.device.type)
        self.speed = replace(speed, precision=str(accelerator.mixed_precision))
        self.is_main = self.accelerator.is_main_process
        self.world_size = self.accelerator.num_processes
        self.state = RunState()
        self.experiment_callbacks = list(callbacks or [])
        self.make_stage_callbacks = stage_callbacks or (lambda runner, stage: [])
        self.backward = None  # the optimizer's backward strategy for the current stage
        self.context: RunnerStageContext | None = None  # the current stage's
        self.services = DataServices(
            cfg, run_dir, write=self.is_main and not dry_run, device=self.device, channels_last=self.speed.channels_last
        )
        self._stage_services: dict[str, DataServices] = {}  # stages with their own `data:`
        # DataLoader workers and intra-op threads from the machine (`data.num_workers: auto`); the run header says so
        self.resources = choose_resources(
            cfg.data.num_workers, cfg.data.pipeline, local_processes(self.world_size), self.device.type
        )
        self.num_workers = self.resources.workers
        self.evaluator = Evaluator(self.services, self.accelerator, self.num_workers)
        self.stop_requests = StopRequests(self.world_size)  # signals reach it once the CLI installs it

    # ================================================================ services for stages and callbacks
    @property
    def stage_services(self) -> DataServices:
        """The current stage's data services: its own dataset when its config names one, else the run's."""
        return self.services if self.stage is None else self.services_for(self.stage.name, self.stage.cfg)

    def services_for(self, name: str, scfg: StageConfig) -> DataServices:
        """Stage `name`'s data services: its own dataset when its config names one, else the run's."""
        if scfg.data is None:
            return self.services
        if name not in self._stage_services:
            self._stage_services[name] = DataServices(
                self.cfg, self.run_dir, write=self.services.write, device=self.device, data=scfg.data,
                split_path=self.run_dir.root / f"split.{name}.npz", channels_last=self.services.channels_last,
            )  # fmt: skip
        return self._stage_services[name]

    @property
    def data(self):  # -> DatasetBundle
        return self.stage_services.data

    def one_pass(self, dataset, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over a stream dataset, this rank's share, on the device (see `Stage.one_pass`)."""
        for batch in one_pass(
            dataset, batch_size, seed=seed, rank=self.accelerator.process_index, world_size=self.world_size,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
        ):  # fmt: skip
            yield finish_batch(dataset, send_to_device(batch, self.device, non_blocking=True))

    def log(self, record: dict[str, Any]) -> None:
        """Send one metrics record (already reduced across ranks) to every logger."""
        if not self.is_main:
            return
        base = {
            "stage": self.stage.name if self.stage else None,
            "step": self.stage.progress.step if self.stage else 0,
            "global_step": self.global_step,
        }
        if self.stage is not None:
            base["epoch"] = self.stage.progress.epoch
        record = {**base, **record}
        for cb in self._all_callbacks():
            cb.on_log(self, record)

    def evaluate(self, predict: Predict | nn.Module, batch_size: int, modules: tuple[nn.Module, ...] = ()):
        """Top-1/top-5 and CE of a prediction function (or a model's `predict`) on the full test split, with the
        given modules (and a model passed as `predict`) in eval mode meanwhile."""
        if isinstance(predict, nn.Module):
            predict, modules = predict.predict, (*modules, predict)
        with eval_mode(*modules):
            return self.evaluator.evaluate(predict, batch_size)

    def reduce_mean(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        if not values:
            return {}
        keys = sorted(values)
        stacked = torch.stack([values[k].float().reshape(()) for k in keys])
        if self.world_size > 1:
            stacked = self.accelerator.reduce(stacked, reduction="mean")
        return dict(zip(keys, stacked.tolist()))

    def check_finite(self) -> None:
        """Let every guard (e.g. the NaN guard) stop the run before something acts on the weights."""
        for cb in self.callbacks:
            check = getattr(cb, "check", None)
            if check is not None:
                check(self)

    def save_checkpoint(self, in_stage: bool = True) -> None:
        self.check_finite()
        size = self.run_dir.metrics_size() if self.is_main else 0
        state = ckpt_io.checkpoint_state(self.state, in_stage, self.resolved, size, self.accelerator)
        if self.is_main:
            save_atomic(state, self.run_dir.last, keep_previous=True)
        self.accelerator.wait_for_everyone()

    def save_stage_weights(self, which: str, weights: dict[str, Any]) -> None:
        """`weights`: {"models": {name: state_dict}, "modules": {name: state_dict}} (or just {name: state_dict})."""
        if "models" not in weights:
            weights = {"models": weights}
        if self.is_main:
            save_atomic(ckpt_io.stage_weights(self.state, weights), self.run_dir.stage_file(self.stage.name, which))

    def replace_model(self, name: str, model: nn.Module) -> None:
        """Swap model `name` for another (e.g. a physically smaller pruned export) between stages. Its constructor
        spec (`create_model` sets it) is recorded in every later checkpoint, so resume and stage init rebuild
        this shape."""
        if self.stage is not None and name in self.stage.cfg.train:
            raise RuntimeError(f"model '{name}' is trained by stage '{self.stage.name}'; replace it between stages")
        if model_spec(model) is None:
            raise ValueError(f"model '{name}': the replacement has no constructor spec (build it with create_model)")
        self.models[name] = model.to(self.device)

    def new_stage(self, index: int, name: str, scfg: StageConfig) -> Stage:
        """Stage `name` of the schedule, with its context (kept as `self.context` for the loop)."""
        self.context = RunnerStageContext(self, name, scfg, index)
        return stage_types()[scfg.type](name, scfg, self.context)

    def plan(self) -> str:
        text = plan(
            self.state,
            self.cfg,
            self.run_dir,
            self.data,
            self.device,
            self.world_size,
            new_stage=self.new_stage,
            numerics=self.speed.describe(self.device.type),
        )
        head, _, rest = text.partition("\n")
        return f"{head}\n  machine: {self.resources.describe()}\n{rest}"

    def preflight(self) -> None:
        """Every check the config, its files and the data decide (engine/plan.py: preflight), before any work;
        on a dry-run runner (nothing written): the CLI calls it before it writes the run folder. The runner lets go
        of what the walk built (models, stages, their device copies of the data)."""
        try:
            preflight(self.state, self.cfg, self.run_dir, self.data, self.device, self.world_size, self.new_stage)
        finally:
            self.state, self.context = RunState(), None
            self._stage_services.clear()

    # ================================================================ the loop
    def run(self) -> dict[str, dict[str, Any]]:
        exp = self.cfg.experiment
        if self.is_main:
            self.run_dir.create()
        seed_everything(exp.seed, exp.deterministic)
        apply_threads(self.resources)
        # a resume takes every weight from its checkpoint: no pretrained download
        fields = self.data.train.fields
        self.models = build_models(self.cfg, self.data.num_classes, self.device, fields, weights=not self.resume)
        ckpt = None
        if self.resume:  # a resume checks the stages' files itself
            ckpt = ckpt_io.load_resume(self.state, self.cfg, self.resolved, self.run_dir, self.device, self.is_main)
        if ckpt is None:
            check_stage_files(self.models, self.cfg, self.run_dir, self.device)  # every stage's, before any work
        check_freeze_parts(self.models, self.cfg.stages)
        if ckpt is not None and not ckpt["in_stage"]:
            ckpt_io.restore_rng_of(self.accelerator, ckpt)
        for cb in self._all_callbacks():
            cb.on_experiment_start(self)
        start = ckpt["stage_index"] if ckpt else 0
        for index, (name, scfg) in enumerate(self.cfg.stages.items()):
            if index < start or not scfg.enabled:
                continue
            self.stage_index = index
            resume_here = ckpt if (ckpt and ckpt["in_stage"] and ckpt["stage_index"] == index) else None
            self._run_stage(self.new_stage(index, name, scfg), resume_here)
            signum = self.stop_requests.requested()
            if signum and index < len(self.cfg.stages) - 1:  # the boundary checkpoint is written
                raise self.stop_requests.stop(signum, f"after stage '{name}'")
        self.stage = None
        self.context = None
        for cb in self._all_callbacks():
            cb.on_experiment_end(self)
        return self.results

    def _all_callbacks(self) -> list[Callback]:
        return sorted([*self.callbacks, *self.experiment_callbacks], key=lambda c: c.order)

    def _prepare(self, stage: Stage) -> None:
        """Modes, DDP wrapping and EMA models for the stage's models and extra modules."""
        cfg = stage.cfg
        exp = self.cfg.experiment
        for n in (*cfg.uses, *cfg.train):
            if self.speed.channels_last:
                self.models[n].to(memory_format=torch.channels_last)
        for n in cfg.uses:
            self.models[n].eval().requires_grad_(False)
        for n in cfg.train:
            self.models[n].train().requires_grad_(True)
        ready = self.context.prepared
        ready.frozen = [freeze_part(self.models, path, f"stages.{stage.name}.freeze") for path in cfg.freeze]
        prepared = {n: self.accelerator.prepare_model(self.models[n]) for n in cfg.train}
        if exp.compile != "no":  # the trained models' forward passes; evaluation and EMA use the plain modules
            prepared = {n: torch.compile(m, mode=exp.compile) for n, m in prepared.items()}
        ready.models = {**{n: self.models[n] for n in cfg.uses}, **prepared}
        ready.modules = {n: self.accelerator.prepare_model(m) if _trainable(m) else m for n, m in stage.modules.items()}
        if stage.trains and cfg.ema.enabled:
            for n in cfg.train:
                stage.ema_models[n] = EMAModel(self.models[n], cfg.ema.decay, cfg.ema.average_buffers)
                stage.register_state(f"ema/{n}", stage.ema_models[n])

    def _build_optimizer(self, stage: Stage, total: int, spe: int) -> None:
        cfg = stage.cfg
        params = stage.parameters_to_train() if stage.trains else []
        self.optimizer = self.scheduler = self.backward = None
        if not params:
            return
        raw_opt = build_optimizer(cfg.optimizer, params)
        if loss_groups(cfg.optimizer, cfg.loss_weights) and getattr(self.accelerator, "scaler", None) is not None:
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
        train_params = [p for group in self.optimizer.param_groups for p in group["params"]]
        max_norm = cfg.clip_grad_norm

        def clip() -> None:
            if max_norm:
                self.accelerator.clip_grad_norm_(train_params, max_norm)

        reduce = (lambda g: self.accelerator.reduce(g, reduction="mean")) if self.world_size > 1 else None
        unwrapped = getattr(self.optimizer, "optimizer", self.optimizer)  # grouped strategies hand groups to it
        self.backward = make_backward(
            cfg.optimizer, cfg.loss_weights, train_params, unwrapped, clip=clip, reduce=reduce, max_norm=max_norm
        )

    def _run_stage(self, stage: Stage, ckpt: dict[str, Any] | None) -> None:
        cfg = stage.cfg
        self.stage = stage
        self.evaluator.services = self.stage_services
        if ckpt is None:
            apply_init(self.models, self.cfg, self.run_dir, stage.name, cfg, self.stage_index, self.device)
            take_snapshots(self.models, cfg)  # a resumed stage keeps the snapshot its checkpoint holds
        stage.setup()
        if ckpt is None:  # a resumed stage restores its modules from its checkpoint
            apply_module_init(stage.modules, self.cfg, self.run_dir, stage.name, cfg, self.stage_index)
        total, spe = stage_lengths(stage)
        stage.progress.total_steps, stage.progress.steps_per_epoch = total, spe
        self._prepare(stage)
        self._build_optimizer(stage, total, spe)
        self.callbacks = sorted([*self.make_stage_callbacks(self, stage), *stage.callbacks()], key=lambda c: c.order)

        if ckpt is not None:
            ckpt_io.restore_stage(self.state, ckpt)
        else:
            stage.on_stage_start()
        for cb in self._all_callbacks():
            cb.on_stage_start(self)
        iters = self._make_iterators(stage) if total else {}
        if ckpt is not None:
            ckpt_io.restore_rng_of(self.accelerator, ckpt)

        try:
            self._loop(stage, iters, total, spe)
        finally:
            del iters
        stage.on_stage_end()
        for cb in self._all_callbacks():
            cb.on_stage_end(self)
        ready = self.context.prepared
        for part in ready.frozen:
            part.release()
        for n in cfg.train:
            self.accelerator.unwrap_model(ready.models[n], keep_fp32_wrapper=False)
            self.models[n].requires_grad_(True)
        for n, m in ready.modules.items():
            if m is not stage.modules[n]:
                self.accelerator.unwrap_model(m, keep_fp32_wrapper=False)
        self.save_checkpoint(in_stage=False)
        self.accelerator.free_memory()
        self.callbacks = []
        self.evaluator.reset()

    def _make_iterators(self, stage: Stage) -> dict[str, Iterator]:
        return make_iterators(
            stage, stage.progress.step, seed=self.cfg.experiment.seed, stage_index=self.stage_index,
            rank=self.accelerator.process_index, world_size=self.world_size, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip

    def _loop(self, stage: Stage, iters: dict[str, Iterator], total: int, spe: int) -> None:
        accum = stage.cfg.grad_accum
        callbacks = self._all_callbacks()
        ready = self.context.prepared
        synced = [*(ready.models[n] for n in stage.cfg.train), *ready.modules.values()]
        strategy = self.backward
        prog = stage.progress
        # micro-batch t+1 is drawn, moved and finished while step t runs (on a side stream on CUDA)
        datasets = {k: stage.streams[k].dataset for k in iters}
        feed = DeviceFeed(iters, datasets, self.device, (total - prog.step) * accum)

        def after_backward() -> None:  # the step's gradient is in .grad (once per loss group for grouped strategies)
            stage.after_backward()
            for cb in callbacks:
                cb.on_after_backward(self)

        while prog.step < total:
            if prog.step % spe == 0:
                stage.on_epoch_start()
                for cb in callbacks:
                    cb.on_epoch_start(self)
            terms: dict[str, torch.Tensor] = {}
            strategy.start()
            for micro in range(accum):
                batch = feed.take()
                with self._no_sync(synced, micro < accum - 1 or strategy.hand_sync):
                    with self.accelerator.autocast():
                        losses, diagnostics = _split(stage.train_step(batch))
                    try:
                        loss = strategy.micro_step(losses, accum, self.accelerator.backward)
                    except MissingTerm as e:
                        raise RuntimeError(
                            f"stage '{stage.name}' ({stage.type_name}) returned no term {e.args[0]} but has a "
                            f"weight for it"
                        ) from None
                feed.prefetch()  # the step's kernels are queued: the next batch's work overlaps them
                out = {k: v.detach() for k, v in {**losses, **diagnostics}.items()}
                out["loss"] = loss.detach()
                for k, v in out.items():
                    terms[k] = terms[k] + v / accum if k in terms else (v / accum if accum > 1 else v)
            strategy.finish(after_backward)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            prog.step += 1
            self.global_step += 1
            stage.on_step_end()
            for cb in callbacks:
                cb.on_step_end(self, terms)
            if prog.step % spe == 0 or prog.step == total:
                stage.on_epoch_end()
                for cb in callbacks:
                    cb.on_epoch_end(self)
            if prog.step < total:  # at the stage's end the runner writes its boundary checkpoint anyway
                signum = self.stop_requests.requested()
                if signum:
                    self.save_checkpoint(in_stage=True)
                    raise self.stop_requests.stop(signum, f"in stage '{stage.name}' at step {prog.step}/{total}")

    @contextlib.contextmanager
    def _no_sync(self, models: list[nn.Module], skip_sync: bool):
        if not skip_sync or self.world_size == 1:
            yield
            return
        with contextlib.ExitStack() as stack:
            for m in models:
                if isinstance(m, torch.nn.parallel.DistributedDataParallel):
                    stack.enter_context(self.accelerator.no_sync(m))
            yield


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _split(out: Mapping[str, torch.Tensor] | tuple) -> tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]:
    """A stage returns its losses, or (losses, diagnostics)."""
    return out if isinstance(out, tuple) else (out, {})
