"""Tracing a submodule on the probe's real values (spa_export.stages.plan.shaped)."""

from __future__ import annotations

import math

import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F

from spa_export.stages.plan.shaped import ShapedTracing, record_calls


class SamePad(nn.Module):
    """timm's Conv2dSame in small: ``math`` on the input's size decides the padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1]
        pad = max((math.ceil(h / 2) - 1) * 2 + 3 - h, 0)
        if pad:
            x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        return self.conv(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.same = SamePad()
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.same(self.stem(x)))


class _Retrying(ShapedTracing):
    """The planner's fallback in small: a failing non-leaf submodule is traced again on the probe."""

    def call_module(self, m: nn.Module, forward: object, args: tuple, kwargs: dict) -> object:
        if self.evaluating or self.is_leaf_module(m, self.path_of_module(m)):
            return super().call_module(m, forward, args, kwargs)
        try:
            return super().call_module(m, forward, args, kwargs)
        except fx.proxy.TraceError:
            out = self.trace_on_probe(m, self.path_of_module(m), forward, args, kwargs, lambda: None)
            if out is None:
                raise
            return out


def test_record_calls_counts_calls_keeps_first_arguments_and_removes_its_hooks() -> None:
    net = Net().eval()
    x = torch.randn(2, 3, 9, 9)
    calls = record_calls(net, (x,))
    assert {k: c.count for k, c in calls.items()} == {"": 1, "stem": 1, "same": 1, "same.conv": 1, "bn": 1}
    assert calls["same"].args[0].shape == (2, 4, 9, 9)
    assert torch.equal(calls["stem"].args[0], x) and calls["stem"].args[0] is not x   # a copy
    assert all(not m._forward_pre_hooks for m in net.modules())


def test_record_calls_leaves_a_network_in_training_mode_untouched() -> None:
    net = Net().train()
    before = net.bn.running_mean.clone()
    assert record_calls(net, (torch.randn(2, 3, 9, 9),)) == {}
    assert torch.equal(net.bn.running_mean, before) and int(net.bn.num_batches_tracked) == 0


def test_a_submodule_branching_on_its_shape_is_traced_on_the_probes_and_computes_the_same() -> None:
    net = Net().eval()
    x = torch.randn(2, 3, 9, 9)
    try:   # torch.fx alone cannot
        fx.Tracer().trace(net)
        raise AssertionError("torch.fx traced a branch on a shape")
    except fx.proxy.TraceError:
        pass
    tracer = _Retrying(record_calls(net, (x,)))
    gm = fx.GraphModule(net, tracer.trace(net))
    assert tracer.shaped == ["same"]
    pads = [n for n in gm.graph.nodes if n.target is F.pad]
    assert len(pads) == 1 and pads[0].args[1] == (1, 1, 1, 1)   # 9: padded by 2, numbers in the graph
    with torch.no_grad():
        assert torch.equal(gm(x), net(x))


def test_without_recorded_calls_nothing_is_traced_again() -> None:
    net = Net().eval()
    tracer = _Retrying(None)
    try:
        tracer.trace(net)
        raise AssertionError("traced without a probe")
    except fx.proxy.TraceError:
        pass
    assert tracer.shaped == []


class Caching(nn.Module):
    """Caches what it computes in itself, as timm's attention-bias caches do."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.cache: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "s" not in self.cache:
            self.cache["s"] = self.scale.view(1, -1, 1, 1) * 2
        self.last = x
        return x * self.cache["s"]


def test_planning_leaves_every_module_attribute_as_it_was() -> None:
    from spa_export.runtime.inputs import as_inputs
    from spa_export.stages.plan.trace import trace_channels

    net = nn.Sequential(nn.Conv2d(3, 4, 1), Caching()).eval()
    cache = net[1].cache
    trace_channels(net, as_inputs((1, 3, 6, 6)))
    assert net[1].cache is cache and cache == {} and not hasattr(net[1], "last")


class DeviceBranch(nn.Module):
    """Branches on a size and builds a tensor on its input's device (a proxy attribute while traced)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 4:
            x = x * torch.arange(x.shape[-1], device=x.device)
        return x


def test_a_proxy_attribute_among_a_nodes_arguments_adds_no_node_and_the_graph_runs() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), DeviceBranch()).eval()
    x = torch.randn(2, 3, 6, 6)
    tracer = _Retrying(record_calls(net, (x,)))
    gm = fx.GraphModule(net, tracer.trace(net))
    assert tracer.shaped == ["1"]
    assert not [n for n in gm.graph.nodes if n.op == "call_function" and "value" in n.args]
    with torch.no_grad():
        assert torch.equal(gm(x), net(x))


class CastOnDevice(nn.Module):
    """EfficientViT's linear attention in small: a branch on the input's device, a cast to float and
    back to the input's dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.outer = nn.Conv2d(6, 8, 1), nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        if x.device.type != "meta":
            y = torch.relu(y.float()).to(x.dtype)
        return self.outer(y)


def test_a_branch_on_the_device_and_a_cast_to_the_dtype_are_decided_on_the_probe_and_shrink() -> None:
    from test_plan_cases import _check_exact, _randomize_bn, _zero_out, core

    from spa_export.runtime.inputs import as_inputs
    from spa_export.stages.apply import apply_plan
    from spa_export.stages.plan import make_plan

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), CastOnDevice(), nn.Conv2d(6, 4, 1)).eval()
    _randomize_bn(net)
    _zero_out(net[0], [0, 4])        # constants into the branch's inner convolution (folded)
    _zero_out(net[3].inner, [2, 5])  # zero, through the ReLU: folded into the outer one
    shape = (1, 3, 10, 10)
    plan = make_plan(net, as_inputs(shape))
    pruned = apply_plan(net, plan)
    _check_exact(net, pruned, shape)
    assert not plan.opaque
    assert (core(pruned[0]).out_channels, core(pruned[3].inner).in_channels) == (4, 4)
    assert (core(pruned[3].inner).out_channels, core(pruned[3].outer).in_channels) == (6, 6)
