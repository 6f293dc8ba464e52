"""WideResNet as the SSL references build it (TorchSSL / FullMatch; USB with ``block_bias=False``).

Follows TorchSSL/TorchSSL@f26e1d4 models/nets/wrn.py (USB @1ef4cbe: semilearn/nets/wrn/wrn.py), including two
quirks of the PyTorch ports that change the function computed:

* The first block of group 1 has ``activate_before_residual``: its input is replaced by LReLU(BN(x)), and that
  activated tensor feeds both conv1 and the 1x1 shortcut.
* In the first block of the other groups (in != out, flag off) BN1/LReLU1 are computed but **unused**: conv1
  and the shortcut both read the raw input. Those BN1 layers get no gradient (running stats still update).

``faithful_preact=True`` (default) reproduces that. ``faithful_preact=False`` gives the block of the original
TF FixMatch code it was ported from: conv1 reads the activated input, the shortcut reads the raw input (unless
``activate_before_residual``). Parameter counts are identical either way.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from ssl_kd.models.base import ClassifierModel
from ssl_kd.models.registry import check_option, register_model

_CONV_INITS = ("kaiming_normal", "kaiming_uniform")


class _PreActBlock(nn.Module):
    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        *,
        activate_before_residual: bool,
        drop_rate: float,
        bias: bool,
        bn_momentum: float,
        bn_eps: float,
        slope: float,
        faithful: bool,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, momentum=bn_momentum, eps=bn_eps)
        self.act1 = nn.LeakyReLU(slope)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_ch, momentum=bn_momentum, eps=bn_eps)
        self.act2 = nn.LeakyReLU(slope)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=bias)
        # The references decide on channels only; also checking stride keeps shapes valid for odd configs
        # (e.g. widen 1 with first_stride 2) without changing any reference architecture.
        needs_proj = in_ch != out_ch or stride != 1
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=bias) if needs_proj else None
        self.activate_before_residual = activate_before_residual
        self.faithful = faithful

    def forward(self, x: Tensor) -> Tensor:
        act = self.act1(self.bn1(x))  # always computed: in the quirk case it still updates BN running stats
        if self.shortcut is None:
            conv_in, residual = act, x
        elif self.activate_before_residual:
            conv_in, residual = act, self.shortcut(act)
        elif self.faithful:
            conv_in, residual = x, self.shortcut(x)  # reference quirk: BN1/act1 output is discarded
        else:
            conv_in, residual = act, self.shortcut(x)  # TF FixMatch block
        out = self.drop(self.act2(self.bn2(self.conv1(conv_in))))
        return residual + self.conv2(out)


class SSLWideResNet(ClassifierModel):
    """Stem conv -> groups of pre-activation blocks -> BN -> LReLU -> global pool -> fc."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 2,
        num_groups: int = 3,
        first_stride: int = 1,
        drop_rate: float = 0.0,
        bn_momentum: float = 0.001,
        bn_eps: float = 1e-3,
        leaky_slope: float = 0.1,
        block_bias: bool = True,
        faithful_preact: bool = True,
        conv_init: str = "kaiming_normal",
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16] + [16 * widen_factor * 2**g for g in range(num_groups)]
        self.num_classes = num_classes
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=True)  # stem keeps its bias in USB too
        bn = {"bn_momentum": bn_momentum, "bn_eps": bn_eps}
        groups = []
        for g in range(num_groups):
            blocks = [
                _PreActBlock(
                    widths[g] if i == 0 else widths[g + 1],
                    widths[g + 1],
                    (first_stride if g == 0 else 2) if i == 0 else 1,
                    activate_before_residual=(g == 0),
                    drop_rate=drop_rate,
                    bias=block_bias,
                    slope=leaky_slope,
                    faithful=faithful_preact,
                    **bn,
                )
                for i in range(n)
            ]
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.ModuleList(groups)
        self.bn = nn.BatchNorm2d(widths[-1], momentum=bn_momentum, eps=bn_eps)
        self.act = nn.LeakyReLU(leaky_slope)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feat_dim = widths[-1]
        self.feat_channels = tuple(widths)
        self._init_weights(conv_init)

    def _init_weights(self, conv_init: str) -> None:
        # Conv biases keep PyTorch's default init, as in the references.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if conv_init == "kaiming_normal":  # TorchSSL / USB
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
                else:  # FullMatch's msra_uniform
                    nn.init.kaiming_uniform_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    # stage-based (ClassifierModel.forward_features): stem -> groups -> BN -> LReLU -> pool
    pre_pool_modules = ("bn", "act")

    @property
    def stages(self) -> nn.ModuleList:
        return self.groups

    def pre_pool(self, x: Tensor) -> Tensor:
        return self.act(self.bn(x))


def _build(name: str, num_classes: int, **options: Any) -> SSLWideResNet:
    """Check user options (names them in the error) and build; the options and defaults are SSLWideResNet's."""
    opts = inspect.signature(SSLWideResNet).bind(num_classes, **options)
    opts.apply_defaults()
    o = opts.arguments
    check_option(name, "first_stride", o["first_stride"], o["first_stride"] in (1, 2), "1 or 2 (2 for 96px STL-10)")
    check_option(name, "drop_rate", o["drop_rate"], 0.0 <= o["drop_rate"] < 1.0, "a float in [0, 1)")
    check_option(name, "bn_momentum", o["bn_momentum"], 0.0 < o["bn_momentum"] <= 1.0, "a float in (0, 1]")
    check_option(name, "bn_eps", o["bn_eps"], o["bn_eps"] > 0, "a positive float")
    check_option(name, "conv_init", o["conv_init"], o["conv_init"] in _CONV_INITS, " or ".join(_CONV_INITS))
    return SSLWideResNet(*opts.args, **opts.kwargs)


_ARCH_KEYS = ("depth", "widen_factor", "num_groups")


def _register_variant(name: str, doc: str, **arch: int) -> None:
    """Register one WRN size; its user options (and their defaults) are SSLWideResNet's, shown in its signature."""
    fixed = {k: arch.pop(k) for k in _ARCH_KEYS}
    defaults = arch  # option defaults that differ per variant (first_stride for STL)

    def factory(num_classes: int, channels: dict[str, int] | None = None, **options):
        model = _build(name, num_classes, **fixed, **{**defaults, **options})
        if channels:  # a filter-pruned shape (ssl_kd.prune's export): {conv name: filters kept}
            from ssl_kd.models.pruned import narrow_ssl_wrn

            narrow_ssl_wrn(model, name, channels)
        return model

    params = [inspect.Parameter("num_classes", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int)]
    for p in inspect.signature(SSLWideResNet).parameters.values():
        if p.name not in ("num_classes", *_ARCH_KEYS):
            kind = inspect.Parameter.KEYWORD_ONLY
            params.append(p.replace(kind=kind, default=defaults.get(p.name, p.default)))
    params.append(inspect.Parameter("channels", inspect.Parameter.KEYWORD_ONLY, default=None))
    factory.__signature__ = inspect.Signature(params, return_annotation=SSLWideResNet)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    register_model(name)(factory)


_register_variant(
    "wrn_28_2",
    "WRN-28-2 (1.47M params): the CIFAR-10 / SVHN backbone of FixMatch-family papers.",
    depth=28, widen_factor=2, num_groups=3,
)  # fmt: skip
_register_variant(
    "wrn_28_8",
    "WRN-28-8 (23.4M params): the CIFAR-100 backbone of TorchSSL / FullMatch.",
    depth=28, widen_factor=8, num_groups=3,
)  # fmt: skip
_register_variant(
    "wrn_var_37_2",
    "The STL-10 variant: a 4th group of 128*w channels and first-group stride 2 for 96px inputs. Despite the "
    "name, TorchSSL and USB build it with depth=28 (4 blocks per group, 4 groups).",
    depth=28, widen_factor=2, num_groups=4, first_stride=2,
)  # fmt: skip
