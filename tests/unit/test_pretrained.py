"""`models.<name>.pretrained`: torchvision's ImageNet weights by name, checked before any download; offline, one
line naming the file and the folder; a model for another class count keeps its fresh classifier."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from helpers import CONFIGS, run_cli

from ssl_kd.errors import UserError
from ssl_kd.models import create_model
from ssl_kd.models.pretrained import cached_file, load_pretrained, weights_entry


def test_names_are_checked_against_torchvisions_weight_sets():
    assert weights_entry("resnet50", "IMAGENET1K_V2", "w").url.endswith("resnet50-11ad3fa6.pth")
    with pytest.raises(UserError, match=r"'IMAGENET1K_V3' is not a weight set of resnet50\. Did you mean"):
        weights_entry("resnet50", "IMAGENET1K_V3", "models.teacher.pretrained")
    with pytest.raises(UserError, match=r"models.t.pretrained: 'wrn_40_2' has no pretrained weights here"):
        weights_entry("wrn_40_2", "IMAGENET1K_V1", "models.t.pretrained")


@pytest.fixture
def torchvision_file(monkeypatch):
    """torchvision's download, replaced by the state dict of a freshly built torchvision ResNet-18."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda url, **kw: state)
    return state


def test_weights_load_by_torchvisions_names(torchvision_file):
    model = create_model("resnet18", 1000)
    load_pretrained(model, "resnet18", "IMAGENET1K_V1", "models.teacher.pretrained")
    for k, v in model.state_dict().items():
        assert torch.equal(v, torchvision_file[k]), k


def test_another_class_count_keeps_a_fresh_classifier(torchvision_file, capsys):
    model = create_model("resnet18", 10)
    fresh_fc = model.fc.weight.clone()
    load_pretrained(model, "resnet18", "IMAGENET1K_V1", "models.student.pretrained")
    assert torch.equal(model.conv1.weight, torchvision_file["conv1.weight"])
    assert torch.equal(model.fc.weight, fresh_fc)
    assert "the classifier keeps its fresh init" in capsys.readouterr().out


def test_offline_names_the_file_and_the_folder(monkeypatch):
    def offline(url, **kw):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    file = cached_file(weights_entry("resnet34", "IMAGENET1K_V1", "x"))
    with pytest.raises(UserError) as e:
        load_pretrained(create_model("resnet34", 1000), "resnet34", "IMAGENET1K_V1", "models.teacher.pretrained")
    msg = str(e.value)
    assert msg.startswith("models.teacher.pretrained: IMAGENET1K_V1 weights of resnet34 are not in the torch cache")
    assert str(file) in msg and f"into {file.parent}" in msg and "download.pytorch.org" in msg


def test_dry_run_checks_the_name_without_downloading(capsys, monkeypatch):
    def no_download(url, **kw):
        raise AssertionError("the dry run must not download")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    args = [CONFIGS / "quickstart.yaml", "models.teacher.arch=resnet18", "models.teacher.kwargs={}"]
    assert run_cli(*args, "models.teacher.pretrained=IMAGENET1K_V1", "--dry-run") == 0
    assert "<- torchvision IMAGENET1K_V1" in capsys.readouterr().out
    assert run_cli(*args, "models.teacher.pretrained=IMAGENET_V1", "--dry-run") == 2
    assert "models.teacher.pretrained: 'IMAGENET_V1' is not a weight set of resnet18" in capsys.readouterr().err


def test_a_multi_exit_model_loads_them_into_its_backbone(torchvision_file):
    from ssl_kd.models.pretrained import target

    model = create_model("multi_exit", 1000, backbone="resnet18", exits=[1, 2, 3], exit_label_factor=4)
    module, arch = target(model, "multi_exit", {"backbone": "resnet18"})
    assert module is model.backbone and arch == "resnet18"
    load_pretrained(module, arch, "IMAGENET1K_V1", "models.teacher.pretrained")
    assert torch.equal(model.backbone.layer4[1].conv2.weight, torchvision_file["layer4.1.conv2.weight"])
