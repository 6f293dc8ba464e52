"""The WideResNet of the KD literature (RepDistiller / mdistiller): standard BN, ReLU, no conv biases.

Unlike the SSL WRN (``wrn.py``), a block whose channels change activates its input once and feeds the result
to both conv1 and the shortcut (the original Zagoruyko & Komodakis block), so every BN gets a gradient.
"""

from __future__ import annotations

from torch import Tensor, nn

from ssl_kd.models.base import ClassifierModel, repdistiller_init
from ssl_kd.models.registry import check_option, register_model


class _PreActBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        needs_proj = in_ch != out_ch or stride != 1
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False) if needs_proj else None
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(act)
        out = self.drop(self.relu(self.bn2(self.conv1(act))))
        return residual + self.conv2(out)


class CifarWideResNet(ClassifierModel):
    def __init__(self, depth: int, widen_factor: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.num_classes = num_classes
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self._blocks, self._drop_rate = n, drop_rate
        self.groups = nn.ModuleList(
            nn.Sequential(
                *[
                    _PreActBlock(
                        widths[g] if i == 0 else widths[g + 1],
                        widths[g + 1],
                        (1 if g == 0 else 2) if i == 0 else 1,
                        drop_rate,
                    )
                    for i in range(n)
                ]
            )
            for g in range(3)
        )
        self.bn = nn.BatchNorm2d(widths[-1])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feat_dim = widths[-1]
        self.feat_channels = widths
        repdistiller_init(self, linear_std=None)  # the KD repos' init: N(0, sqrt(2 / (k*k*out))) = kaiming fan_out

    # stage-based (ClassifierModel.forward_features): stem -> groups -> BN -> ReLU -> pool
    pre_pool_modules = ("bn", "relu")

    def build_stage(self, index: int, in_channels: int, stride: int) -> nn.Module:
        """A fresh group shaped like group `index` reading `in_channels` at `stride` (HSAKD's stride-1 branch on
        the last group; ``multi_exit`` with an exit after the last stage)."""
        out_ch = self.feat_channels[index + 1]
        group = nn.Sequential(*[_PreActBlock(in_channels if i == 0 else out_ch, out_ch, stride if i == 0 else 1,
                                             self._drop_rate) for i in range(self._blocks)])  # fmt: skip
        repdistiller_init(group, linear_std=None)
        return group

    @property
    def stages(self) -> nn.ModuleList:
        return self.groups

    def pre_pool(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(x))


def _register(depth: int, widen: int) -> None:
    name = f"wrn_{depth}_{widen}"

    def factory(num_classes: int, drop_rate: float = 0.0, channels: dict[str, int] | None = None) -> CifarWideResNet:
        check_option(name, "drop_rate", drop_rate, 0.0 <= drop_rate < 1.0, "a float in [0, 1)")
        if channels:  # a filter-pruned shape (ssl_kd.prune's export): {conv name: filters kept}
            from ssl_kd.models.pruned import pruned_cifar_wrn

            return pruned_cifar_wrn(depth, widen, num_classes, drop_rate, channels)
        return CifarWideResNet(depth, widen, num_classes, drop_rate)

    factory.__name__ = name
    factory.__doc__ = f"KD-literature WRN-{depth}-{widen} (RepDistiller/mdistiller)."
    register_model(name)(factory)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _widen)
