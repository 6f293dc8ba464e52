"""Periodic evaluation on the test split: what each model's `predict` returns (the stage may say what that is),
of the EMA model when there is one and the raw model, plus any extra targets the stage declares (e.g. an
ensemble); tracks the best value, writes the stage's best weights, and records last/best for the run summary.

Evaluation at an epoch boundary runs at the epoch's end, after the stage's own epoch-end hook (e.g. pruning masks)
and the per-epoch LR step, so what is scored is what the next epoch starts from."""

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
        self.best_max: float | None = None  # best over evaluations of the max over a model's outputs (exits)
        self.last_eval_step = -1

    def on_step_end(self, runner, terms) -> None:
        prog = runner.stage.progress
        at_epoch_end = prog.step % prog.steps_per_epoch == 0 or prog.step == prog.total_steps
        if self.period and prog.step % self.period == 0 and not at_epoch_end:
            self.run(runner)

    def on_epoch_end(self, runner) -> None:
        prog = runner.stage.progress
        due = self.period and prog.step % self.period == 0
        if (due or prog.step == prog.total_steps) and self.last_eval_step != prog.step:
            self.run(runner)

    def on_stage_end(self, runner) -> None:
        if runner.stage.progress.total_steps == 0 and self.last_eval_step < 0:
            self.run(runner)

    def run(self, runner) -> None:
        if not self.models:
            return
        runner.check_finite()
        stage = runner.stage
        record: dict[str, float] = {}
        weights = {}
        for n in self.models:
            live = runner.models[n]
            ema = stage.ema_models.get(n)
            model = ema.eval_module() if ema is not None else live
            for k, v in self._score(runner, n, model).items():
                record[f"test/{n}/{k}"] = v
            if ema is not None and self.cfg.raw:
                for k, v in self._score(runner, n, live).items():
                    record[f"test/{n}/raw_{k}"] = v
            if n in stage.cfg.train:
                weights[n] = _copy(model)
        for name, predict in stage.eval_targets().items():
            models = tuple(runner.models[m] for m in self.models)
            for k, v in runner.evaluate(predict, self.cfg.batch_size, models).items():
                record[f"test/{name}/{k}"] = v
        metric = record[f"test/{self.models[0]}/top1"]
        step = stage.progress.step
        if self.best is None or metric > self.best:
            self.best, self.best_step = metric, step
            if self.save_best and weights:
                modules = {k: _copy(m) for k, m in stage.modules.items()}
                runner.save_stage_weights("best", {"models": weights, "modules": modules})
        record[f"best/{self.models[0]}/top1"] = self.best
        top = record.get(f"test/{self.models[0]}/max/top1")
        if top is not None:  # the number multi-exit references quote: best evaluation of the best exit
            self.best_max = top if self.best_max is None else max(self.best_max, top)
            record[f"best/{self.models[0]}/max/top1"] = self.best_max
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
            **({"best_max_top1": self.best_max} if self.best_max is not None else {}),
        }

    def _score(self, runner, name: str, model) -> dict[str, float]:
        stage = runner.stage
        return runner.evaluate(lambda batch: stage.predict(name, model, batch), self.cfg.batch_size, (model,))

    def state_dict(self) -> dict:
        return {
            "best": self.best, "best_step": self.best_step, "last_eval_step": self.last_eval_step,
            "best_max": self.best_max,
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.best, self.best_step = state["best"], state["best_step"]
            self.last_eval_step = state["last_eval_step"]
            self.best_max = state.get("best_max")


def _copy(module) -> dict:
    return {k: t.detach().clone() for k, t in module.state_dict().items()}
