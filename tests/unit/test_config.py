"""Config loading: _base_ inheritance, overrides in both forms, W&B-rendered values, and one-line errors."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from ssl_kd.config import load_yaml, parse_overrides, parse_value, resolve_config, unflatten
from ssl_kd.errors import UserError


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


BASIC = """
models:
  net: {arch: mlp}
stages:
  train:
    type: supervised
    train: [net]
    iters: 3
"""


def test_base_inheritance_deep_merges_in_order(tmp_path):
    write(tmp_path / "a.yaml", "experiment: {seed: 1, precision: bf16}\nmodels: {net: {arch: mlp}}\n")
    write(tmp_path / "b.yaml", "experiment: {seed: 2}\n")
    write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\nexperiment: {deterministic: true}\n")
    cfg = load_yaml(tmp_path / "c.yaml")
    assert cfg["experiment"] == {"seed": 2, "precision": "bf16", "deterministic": True}
    assert cfg["models"]["net"]["arch"] == "mlp"
    assert "_base_" not in cfg


def test_scientific_floats_in_yaml_are_floats(tmp_path):
    write(tmp_path / "x.yaml", "lr: 1e-4\nwd: 5.0e-4\n")
    assert load_yaml(tmp_path / "x.yaml") == {"lr": 1e-4, "wd": 5e-4}


@pytest.mark.parametrize(
    "text,value",
    [("1e-05", 1e-05), ("None", None), ("null", None), ("False", False), ("true", True), ("[1,2]", [1, 2]),
     ("{'a': 1}", {"a": 1}), ("0.03", 0.03), ("7", 7), ("sgd", "sgd"), ("resnet8x4", "resnet8x4")],
)  # fmt: skip
def test_override_values_parse_like_wandb_renders_them(text, value):
    assert parse_value(text) == value


def test_both_override_forms_in_one_call(tmp_path):
    cfg_path = write(tmp_path / "x.yaml", BASIC)
    ov = parse_overrides(["stages.train.optimizer.lr=0.01", "--experiment.seed=3", "--stages.train.iters=5"])
    cfg, _ = resolve_config(cfg_path, ov)
    assert cfg.stages["train"].optimizer.lr == 0.01
    assert cfg.experiment.seed == 3
    assert cfg.stages["train"].iters == 5


def test_cli_wins_over_yaml(tmp_path):
    cfg_path = write(tmp_path / "x.yaml", BASIC + "experiment: {seed: 9}\n")
    cfg, _ = resolve_config(cfg_path, parse_overrides(["experiment.seed=4"]))
    assert cfg.experiment.seed == 4


def test_unflatten_dotted_keys():
    assert unflatten({"a.b": 1, "a.c.d": 2, "e": 3}) == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}


def test_defaults_come_from_the_schema(tmp_path):
    cfg, _ = resolve_config(write(tmp_path / "x.yaml", BASIC), [])
    st = cfg.stages["train"]
    assert st.loss_weights == {"ce": 1.0}
    assert st.optimizer.name == "sgd" and st.ema.decay == 0.999
    assert cfg.experiment.name == "x"  # the file stem


def test_loss_weights_merge_with_stage_defaults(tmp_path):
    text = BASIC.replace("type: supervised", "type: kd").replace("train: [net]", "train: [net]\n    uses: [t]")
    text = text.replace("models:\n  net: {arch: mlp}", "models:\n  net: {arch: mlp}\n  t: {arch: mlp}")
    cfg, _ = resolve_config(write(tmp_path / "x.yaml", text), parse_overrides(["stages.train.loss_weights.ce=0.5"]))
    assert cfg.stages["train"].loss_weights == {"ce": 0.5, "kd": 0.9}


def _err(tmp_path, text, overrides=()):
    with pytest.raises(UserError) as ei:
        resolve_config(write(tmp_path / "bad.yaml", text), parse_overrides(list(overrides)))
    return str(ei.value)


def test_unknown_key_names_path_and_suggests(tmp_path):
    msg = _err(tmp_path, BASIC, ["stages.train.optimizer.lrr=0.1"])
    assert "stages.train.optimizer.lrr: unknown key" in msg
    assert "Did you mean 'lr'?" in msg
    assert "bad.yaml" in msg


def test_unknown_stage_level_key(tmp_path):
    msg = _err(tmp_path, BASIC, ["stages.train.epoch=3"])
    assert "stages.train.epoch" in msg and "Did you mean 'epochs'?" in msg


def test_wrong_type_names_path_and_value(tmp_path):
    msg = _err(tmp_path, BASIC, ["stages.train.batch_size=lots"])
    assert "stages.train.batch_size" in msg and "'lots'" in msg


def test_bad_literal_lists_valid_values(tmp_path):
    msg = _err(tmp_path, BASIC, ["experiment.precision=fp8"])
    assert "experiment.precision" in msg and "'bf16'" in msg


def test_unknown_stage_type_suggests(tmp_path):
    msg = _err(tmp_path, BASIC.replace("supervised", "supervise"))
    assert "stages.train.type" in msg and "Did you mean 'supervised'?" in msg


def test_undefined_model_reference(tmp_path):
    msg = _err(tmp_path, BASIC.replace("train: [net]", "train: [nett]"))
    assert "stages.train.train" in msg and "Did you mean 'net'?" in msg


def test_missing_base_file(tmp_path):
    msg = _err(tmp_path, "_base_: nothere.yaml\n" + BASIC)
    assert "nothere.yaml" in msg and "not found" in msg


def test_base_cycle(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(UserError, match="loops"):
        load_yaml(tmp_path / "a.yaml")


def test_bad_base_type(tmp_path):
    assert "_base_" in _err(tmp_path, "_base_: {a: 1}\n" + BASIC)


def test_both_iters_and_epochs(tmp_path):
    msg = _err(tmp_path, BASIC, ["stages.train.epochs=2"])
    assert "stages.train" in msg and "not both" in msg


def test_override_into_a_value_is_refused(tmp_path):
    msg = _err(tmp_path, BASIC, ["stages.train.iters.x=1"])
    assert "stages.train.iters" in msg


def test_malformed_override():
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["stages.train.iters"])


def test_invalid_yaml(tmp_path):
    msg = _err(tmp_path, "a: [1, 2\n")
    assert "not valid YAML" in msg


def test_resolved_config_round_trips(tmp_path):
    from ssl_kd.config import resolved_dict, validate_config

    cfg, _ = resolve_config(write(tmp_path / "x.yaml", BASIC), [])
    again = validate_config(yaml.safe_load(yaml.safe_dump(resolved_dict(cfg))))
    assert resolved_dict(again) == resolved_dict(cfg)


def test_partial_override_keeps_stage_type_nested_defaults(tmp_path):
    text = BASIC.replace("type: supervised", "type: fullmatch").replace("iters: 3", "iters: 3\n    ema: {decay: 0.99}")
    cfg, _ = resolve_config(write(tmp_path / "x.yaml", text), parse_overrides(["stages.train.optimizer.lr=0.01"]))
    st = cfg.stages["train"]
    assert st.ema.enabled and st.ema.decay == 0.99  # fullmatch enables EMA; the YAML only changed the decay
    assert st.optimizer.lr == 0.01 and st.optimizer.nesterov and st.optimizer.no_decay_bn_bias
    assert st.scheduler.name == "cosine_cycles" and st.loss_weights["eml"] == 1.0
