"""Periodic evaluation on the test split: top-1/top-5 of the EMA model (when there is one) and the raw model;
tracks the best value, writes the stage's best weights, and records last/best for the run summary."""

from __future__ import annotations

from ssl_kd.engine.callback import Callback, CallbackOrder


class Evaluation(Callback):
    order = CallbackOrder.EVALUATION

    def __init__(self, runner) -> None:
        stage = runner.stage
        self.cfg = stage.cfg.eval
        self.save_best = stage.cfg.checkpoint.save_best
        self.models = self.cfg.models or (stage.cfg.train or stage.cfg.uses)
        spe = stage.progress.steps_per_epoch
        unit = stage.cfg.unit if self.cfg.unit == "auto" else self.cfg.unit
        every = self.cfg.every or (1 if unit == "epochs" else 0)
        self.period = every * (spe if unit == "epochs" else 1)  # in steps; 0 = only at the end
        self.best: float | None = None
        self.best_step = -1
        self.last_eval_step = -1

    def on_step_end(self, runner, terms) -> None:
        step = runner.stage.progress.step
        if self.period and step % self.period == 0:
            self.run(runner)

    def on_epoch_end(self, runner) -> None:
        prog = runner.stage.progress
        if prog.step == prog.total_steps and self.last_eval_step != prog.step:
            self.run(runner)

    def on_stage_end(self, runner) -> None:
        if runner.stage.progress.total_steps == 0 and self.last_eval_step < 0:
            self.run(runner)

    def run(self, runner) -> None:
        if not self.models:
            return
        runner._check_finite()
        stage = runner.stage
        record: dict[str, float] = {}
        weights = {}
        for n in self.models:
            live = runner.models[n]
            ema = runner.ema.get(n)
            model = ema.eval_module() if ema is not None else live
            for k, v in runner.evaluate(model, self.cfg.batch_size).items():
                record[f"test/{n}/{k}"] = v
            if ema is not None and self.cfg.raw:
                for k, v in runner.evaluate(live, self.cfg.batch_size).items():
                    record[f"test/{n}/raw_{k}"] = v
            if n in stage.cfg.train:
                weights[n] = {k: t.detach().clone() for k, t in model.state_dict().items()}
        metric = record[f"test/{self.models[0]}/top1"]
        step = stage.progress.step
        if self.best is None or metric > self.best:
            self.best, self.best_step = metric, step
            if self.save_best and weights:
                runner.save_stage_weights("best", weights)
        record[f"best/{self.models[0]}/top1"] = self.best
        record.update(stage.eval_extras())
        self.last_eval_step = step
        runner.log({"kind": "eval", **record})
        runner.results[stage.name] = {
            "type": stage.type_name,
            "model": self.models[0],
            "last": {k.removeprefix("test/"): v for k, v in record.items() if k.startswith("test/")},
            "best_top1": self.best,
            "best_step": self.best_step,
            "step": step,
        }

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "last_eval_step": self.last_eval_step}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.best, self.best_step = state["best"], state["best_step"]
            self.last_eval_step = state["last_eval_step"]
