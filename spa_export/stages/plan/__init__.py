"""Plan the channel removal on the unpruned network, in original indices.

What it holds: ``trace`` (torch.fx -> which tensors carry which channels, and who reads them),
``shaped`` (a submodule traced again on the probe's values), ``ops`` (what each operation does to
channels), ``layout`` (channels moved by transposes and reshapes), ``counts`` (channel counts read
from shapes), ``slicing`` (indexing with numbers in the code), ``unionfind`` (dependency groups),
``decide`` (masks + groups -> channels kept, removed, or folded as constants), ``heads``
(attention heads), ``rounding`` (channel counts rounded for the processor) and ``model`` (the plan
itself).
"""

from __future__ import annotations

from torch import nn

from spa_export.runtime.inputs import Inputs
from spa_export.runtime.inputs import to_json as inputs_json
from spa_export.safety.errors import ArchitectureError
from spa_export.stages.plan.decide import decide
from spa_export.stages.plan.model import ConstantFold, GroupReport, ModulePlan, PrunePlan
from spa_export.stages.plan.trace import ChannelGraph, trace_channels

__all__ = ["ChannelGraph", "ConstantFold", "GroupReport", "ModulePlan", "PrunePlan", "make_plan",
           "trace_channels"]


def make_plan(model: nn.Module, inputs: Inputs, *, round_to: int = 1,
              round_small: bool = True, seed: int = 0) -> PrunePlan:
    """Trace ``model`` (the merged, masked network; not modified) and plan its channel removal.

    ``inputs``: every input of the network, as :class:`~spa_export.runtime.inputs.InputSpec` s.

    A network that torch.fx cannot trace keeps every channel (still exact, only not smaller);
    the plan says why.
    """
    try:
        graph = trace_channels(model, inputs, seed=seed)
    except ArchitectureError as err:
        plan = PrunePlan(inputs=inputs_json(inputs), round_to=round_to)
        plan.untraced = str(err)
        return plan
    return decide(graph, inputs_json(inputs), round_to=round_to, round_small=round_small)
