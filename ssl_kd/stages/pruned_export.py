"""Export: swap each model the stage reads for its physically smaller pruned network (ssl_kd.prune.compact).

    export: {type: export, uses: [student]}            # after a stage with `prune:`; before a fine-tune stage

The small network replaces the model for the stages that follow (`init: continue` fine-tunes it; its constructor
spec is in every later checkpoint, so resume rebuilds it), is evaluated like any `uses` model, and is written to
`checkpoints/<stage>/{best,last}.pt` with its constructor spec, loadable by `init: {mode: stage}` or
`models.<m>.checkpoint`. `python -m ssl_kd.export RUN_DIR --stage NAME --out model.pt` does the same from a
finished run's stage weights.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ssl_kd.config.schema import StageConfig
from ssl_kd.engine import Stage, register_stage
from ssl_kd.errors import UserError
from ssl_kd.prune import export_pruned


class ExportConfig(StageConfig):
    input_shape: list[int] | None = None  # of one image, for FLOPs and the check; default: 3 x the test images' H, W
    check_batch: int = Field(8, ge=1)  # random images on which the small network must equal the masked model

    @model_validator(mode="after")
    def _models(self) -> ExportConfig:
        if self.train:
            raise ValueError("an 'export' stage trains nothing: list the models to export under `uses`")
        if not self.uses:
            raise ValueError("an 'export' stage needs models to export: set `uses: [model, ...]`")
        return self


@register_stage("export")
class Export(Stage):
    Config = ExportConfig
    cfg: ExportConfig
    trains = False

    def on_stage_start(self) -> None:
        weights = {}
        shape = tuple(self.cfg.input_shape or self._test_image_shape())
        for name in self.cfg.uses:
            res = export_pruned(
                self.raw_model(name), input_shape=shape, check_batch=self.cfg.check_batch,
                where=f"stages.{self.name} (model '{name}')",
            )  # fmt: skip
            self.replace_model(name, res.model)
            weights[name] = res.model.state_dict()
            if self.is_main:
                print(res.describe(f"  export '{name}'"), flush=True)
            (p0, p1), (f0, f1) = res.params, res.flops
            self.log({
                "kind": "export", f"export/{name}/params": p1, f"export/{name}/params_before": p0,
                f"export/{name}/flops": f1, f"export/{name}/flops_before": f0,
                f"export/{name}/max_abs_diff": res.max_abs_diff,
            })  # fmt: skip
        for which in ("best", "last"):  # `init: {mode: stage}` reads `best` by default
            self.save_weights(which, {"models": weights})

    def _test_image_shape(self) -> tuple[int, int, int]:
        try:
            h, w = self.data.test.image_shape
        except (AttributeError, TypeError, ValueError):  # a lazily decoded image set may not know it
            raise UserError(f"stages.{self.name}.input_shape: set one image's shape, e.g. [3, 224, 224]") from None
        return 3, int(h), int(w)
