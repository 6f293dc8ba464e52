"""ssl_kd's SSL presets against USB's own code (semilearn 0.3.2 = microsoft/Semi-supervised-learning@1ef4cbe) on the
same logits: per-sample masks / weights, pseudo-labels, every loss term, the total loss and the policy's state
(EMA statistics, alignment, rho) after every step, for several seeds and class counts.

Both sides run their real step on a stand-in network that returns drawn logits for the image ids it is given:
USB's `train_step` (with its hooks, on an algorithm object with only the attributes the step reads; USB's trainer
is not built) and ssl_kd's `SemiSupervised.train_step` (the stage's components built by `build_parts`, no
engine). semilearn is a dev-only dependency, loaded only here and only when present:

    pip install --no-deps --target /work/usb_site semilearn==0.3.2
    python benchmarks/usb_equivalence.py --usb /work/usb_site --steps 200 --seeds 0 1 2 --classes 10 100

Prints one row per (algorithm, classes): max |delta| over seeds and steps of each compared quantity.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _usb  # noqa: E402

from ssl_kd.engine import Stage  # noqa: E402
from ssl_kd.engine.stage import Progress  # noqa: E402
from ssl_kd.stages.semi_supervised import (  # noqa: E402
    UDA,
    AdaMatch,
    Dash,
    FreeMatch,
    MeanTeacher,
    PiModel,
    PseudoLabel,
    SoftMatch,
)

# ------------------------------------------------------------------------------------------------ loading semilearn


class _StubBase:
    """What USB's train_steps read of AlgorithmBase (semilearn/core/algorithmbase.py), nothing else."""

    def __init__(self) -> None:
        self.hooks_dict: dict = {}

    def register_hook(self, hook, name=None, priority="NORMAL"):
        self.hooks_dict[name] = hook

    def set_hooks(self):
        pass

    def call_hook(self, fn_name, hook_name=None, *args, **kwargs):
        return getattr(self.hooks_dict[hook_name], fn_name)(self, *args, **kwargs)

    def registered_hook(self, hook_name):
        return hook_name in self.hooks_dict

    def compute_prob(self, logits):
        return torch.softmax(logits, dim=-1)

    def process_out_dict(self, out_dict=None, **kwargs):
        return kwargs

    def process_log_dict(self, log_dict=None, prefix="train", **kwargs):
        return kwargs

    amp_cm = contextlib.nullcontext


def load_usb(site: str) -> dict[str, type]:
    """semilearn's algorithm classes with a stub AlgorithmBase: its package __init__ (datasets, nets, trainers and
    their dependencies) is not run; the algorithm files, hooks and losses are semilearn's own."""
    root = _usb.use_site(site) / "semilearn"
    for name, sub in [("semilearn", ""), ("semilearn.algorithms", "algorithms"), ("semilearn.core", "core"),
                      ("semilearn.core.hooks", "core/hooks"), ("semilearn.core.utils", "core/utils")]:  # fmt: skip
        m = types.ModuleType(name)
        m.__path__ = [str(root / sub)]
        sys.modules[name] = m
    sys.modules["semilearn.core.hooks"].Hook = importlib.import_module("semilearn.core.hooks.hook").Hook
    crit = importlib.import_module("semilearn.core.criterions")
    _StubBase.ce_loss, _StubBase.consistency_loss = crit.CELoss(), crit.ConsistencyLoss()
    sys.modules["semilearn.core"].AlgorithmBase = _StubBase
    sys.modules["semilearn.core.algorithmbase"] = types.SimpleNamespace(AlgorithmBase=_StubBase)
    sys.modules["semilearn.core.utils"].ALGORITHMS = SimpleNamespace(register=lambda name: lambda cls: cls)
    sys.modules["semilearn.core.utils"].EMA = object
    sys.modules["semilearn.datasets"] = types.SimpleNamespace(DistributedSampler=object)
    out = {}
    for alg, cls in [("freematch", "FreeMatch"), ("softmatch", "SoftMatch"), ("adamatch", "AdaMatch"),
                     ("dash", "Dash"), ("uda", "UDA"), ("pseudolabel", "PseudoLabel"),
                     ("meanteacher", "MeanTeacher"), ("pimodel", "PiModel")]:  # fmt: skip
        pkg = types.ModuleType(f"semilearn.algorithms.{alg}")
        pkg.__path__ = [str(root / "algorithms" / alg)]
        sys.modules[pkg.__name__] = pkg
        out[alg] = getattr(importlib.import_module(f"semilearn.algorithms.{alg}.{alg}"), cls)
    return out


# ------------------------------------------------------------------------------------------------ the stand-in net


class Out(dict):
    """USB reads outputs['logits'], ssl_kd outputs.logits."""

    __getattr__ = dict.__getitem__


class TableNet(nn.Module):
    """Returns the drawn logits of the image ids it is given (ids index rows of `table`); `teacher` rows when the
    EMA weights are 'applied' (USB's ema.apply_shadow, ssl_kd's EMA model)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = self.teacher = None
        self.shadow = False

    def forward(self, x):
        rows = (self.teacher if self.shadow else self.table)[x.long()]
        return Out(logits=rows, feat=rows)


class Harness:
    """ssl_kd's step without the engine: the stage object with a stand-in net, its components from build_parts."""

    @staticmethod
    def make(stage_cls: type[Stage], overrides: dict, num_samples: int, num_classes: int, total: int, net: TableNet):
        cfg = stage_cls.Config.model_validate({"type": stage_cls.type_name, "train": ["net"], **overrides})

        class Local(stage_cls):
            device = torch.device("cpu")

            def model(self, name):
                return net

            def ema(self, name):
                teacher = TableNet()
                teacher.table = net.teacher
                return teacher

        st = Local("ssl", cfg, None)
        st.net = "net"
        st.progress = Progress(0, total, 1)
        st.build_parts(num_samples, num_classes)
        return st


# ------------------------------------------------------------------------------------------------ the comparison

N_LB, N_ULB = 16, 48
# Dash decays rho every 10 * num_iter_per_epoch steps: every 20 here; from 0.3 it reaches its floor (hard labels) at
# step 160
SPE_DASH = 2

CASES = {
    # name: (ssl_kd stage, its overrides, USB attributes, two unlabelled views, separate passes)
    "freematch": (FreeMatch, {}, dict(T=0.5, hard_label=True, ema_p=0.999, use_quantile=False, clip_thresh=False,
                                      lambda_e=0.001, lambda_u=1.0)),
    "softmatch": (SoftMatch, {}, dict(T=0.5, hard_label=True, dist_align=True, dist_uniform=True, ema_p=0.999,
                                      n_sigma=2, per_class=False, lambda_u=1.0)),
    "adamatch": (AdaMatch, {}, dict(T=0.5, hard_label=True, ema_p=0.999, p_cutoff=0.95, lambda_u=1.0)),
    "dash": (Dash, {"threshold": {"type": "dash", "rho_init": 0.3, "update_every": 10 * SPE_DASH}},
             dict(T=0.5, num_wu_iter=0, num_wu_eval_iter=100, gamma=1.27, C=1.0001, rho_min=0.05, rho_init=0.3,
                  num_iter_per_epoch=SPE_DASH, lambda_u=1.0)),
    "uda": (UDA, {"tsa": "exp"}, dict(T=0.4, p_cutoff=0.8, tsa_schedule="exp", lambda_u=1.0)),
    "pseudolabel": (PseudoLabel, {}, dict(p_cutoff=0.95, unsup_warm_up=0.4, lambda_u=1.0)),
    "meanteacher": (MeanTeacher, {}, dict(unsup_warm_up=0.4, lambda_u=50.0)),
    "pimodel": (PiModel, {}, dict(unsup_warm_up=0.4, lambda_u=10.0)),
}  # fmt: skip


def usb_algorithm(cls: type, attrs: dict, num_classes: int, total: int, net: TableNet):
    a = cls.__new__(cls)
    _StubBase.__init__(a)
    a.args = SimpleNamespace(num_classes=num_classes, **attrs)
    a.num_classes, a.use_cat, a.distributed, a.world_size = num_classes, True, False, 1
    a.it, a.num_train_iter, a.model, a.epoch = 0, total, net, 0
    for k, v in attrs.items():
        setattr(a, k, v)
    a.use_hard_label = attrs.get("hard_label", True)
    a.bn_controller = SimpleNamespace(freeze_bn=lambda m: None, unfreeze_bn=lambda m: None)

    def shadow(on):
        return lambda: setattr(net, "shadow", on)

    a.ema = SimpleNamespace(apply_shadow=shadow(True), restore=shadow(False))
    if hasattr(a, "init"):
        import inspect  # noqa: PLC0415

        params = inspect.signature(a.init).parameters
        a.init(**{k: attrs[k] for k in params if k in attrs})
    a.set_hooks()
    if cls.__name__ == "Dash":
        a.use_hard_label = False
    return a


def capture(obj, method: str, store: dict, key: str) -> None:
    """Record what `obj.method` returns on every call (the mask, the pseudo-label)."""
    fn = getattr(obj, method)

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        store[key] = out
        return out

    setattr(obj, method, wrapped)


def state_pairs(name: str, usb, ours) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    h, t, al = usb.hooks_dict, ours.threshold, ours.align
    if name == "freematch":
        m = h["MaskingHook"]
        return [("p_model", m.p_model, t.p_model), ("label_hist", m.label_hist, t.label_hist),
                ("tau_t", m.time_p, t.time_p)]  # fmt: skip
    if name == "softmatch":
        m, d = h["MaskingHook"], h["DistAlignHook"]
        return [("mu_t", torch.as_tensor(m.prob_max_mu_t), t.mu), ("var_t", torch.as_tensor(m.prob_max_var_t), t.var),
                ("p_model", d.p_model, al.p_model)]  # fmt: skip
    if name == "adamatch":
        d = h["DistAlignHook"]
        return [("p_model", d.p_model, al.p_model), ("p_target", d.p_target, al.p_target)]
    if name == "dash":
        return [("rho", torch.as_tensor(h["MaskingHook"].rho, dtype=torch.float32), t.rho)]
    return []


def run_case(name: str, usb_cls: type, seed: int, num_classes: int, steps: int) -> dict[str, float]:
    stage_cls, overrides, attrs = CASES[name]
    g = torch.Generator().manual_seed(seed * 1000 + num_classes)
    usb_net, our_net = TableNet(), TableNet()
    with contextlib.redirect_stdout(None):  # DistAlignEMAHook prints its p_target
        usb = usb_algorithm(usb_cls, attrs, num_classes, steps, usb_net)
    ours = Harness.make(stage_cls, overrides, N_ULB, num_classes, steps, our_net)
    weights = ours.cfg.loss_weights
    two = ours.cfg.views != "weak"
    got_usb: dict = {}
    got_ours: dict = {}
    mask_hook = usb.hooks_dict.get("MaskingHook")
    if mask_hook is not None:
        capture(mask_hook, "masking", got_usb, "mask")
    if "PseudoLabelingHook" in usb.hooks_dict:
        capture(usb.hooks_dict["PseudoLabelingHook"], "gen_ulb_targets", got_usb, "target")
    if name == "freematch":  # USB's fairness term is a module function of freematch.py
        mod = sys.modules["semilearn.algorithms.freematch.freematch"]
        fn = getattr(mod, "_entropy_loss", mod.entropy_loss)
        mod._entropy_loss = fn

        def entropy_loss(*a, **k):
            out = fn(*a, **k)
            got_usb["fairness"] = out[0].detach()
            return out

        mod.entropy_loss = entropy_loss
    capture(ours.threshold, "weights", got_ours, "mask")
    capture(ours, "_targets", got_ours, "target")
    worst: dict[str, float] = {}

    def note(key, a, b):
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        worst[key] = max(worst.get(key, 0.0), (a - b).abs().max().item() if a.numel() else 0.0)

    n_views = 3 if two else 2
    for t in range(steps):
        scale = 1.0 + 6.0 * torch.rand((), generator=g)  # from flat to confident predictions
        rows = N_LB + n_views * N_ULB if two else N_LB + N_ULB
        table = torch.randn(rows, num_classes, generator=g) * scale
        teacher = torch.randn(rows, num_classes, generator=g) * scale
        y_lb = torch.randint(0, num_classes, (N_LB,), generator=g)
        ids = torch.arange(rows)
        x_lb, x_w = ids[:N_LB], ids[N_LB : N_LB + N_ULB]
        x_s = ids[N_LB + N_ULB : N_LB + 2 * N_ULB] if two else None
        for net in (usb_net, our_net):
            net.table = table.clone().requires_grad_(True)
            net.teacher = teacher.clone()
        usb.it = t
        ours.progress.step = t
        kw = dict(x_lb=x_lb, y_lb=y_lb, x_ulb_w=x_w) | ({"x_ulb_s": x_s} if two else {})
        out, log = usb.train_step(**kw)
        y_u = torch.randint(0, num_classes, (N_ULB,))
        batch = {"labeled": {"x": x_lb, "y": y_lb}, "unlabeled": {"w": x_w, "idx": torch.arange(N_ULB), "y": y_u}}
        if two:
            batch["unlabeled"]["s"] = x_s
        losses, diag = ours.train_step(batch)
        total = sum(w * losses[k] for k, w in weights.items() if w)
        note("total loss", out["loss"].detach(), total.detach())
        note("sup", log["sup_loss"], losses["sup"].detach())
        if "unsup_loss" in log:
            ramp = 1.0
            if ours.cfg.unsup_warmup > 0:
                ramp = min(1.0, t / (ours.cfg.unsup_warmup * steps))
            note("unsup", log["unsup_loss"] * ramp, losses["unsup"].detach())
        if "mask" in got_usb:
            note("mask / weight", got_usb["mask"], got_ours["mask"])
        if "target" in got_usb:
            a, b = got_usb["target"], got_ours["target"]
            note("pseudo-label", a.float(), b.float() if b.ndim == a.ndim else b.argmax(1).float())
        if "fairness" in got_usb:
            note("fairness", got_usb.pop("fairness"), losses["fairness"].detach())
        for key, a, b in state_pairs(name, usb, ours):
            note(f"state {key}", a, b)
        # the gradients each side's total sends into the logits
        ga = torch.autograd.grad(out["loss"], usb_net.table)[0]
        gb = torch.autograd.grad(total, our_net.table)[0]
        note("grad wrt logits", ga, gb)
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--usb", default="/work/usb_site", help="folder with semilearn 0.3.2 (pip install --target)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    usb = load_usb(args.usb)
    print(f"ssl_kd vs semilearn 0.3.2: {args.steps} steps, seeds {args.seeds}, B_l={N_LB}, B_u={N_ULB}")
    print(f"{'algorithm':<12} {'C':>4}  max |delta| over seeds and steps")
    for name in args.only or CASES:
        for c in args.classes:
            worst: dict[str, float] = {}
            for seed in args.seeds:
                for k, v in run_case(name, usb[name], seed, c, args.steps).items():
                    worst[k] = max(worst.get(k, 0.0), v)
            print(f"{name:<12} {c:>4}  " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()), flush=True)


if __name__ == "__main__":
    main()
