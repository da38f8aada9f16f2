"""Layers that call functions instead of being torch.nn's modules: norm-activation layers, padding
convolutions, linear subclasses (how timm writes them), and real timm networks.

torch.fx traces through a module that is not torch.nn's own, so these show up as ``F.batch_norm``,
``F.pad``, ``F.conv2d`` and ``F.linear`` on the module's tensors. They must lose channels as their
torch.nn counterparts do, exactly, and keep what the subclass adds (its activation, its padding).
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_plan_cases import _check_exact, _randomize_bn, _zero_in, _zero_out, core
from torch import nn
from torch.nn import functional as F

from spa_export.runtime.inputs import as_inputs
from spa_export.stages.apply import apply_plan
from spa_export.stages.plan import make_plan
from spa_export.stages.plan.trace import trace_channels

SHAPE = (1, 3, 12, 12)


class NormAct(nn.BatchNorm2d):
    """A norm-activation layer: ``F.batch_norm`` on its own statistics, then its activation."""

    def __init__(self, n: int, act: nn.Module) -> None:
        super().__init__(n)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                         0.1, self.eps)
        return self.act(x)


class PadConv(nn.Conv2d):
    """A convolution that pads in its own forward, asymmetrically, then calls the function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (0, 2, 1, 1)), self.weight, self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class FLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(PadConv(3, 8, 3), NormAct(8, nn.SiLU()), PadConv(8, 10, 3), NormAct(10, nn.Hardswish()),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), FLinear(10, 4)).eval()
    _randomize_bn(net)
    return net


def test_functional_layers_lose_masked_channels_exactly_and_keep_their_class() -> None:
    net = _net()
    _zero_out(net[0], [1, 4, 6])          # output masks: constant channels after the norm-activation
    _zero_out(net[2], [0, 3])
    _zero_in(net[6], [0, 3, 7, 9])        # the head does not read 0 and 3 (zero anyway), nor 7 and 9
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert core(pruned[0]).out_channels == 5 and pruned[1].num_features == 5
    assert core(pruned[2]).in_channels == 5 and core(pruned[2]).out_channels == 6
    assert pruned[3].num_features == 6 and pruned[6].in_features == 6
    # the subclasses stay what they were, with their activations and their own padding
    assert type(core(pruned[0])) is PadConv and type(core(pruned[2])) is PadConv and type(pruned[6]) is FLinear
    assert type(pruned[1]) is NormAct and isinstance(pruned[1].act, nn.SiLU)
    assert isinstance(pruned[3].act, nn.Hardswish)
    # the constant of the removed channels varies near the border (the conv pads zeros): added as a tensor
    assert plan.folds and pruned[2] is not core(pruned[2])
    assert net[1].num_features == 8 and net[0].out_channels == 8   # the caller's network is unchanged


def test_a_norm_layer_called_twice_or_in_training_mode_keeps_its_channels() -> None:
    net = _net()
    _zero_out(net[0], [1, 4, 6])
    shared = nn.Sequential(net[0], net[1], net[1]).eval()        # the same statistics applied twice
    plan = make_plan(shared, as_inputs(SHAPE))
    assert not plan.modules and any("more than once" in why for g in plan.groups for why in g.kept_reasons)
    training = copy.deepcopy(net).eval()
    training[1].training = True                                  # F.batch_norm on batch statistics
    plan = make_plan(training[:2], as_inputs(SHAPE))
    assert not plan.modules


def test_a_function_on_tensors_that_are_not_a_layers_own_stays() -> None:
    class Standardised(nn.Conv2d):
        """A weight-standardised convolution: its weight is computed, its input columns are not independent."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std((1, 2, 3), keepdim=True) + 1e-5)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), Standardised(6, 4, 3, padding=1)).eval()
    _randomize_bn(net)
    _zero_in(net[3], [2])   # not a mask of the standardised weight: the standardisation reads the column
    plan = make_plan(net, as_inputs(SHAPE))
    assert not plan.modules
    held = [why for _, why in trace_channels(net, as_inputs(SHAPE)).holds]
    assert any("conv2d on tensors that are not one layer's weight and bias" in why for why in held), held


timm = pytest.importorskip("timm", reason="timm is in the test extra")


@pytest.mark.parametrize(("arch", "size"), [("timm.models.efficientnet:efficientnet_b0", 64),
                                            ("timm.models.mobilenetv3:mobilenetv3_small_050", 64)])
def test_timm_norm_act_networks_shrink_to_what_torch_pruning_removes(arch: str, size: int) -> None:
    """timm's BatchNormAct2d, SqueezeExcite and Linear: group masks at 50% go as far as Torch-Pruning's
    own physical removal of the same channels (the masks' minimum), and the build stays exact."""
    from tp_masks import build, torch_pruning_masks

    model, base, spa, minimum = build(arch, (1, 3, size, size), torch_pruning_masks)
    from spa_export.stages.merge import merge
    from spa_export.stages.reference import build_reference

    merged, _ = merge(model, spa)
    plan = make_plan(merged, as_inputs((1, 3, size, size)))
    pruned = apply_plan(merged, plan)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    reference = build_reference(arch, base, spa)
    with torch.no_grad():
        expected, got = reference(x), pruned(x)
    assert float((expected - got).abs().max()) <= 1e-4 * float(expected.abs().max())
    kept = sum(p.numel() for p in pruned.parameters())
    dense = sum(p.numel() for p in merged.parameters())
    assert minimum.tp == minimum.spec   # no layer norm: the spec may remove all Torch-Pruning removes
    assert kept <= 1.1 * minimum.spec < 0.5 * dense, (kept, minimum, dense)


class ShapeBranch(nn.Module):
    """Control flow on a shape inside a submodule: torch.fx cannot trace it (MobileViT's blocks do this)."""

    def __init__(self, out: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


def _branch_net(branch: nn.Module, *, twice: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
              nn.BatchNorm2d(8), nn.ReLU(), branch]
    net = nn.Sequential(*layers, *([branch] if twice else []), nn.Flatten()).eval()
    _randomize_bn(net)
    _zero_out(net[0], [1, 5])      # constant after its batch-norm: folded into the next convolution
    _zero_out(net[3], [2])         # read by the branch's convolution
    return net


@pytest.mark.parametrize("size", [12, 11])   # 11: the branch pads
def test_a_submodule_fx_cannot_trace_is_traced_on_the_probes_shapes_and_shrinks(size: int) -> None:
    shape = (1, 3, size, size)
    net = _branch_net(ShapeBranch())
    plan = make_plan(net, as_inputs(shape))
    assert not plan.untraced and not plan.opaque
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, shape)
    assert core(pruned[0]).out_channels == 6 and core(pruned[3]).in_channels == 6
    assert core(pruned[3]).out_channels == 7 and core(pruned[6].conv).in_channels == 7   # through the branch
    graph = trace_channels(net, as_inputs(shape))
    assert not graph.opaque and not any("cannot trace" in why for _, why in graph.holds)


def test_a_submodule_fx_cannot_trace_called_twice_runs_as_one_step_and_the_rest_shrinks() -> None:
    """Its two calls could differ in shape: it is not traced on the probe's, but run as one step."""
    net = _branch_net(ShapeBranch(out=8), twice=True)
    plan = make_plan(net, as_inputs(SHAPE))
    assert not plan.untraced and list(plan.opaque) == ["6"]
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert core(pruned[0]).out_channels == 6 and core(pruned[3]).in_channels == 6
    assert core(pruned[3]).out_channels == 8 and pruned[6].conv.in_channels == 8
    graph = trace_channels(net, as_inputs(SHAPE))
    assert list(graph.opaque) == ["6"] and "TraceError" in graph.opaque["6"]
    assert any("(ShapeBranch called more than once)" in why for _, why in graph.holds)


class Affine(nn.Module):
    """hgnet's learnable affine: one scale and one shift for every channel, parameters of one element."""

    def __init__(self) -> None:
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.tensor([1.7])), nn.Parameter(torch.tensor([0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.bias * self.scale


def test_a_one_element_scale_and_shift_act_on_each_channel() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), Affine(), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    _randomize_bn(net)
    _zero_out(net[0], [2, 5])      # constants after the batch-norm, shifted and scaled: folded into the next bias
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert (core(pruned[0]).out_channels, pruned[1].num_features, core(pruned[4]).in_channels) == (6, 6, 6)


def test_a_padding_module_pads_each_channel_by_itself() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(8, 4, 3)).eval()
    _randomize_bn(net)
    _zero_out(net[0], [0, 3, 7])   # constants, padded with zeros: they vary near the border
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert (core(pruned[0]).out_channels, pruned[1].num_features, core(pruned[3]).in_channels) == (5, 5, 5)
    assert plan.folds


@pytest.mark.parametrize("channels", [8, None])
def test_a_blur_pool_filters_each_channel_by_itself_and_keeps_the_kept_rows(channels: int | None) -> None:
    """timm's ``BlurPool2d`` (TResNet's anti-aliased downsampling): a depthwise convolution with a
    filter buffer, one row per channel when built with ``channels`` (its copy keeps the kept rows and
    their count), one row expanded to the input otherwise."""
    from timm.layers import BlurPool2d

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), BlurPool2d(channels),
                        nn.Conv2d(8, 4, 3)).eval()
    _randomize_bn(net)
    _zero_out(net[0], [1, 2, 6])   # constants after the batch-norm, blurred (reflect padding): folded
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert (core(pruned[0]).out_channels, pruned[1].num_features, core(pruned[4]).in_channels) == (5, 5, 5)
    assert type(pruned[3]) is BlurPool2d and pruned[3].channels == (5 if channels else None)
    assert pruned[3].filt.shape[0] == (5 if channels else 1)
    assert net[3].filt.shape[0] == (8 if channels else 1)    # the caller's network is unchanged


class StarReLU(nn.Module):
    """MetaFormer's activation: ``scale * relu(x) ** 2 + bias`` with one-element parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.tensor([0.8])), nn.Parameter(torch.tensor([-0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.relu(x) ** 2 + self.bias


class Clipped(nn.Linear):
    """Gemma 4's clipped linear layer: its input and output clamped to bounds held in 0-d buffers."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout)
        for name, v in (("lo", -0.5), ("hi", 0.7)):
            self.register_buffer(name, torch.tensor(v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(F.linear(torch.clamp(x, self.lo, self.hi), self.weight, self.bias), self.lo, self.hi)


def test_a_power_and_a_clamp_by_numbers_held_in_parameters_act_on_each_channel() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), StarReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        Clipped(8, 6), Clipped(6, 4)).eval()
    _randomize_bn(net)
    _zero_out(net[0], [2, 5])    # constants through the power: folded into the first clipped layer
    _zero_out(net[5], [1])       # zero, clamped: a constant into the second
    plan = make_plan(net, as_inputs(SHAPE))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, SHAPE)
    assert (core(pruned[0]).out_channels, pruned[1].num_features, core(pruned[5]).in_features) == (6, 6, 6)
    assert (core(pruned[5]).out_features, core(pruned[6]).in_features) == (5, 5)
