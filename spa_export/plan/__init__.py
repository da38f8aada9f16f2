"""Plan the channel removal on the unpruned network, in original indices."""

from __future__ import annotations

from torch import nn

from spa_export.errors import ArchitectureError
from spa_export.inputs import as_inputs
from spa_export.inputs import to_json as inputs_json
from spa_export.plan.decide import decide
from spa_export.plan.model import ConstantFold, GroupReport, ModulePlan, PrunePlan
from spa_export.plan.trace import ChannelGraph, trace_channels

__all__ = ["ChannelGraph", "ConstantFold", "GroupReport", "ModulePlan", "PrunePlan", "make_plan",
           "trace_channels"]


def make_plan(model: nn.Module, inputs: object, *, round_to: int = 1,
              round_small: bool = True, seed: int = 0) -> PrunePlan:
    """Trace ``model`` (the merged, masked network; not modified) and plan its channel removal.

    ``inputs``: a shape (one float input) or :class:`~spa_export.inputs.InputSpec` s.

    A network that torch.fx cannot trace keeps every channel (still exact, only not smaller);
    the plan says why.
    """
    specs = as_inputs(inputs)
    try:
        graph = trace_channels(model, specs, seed=seed)
    except ArchitectureError as err:
        plan = PrunePlan(inputs=inputs_json(specs), round_to=round_to)
        plan.untraced = str(err)
        return plan
    return decide(graph, inputs_json(specs), round_to=round_to, round_small=round_small)
