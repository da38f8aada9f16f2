"""Small example networks, for the shipped example and fast tests.

``spa_export.examples:tiny_resnet`` is a residual network of a few ten
thousand parameters with every pattern a real CNN has: batch-norm after every
convolution, residual additions with and without a projection, a
concatenation, a depthwise convolution, global pooling and a linear head.
"""

from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(_Block(width, width, 1), _Block(width, width, 1))
        self.branch = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                    nn.Conv2d(width, width, 3, 1, 1, groups=width, bias=False),
                                    nn.BatchNorm2d(width), nn.ReLU())
        self.layer2 = nn.Sequential(_Block(2 * width, 2 * width, 2), _Block(2 * width, 2 * width, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.stem(x))
        x = torch.cat([x, self.branch(x)], dim=1)
        x = self.layer2(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_resnet(num_classes: int = 10) -> nn.Module:
    """A small residual network for 3x32x32 inputs."""
    return TinyResNet(num_classes=num_classes)


class TwoHeads(nn.Module):
    """A shared trunk with two outputs (class scores and a dense map): networks with several outputs."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.map_head = nn.Conv2d(16, 2, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        scores = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))
        return scores, self.map_head(features)


def two_heads(num_classes: int = 5) -> nn.Module:
    """A small network with two outputs, for 3x16x16 inputs."""
    return TwoHeads(num_classes=num_classes)


class DigitsCNN(nn.Module):
    """A small residual CNN for scikit-learn's 8x8 digits: the base of the shipped trained example.

    Every convolution is followed by batch-norm, as in the paper's channel
    experiments; a residual addition couples channels into dependency groups.
    """

    def __init__(self, num_classes: int = 5, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = _Block(width, width, 1)
        self.block2 = _Block(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def digits_cnn(num_classes: int = 5) -> nn.Module:
    """The digits base network (1x8x8 inputs scaled to [0, 1]), ``num_classes`` outputs."""
    return DigitsCNN(num_classes=num_classes)


def tiny_vit(num_classes: int = 10) -> nn.Module:
    """A small torchvision VisionTransformer for 3x32x32 inputs (2 layers, width 32, MLP 64, 2 heads)."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                             mlp_dim=64, num_classes=num_classes)


def prune_output_channels(layer: nn.Module, keep: torch.Tensor) -> None:
    """Prune a layer's output channels the way the paper's channel experiments do (in place).

    ``keep`` is a bool mask over the output channels. The frozen weight's rows
    are zeroed with ``torch.nn.utils.prune.custom_from_mask`` and made
    permanent with ``prune.remove``; the adapter's rows (SPLoRA's ``cols``,
    SPPaRA's ``adapter``) and the bias are zeroed for pruned channels, so the
    adapted layer computes exactly zero there; ``output_mask`` keeps the mask
    (float 0/1) on the layer. For training scripts and tests.
    """
    from torch.nn.utils import prune

    keep = keep.to(torch.bool)
    mask = keep.reshape(-1, *([1] * (layer.weight.dim() - 1))).expand_as(layer.weight).to(layer.weight.dtype)
    frozen = layer.weight.requires_grad
    prune.custom_from_mask(layer, "weight", mask)
    prune.remove(layer, "weight")
    layer.weight.requires_grad_(frozen)
    with torch.no_grad():
        adapter = getattr(layer, "adapter", None)
        if isinstance(adapter, torch.Tensor):          # SPPaRA: [out, in / groups]
            adapter[~keep] = 0
        elif adapter is not None and hasattr(adapter, "cols"):   # SPLoRA: cols [1, out, rank]
            adapter.cols[:, ~keep] = 0
        if getattr(layer, "bias", None) is not None:
            layer.bias[~keep] = 0
    layer.output_mask = keep.float()


class TokenEncoder(nn.Module):
    """Token features ``[N, T, features]`` -> class scores through an ``nn.TransformerEncoder``.

    The shape of a transformer built from PyTorch's own encoder layers: a
    linear embedding, a learned position table, post-norm (or pre-norm)
    encoder layers with ``nn.MultiheadAttention``, mean pooling and a head.
    """

    def __init__(self, num_classes: int = 5, features: int = 6, tokens: int = 8, width: int = 32,
                 heads: int = 4, hidden: int = 64, layers: int = 2, norm_first: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.position = nn.Parameter(torch.zeros(1, tokens, width))
        layer = nn.TransformerEncoderLayer(width, heads, hidden, dropout=0.1, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x) + self.position).mean(1))


def token_encoder(num_classes: int = 5) -> nn.Module:
    """A small ``nn.TransformerEncoder`` network for ``N,8,6`` token features (2 layers, width 32, 4 heads)."""
    return TokenEncoder(num_classes=num_classes)


class TokenClassifier(nn.Module):
    """Token ids ``[N, T]`` (int64) and a padding mask ``[N, T]`` (bool) -> class scores.

    A language model's shape: an ``nn.Embedding`` of the ids, a learned
    position table, an ``nn.TransformerEncoder`` that ignores padded tokens,
    and mean pooling over the tokens that are not padding. The first token is
    the class token and is never padding (so no sample is all padding).
    """

    def __init__(self, num_classes: int = 5, vocab: int = 50, tokens: int = 8, width: int = 32,
                 heads: int = 4, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(1, tokens, width))
        layer = nn.TransformerEncoderLayer(width, heads, hidden, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, num_classes)

    def forward(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        padding = torch.cat([torch.zeros_like(padding[:, :1]), padding[:, 1:]], 1)
        x = self.encoder(self.embed(ids) + self.position, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(x.dtype)
        return self.head((x * keep).sum(1) / keep.sum(1))


def token_classifier(num_classes: int = 5) -> nn.Module:
    """Token ids ``N,8`` in [0, 50) and a padding mask ``N,8`` -> scores (2 encoder layers, width 32, 4 heads)."""
    return TokenClassifier(num_classes=num_classes)
