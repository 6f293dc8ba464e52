"""W&B logging when `experiment.logger.wandb` is set. Tests run it with WANDB_MODE=disabled or offline."""

from __future__ import annotations

import os

from ssl_kd.engine.callback import Callback, CallbackOrder


class WandbLogger(Callback):
    order = CallbackOrder.LOGGER + 2

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.run = None

    def on_experiment_start(self, runner) -> None:
        if not runner.is_main:
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        if wandb.run is not None:  # started early by a sweep agent (see ssl_kd.run)
            self.run = wandb.run
            self.run.config.update(runner.resolved, allow_val_change=True)
        else:
            self.run = wandb.init(
                project=self.cfg.project, entity=self.cfg.entity, mode=self.cfg.mode, group=self.cfg.group,
                tags=self.cfg.tags, name=runner.cfg.experiment.name, config=runner.resolved,
                dir=str(runner.run_dir.root), id=runner.wandb_id, resume="allow" if runner.wandb_id else None,
            )  # fmt: skip
        runner.wandb_id = getattr(self.run, "id", None)

    def on_log(self, runner, record) -> None:
        if self.run is None:
            return
        stage = record.get("stage")
        skip = {"stage", "step", "global_step", "kind"}
        data = {f"{stage}/{k}": v for k, v in record.items() if k not in skip and isinstance(v, int | float)}
        self.run.log(data, step=record["global_step"])

    def on_experiment_end(self, runner) -> None:
        if self.run is not None:
            self.run.summary.update({f"{s}/best_top1": r["best_top1"] for s, r in runner.results.items()})
            offline = bool(getattr(self.run, "offline", False))
            where = getattr(getattr(self.run, "settings", None), "sync_dir", None)
            self.run.finish()
            self.run = None
            if offline and where:  # an offline run is only useful if one knows where it went
                print(f"W&B: offline run saved in {where}\n  upload it with: wandb sync {where}", flush=True)
