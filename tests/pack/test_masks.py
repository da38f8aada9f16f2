"""Where ``pack`` finds masks, and which entries become overrides (real ``sp_adapters`` layers)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

sp_adapters = pytest.importorskip("sp_adapters")

from spa_export.examples import prune_output_channels  # noqa: E402
from spa_export.pack import pack_model  # noqa: E402
from spa_export.pack.masks import binary_mask, find_masks  # noqa: E402
from spa_export.safety.errors import InputError, VerificationError  # noqa: E402
from spa_export.spa import spa_bytes  # noqa: E402
from spa_export.stages.reference import build_reference  # noqa: E402

ARCH = "factories_pack:small"
SHAPE = (1, 3, 8, 8)


@pytest.fixture()
def base(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    from factories_pack import small

    torch.manual_seed(0)
    net = small()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    return {k: v.clone() for k, v in net.state_dict().items()}


def _adapted(base: dict[str, torch.Tensor], seed: int = 1) -> nn.Module:
    from factories_pack import small

    net = small()
    net.load_state_dict(base)
    lib = sp_adapters.SPLoRA(net, rank=2, init_range=0.5)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lib.named_parameters():
            if ".adapter" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return lib.eval()


KEEP = torch.tensor([True, False, True, True, False, True, True, False])


def test_binary_masks_accept_bool_and_exact_zero_one_only() -> None:
    assert torch.equal(binary_mask(KEEP.float(), 8, "m"), KEEP)
    assert torch.equal(binary_mask(KEEP.to(torch.int64), 8, "m"), KEEP)
    with pytest.raises(InputError, match="2 value.s. other than 0 and 1 .such as 0.5.*threshold it first"):
        binary_mask(torch.tensor([1, 0.5, 0, 0.2, 1, 1, 1, 1]), 8, "'conv' out_mask")
    with pytest.raises(InputError, match="expected a mask of 8 entries"):
        binary_mask(torch.ones(2, 4), 8, "m")


def test_experiments_way_rows_zeroed_in_place(base: dict[str, torch.Tensor]) -> None:
    lib = _adapted(base)
    prune_output_channels(lib.conv1, KEEP)
    del lib.conv1.output_mask            # a state dict does not keep the attribute: rows alone tell
    found = find_masks(lib, base)
    assert torch.equal(found["conv1"].out_mask, KEEP)
    assert found["conv1"].out_source == "rows zeroed in its weight"
    result = pack_model(lib, base, arch=ARCH, input_shape=SHAPE)
    assert "override.conv1.weight" not in result.spa.tensors()        # the mask says it
    assert result.report["check"]["vs_own_forward"]["passed"]


def test_output_mask_attribute(base: dict[str, torch.Tensor]) -> None:
    lib = _adapted(base)
    prune_output_channels(lib.conv1, KEEP)
    assert find_masks(lib, base)["conv1"].out_source == "its output_mask"


def test_active_prune_weight_mask(base: dict[str, torch.Tensor]) -> None:
    lib = _adapted(base)
    rows = KEEP.reshape(-1, 1, 1, 1).expand_as(lib.conv1.weight).float()
    prune.custom_from_mask(lib.conv1, "weight", rows)         # before prune.remove
    with torch.no_grad():
        lib.conv1.adapter.cols[:, ~KEEP] = 0
    found = find_masks(lib, base)
    assert torch.equal(found["conv1"].out_mask, KEEP) and found["conv1"].out_source == "its prune weight_mask"
    result = pack_model(lib, base, arch=ARCH, input_shape=SHAPE)
    assert result.report["check"]["vs_own_forward"]["passed"]
    assert [o["key"] for o in result.report["overrides"]] == ["dw.weight"]   # the depthwise adapter, merged


def test_unstructured_prune_mask_is_refused(base: dict[str, torch.Tensor]) -> None:
    lib = _adapted(base)
    prune.random_unstructured(lib.conv1, "weight", amount=0.3)
    with pytest.raises(InputError, match="'conv1': its prune weight_mask zeroes single weights"):
        find_masks(lib, base)


def test_sources_that_disagree_are_refused(base: dict[str, torch.Tensor]) -> None:
    lib = _adapted(base)
    prune_output_channels(lib.conv1, KEEP)
    other = KEEP.clone()
    other[[0, 1]] = ~other[[0, 1]]
    with pytest.raises(InputError, match="'conv1': the output masks of the given masks and its output_mask "
                                         r"disagree \(channels \[0, 1\]\)"):
        find_masks(lib, base, {"conv1": (other, None)})


def test_given_masks_prune_what_the_network_computes(base: dict[str, torch.Tensor]) -> None:
    """Masks given for an unpruned network: the SPA would not compute what the trained network computes.
    That fails, naming the layer and the fixes; accepted explicitly, the SPA is the masked network, and
    its description and the report say so."""
    lib = _adapted(base)
    with pytest.raises(VerificationError, match=r"does not compute what the trained network computes: conv1: 3 "
                                                r"masked output channel\(s\) still written by its adapter or bias\. "
                                                r".*zero the pruned rows of each adapter.*--accept-masks"):
        pack_model(lib, base, masks={"conv1": (KEEP, None)}, arch=ARCH, input_shape=SHAPE)
    result = pack_model(lib, base, masks={"conv1": (KEEP, None)}, arch=ARCH, input_shape=SHAPE, accept_masks=True)
    check = result.report["check"]
    assert check["vs_masked_network"]["passed"] and not check["vs_own_forward"]["passed"]
    assert check["why_own_forward_differs"] == ["conv1: 3 masked output channel(s) still written by its adapter "
                                                "or bias"]
    assert check["accepted"].startswith("masks accepted (--accept-masks)")
    assert result.spa.description.endswith(check["accepted"]) and result.report["spa_bytes"] == len(spa_bytes(result.spa))


def test_overrides_only_where_the_task_differs(base: dict[str, torch.Tensor]) -> None:
    lib = _adapted(base)
    prune_output_channels(lib.conv1, KEEP)
    with torch.no_grad():
        lib.bn1.running_mean.add_(0.5)          # statistics re-estimated for the task
        lib.bn1.num_batches_tracked.add_(100)   # a counter: no effect in eval mode
    lib.fc = nn.Linear(8, 3)                    # a new head of 3 classes
    result = pack_model(lib, base, arch=ARCH, input_shape=SHAPE)
    reasons = {o["key"]: o["reason"] for o in result.report["overrides"]}
    assert reasons == {"bn1.running_mean": "batch-norm statistics",
                       "dw.weight": "adapter on a grouped convolution (groups=8), stored merged: version 1 "
                                    "has no grouped adapter",
                       "fc.weight": "resized from [4, 8] to [3, 8] (a new head)",
                       "fc.bias": "resized from [4] to [3] (a new head)"}
    assert result.report["not_stored"] == [{"key": "bn1.num_batches_tracked",
                                            "reason": "batch-norm counter: no effect in eval mode"}]
    x = torch.randn(3, *SHAPE[1:])
    with torch.no_grad():
        got, want = build_reference(ARCH, base, result.spa)(x), lib.eval()(x)
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_grouped_adapter_is_stored_merged_and_exact(base: dict[str, torch.Tensor]) -> None:
    """sp_adapters adapts grouped and depthwise convolutions; version 1 stores the merged weight."""
    lib = _adapted(base)
    assert lib.dw.groups == 8 and isinstance(lib.dw, sp_adapters.SPLoRAConv2d)
    result = pack_model(lib, base, arch=ARCH, input_shape=SHAPE)
    entry = next(o for o in result.report["overrides"] if o["key"] == "dw.weight")
    assert entry["reason"].startswith("adapter on a grouped convolution (groups=8), stored merged")
    assert "dw" not in result.spa.layers and torch.equal(result.spa.overrides["dw.weight"],
                                                         lib.dw.adapted_weight.detach())
    assert result.report["check"]["vs_own_forward"]["passed"]


def test_the_callers_network_is_not_changed(base: dict[str, torch.Tensor]) -> None:
    lib = _adapted(base).train()
    before = copy.deepcopy(lib.state_dict())
    pack_model(lib, base, masks={"conv1": (KEEP, None)}, arch=ARCH, input_shape=SHAPE, accept_masks=True)
    assert lib.training and all(torch.equal(before[k], v) for k, v in lib.state_dict().items())
