"""Apply a :class:`~spa_export.stages.plan.PrunePlan` once: a smaller plain PyTorch network.

Works on a copy; the caller's network is never modified. Every module named
in the plan is replaced by a standard module of the smaller shape, with the
kept slices of its parameters. Constant contributions go into the consumer's
bias, or, where they vary over positions, into an :class:`AddConstant` after
it.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from spa_export.nets.arch import set_submodule
from spa_export.nets.attention import PrunedAttention, fused_qkv, head_attributes, projections
from spa_export.nets.modcopy import check_complete, copy_leaving
from spa_export.safety.errors import BuildError
from spa_export.stages.plan.heads import AttentionPlan
from spa_export.stages.plan.model import ConstantFold, ModulePlan, PrunePlan


class AddConstant(nn.Module):
    """``module(x) + constant``: a consumer plus the fixed contribution of removed channels."""

    def __init__(self, module: nn.Module, constant: torch.Tensor) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("constant", constant.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) + self.constant


def apply_plan(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Return a pruned copy of ``model`` (the merged network the plan was made on)."""
    # The layers the plan replaces are read from ``model``: their tensors are not copied.
    heads = {name: ap for name, ap in plan.attention.items() if ap.changed}
    pruned = copy_leaving(model, [(name, None) for name in [*plan.modules, *heads]]).eval()
    with torch.no_grad():
        for name, mp in plan.modules.items():
            set_submodule(pruned, name, _slice(model.get_submodule(name), name, mp))
        for name, ap in heads.items():
            set_submodule(pruned, name, prune_attention(model.get_submodule(name), ap))
        for name, fold in plan.folds.items():
            mp = plan.modules.get(name)
            set_submodule(pruned, name, _fold(pruned.get_submodule(name), fold, mp))
    check_complete(pruned, "channel removal")
    return pruned


def _index(keep: list[int] | None, size: int) -> torch.Tensor:
    return torch.arange(size) if keep is None else torch.as_tensor(keep, dtype=torch.long)


def _slice(mod: nn.Module, name: str, mp: ModulePlan) -> nn.Module:
    if mp.kind == "batchnorm":
        return _slice_bn(mod, _index(mp.out_keep, mod.num_features))
    if mp.kind == "depthwise":
        keep = _index(mp.out_keep, mod.out_channels)
        new = _conv_like(mod, len(keep), len(keep), len(keep))
        new.weight.copy_(mod.weight[keep])
        if mod.bias is not None:
            new.bias.copy_(mod.bias[keep])
        return new
    if mp.kind == "blur":   # timm's BlurPool2d: one filter row per channel, and their count
        keep = _index(mp.out_keep, mod.channels)
        new = _own_copy(mod)
        new.filt = mod.filt.detach()[keep].clone()
        new.channels = len(keep)
        return new.eval()
    if mp.kind == "linear":
        out_i, in_i = _index(mp.out_keep, mod.out_features), _index(mp.in_keep, mod.in_features)
        new = _linear_like(mod, len(in_i), len(out_i), bias=mod.bias is not None)
        new.weight.copy_(mod.weight[out_i][:, in_i])
        if mod.bias is not None:
            new.bias.copy_(mod.bias[out_i])
        return new
    return _slice_conv(mod, name, mp)


def _slice_conv(mod: nn.Module, name: str, mp: ModulePlan) -> nn.Module:
    g = mod.groups
    out_i, in_i = _index(mp.out_keep, mod.out_channels), _index(mp.in_keep, mod.in_channels)
    if g == 1:  # plain rows and columns: no groups to keep equal, no per-row gather to build
        if not len(in_i) or not len(out_i):
            raise BuildError(f"internal error: the plan leaves no channels in '{name}'")
        new = _conv_like(mod, len(in_i), len(out_i), g)
        new.weight.copy_(mod.weight[out_i][:, in_i])
        if mod.bias is not None:
            new.bias.copy_(mod.bias[out_i])
        return new
    per_in, per_out = mod.in_channels // g, mod.out_channels // g
    local = [[int(i) - j * per_in for i in in_i.tolist() if int(i) // per_in == j] for j in range(g)]
    outs = [[int(o) for o in out_i.tolist() if int(o) // per_out == j] for j in range(g)]
    if len({len(x) for x in local}) != 1 or len({len(x) for x in outs}) != 1 or not local[0] or not outs[0]:
        raise BuildError(f"internal error: the plan leaves unequal groups in '{name}'")
    new = _conv_like(mod, len(in_i), len(out_i), g)
    cols = torch.as_tensor([local[int(o) // per_out] for o in out_i.tolist()], dtype=torch.long)
    w = mod.weight[out_i]
    new.weight.copy_(torch.gather(w, 1, cols.view(*cols.shape, *([1] * (w.dim() - 2))).expand(
        -1, -1, *w.shape[2:])))
    if mod.bias is not None:
        new.bias.copy_(mod.bias[out_i])
    return new


def _conv_like(mod: nn.Module, cin: int, cout: int, groups: int, *, bias: bool | None = None) -> nn.Module:
    """An empty convolution like ``mod`` (made on the meta device: no random initialisation
    to pay for, every value is copied in by the caller)."""
    bias = (mod.bias is not None) if bias is None else bias
    if type(mod) not in _PLAIN_CONVS:
        shape = (cout, cin // groups, *mod.weight.shape[2:])
        return _resized_copy(mod, shape, cout if bias else None, in_channels=cin, out_channels=cout, groups=groups)
    new = type(mod)(
        cin, cout, mod.kernel_size, stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
        groups=groups, bias=bias, padding_mode=mod.padding_mode, device="meta", dtype=mod.weight.dtype,
    )
    return new.to_empty(device=mod.weight.device).eval()


def _linear_like(mod: nn.Linear, fin: int, fout: int, *, bias: bool) -> nn.Linear:
    """An empty linear layer (made on the meta device, like :func:`_conv_like`)."""
    if type(mod) is not nn.Linear:
        return _resized_copy(mod, (fout, fin), fout if bias else None, in_features=fin, out_features=fout)
    new = nn.Linear(fin, fout, bias=bias, device="meta", dtype=mod.weight.dtype)
    return new.to_empty(device=mod.weight.device).eval()


_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _own_copy(mod: nn.Module, leaving: tuple[str, ...] = ()) -> nn.Module:
    """A copy of ``mod`` of its own class and attributes, whose tensors the caller replaces: it shares
    them with ``mod`` until then (not copied: they are about to be sliced), and holds copies of its
    children but those in ``leaving`` (the caller sets them)."""
    new = copy.copy(mod)
    new._parameters, new._buffers = dict(mod._parameters), dict(mod._buffers)
    new._modules = {k: copy.deepcopy(v) for k, v in mod._modules.items() if k not in leaving}
    return new


def _resized_copy(mod: nn.Module, weight_shape: tuple[int, ...], bias_size: int | None, **sizes: int) -> nn.Module:
    """A copy of a layer subclass (timm's ``Conv2dSame``, ``Linear``...) with empty tensors of new sizes.

    Its own class and everything it adds stay (a padding computed in ``forward``,
    its children); only the sizes and the tensors the caller fills change.
    """
    new = _own_copy(mod)
    for key, size in sizes.items():
        setattr(new, key, size)
    like = {"dtype": mod.weight.dtype, "device": mod.weight.device}
    new.weight = nn.Parameter(torch.empty(weight_shape, **like), requires_grad=mod.weight.requires_grad)
    new.bias = None if bias_size is None else nn.Parameter(torch.empty(bias_size, **like))
    return new.eval()


def _slice_bn(mod: nn.Module, keep: torch.Tensor) -> nn.Module:
    """``mod`` with only the ``keep`` channels: a copy of the module itself, so that a subclass keeps
    what it adds (timm's ``BatchNormAct2d``: its activation and dropout)."""
    new = _own_copy(mod)
    new.num_features = len(keep)
    for name in ("weight", "bias"):
        old = getattr(mod, name, None)
        if old is not None:
            setattr(new, name, nn.Parameter(old.detach()[keep].clone(), requires_grad=old.requires_grad))
    for name in ("running_mean", "running_var"):
        new.register_buffer(name, getattr(mod, name).detach()[keep].clone())
    if getattr(mod, "num_batches_tracked", None) is not None:
        new.register_buffer("num_batches_tracked", mod.num_batches_tracked.detach().clone())
    return new.eval()


def _fold(mod: nn.Module, fold: ConstantFold, mp: ModulePlan | None) -> nn.Module:
    out_i = _index(mp.out_keep if mp else None, fold.bias.shape[0] if fold.bias is not None
                   else fold.tensor.shape[fold.channel_axis])
    if fold.tensor is not None:  # after a conv or linear layer, or after the batch-norm that follows one
        return AddConstant(mod, fold.tensor.index_select(fold.channel_axis, out_i))
    size = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
    delta = fold.bias[out_i].to(mod.weight.dtype)
    if len(delta) != size:
        raise BuildError(f"internal error: constant fold for '{fold.module}' has {len(delta)} channels, "
                         f"the layer {size}")
    if mod.bias is None:
        if isinstance(mod, nn.Linear):
            new = _linear_like(mod, mod.in_features, mod.out_features, bias=True)
        else:
            new = _conv_like(mod, mod.in_channels, mod.out_channels, mod.groups, bias=True)
        new.weight.copy_(mod.weight)
        new.bias.zero_()
        mod = new
    mod.bias.add_(delta)
    return mod


def _attention_linear(weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor,
                      cols: torch.Tensor | None = None) -> nn.Linear:
    w = weight.index_select(0, rows)
    if cols is not None:
        w = w.index_select(1, cols)
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    new = new.to_empty(device=weight.device).eval()
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:
            new.bias.copy_(bias if cols is not None else bias.index_select(0, rows))
    return new


def _prune_fused(mod: nn.Module, plan: AttentionPlan) -> nn.Module:
    """timm's ``Attention`` with only the plan's heads and channels: a copy of the module whose ``qkv``
    (TNT's ``qk`` and ``v``) keeps those heads' query, key and value rows and whose ``proj`` reads only
    their value columns.
    Narrower heads compute their scores with the module's own ``scale`` (of the original width):
    ``fused_attn`` off, since ``scaled_dot_product_attention`` would take the new width's."""
    d, width, narrow = plan.head_dim, plan.num_heads * plan.head_dim, len(plan.qk[0])
    qk = torch.as_tensor([h * d + c for h, cs in zip(plan.heads, plan.qk, strict=True) for c in cs])
    v = torch.as_tensor([h * d + c for h, cs in zip(plan.heads, plan.v, strict=True) for c in cs])
    attrs = head_attributes(mod)
    kept = {"q": qk, "k": qk, "v": v}
    new = _own_copy(mod, leaving=(*(child for child, _ in attrs.rows), "proj"))
    for child, parts in attrs.rows:   # each projection's rows: its parts in turn (query, key, value)
        rows = torch.cat([i * width + kept[part] for i, part in enumerate(parts)])
        layer = getattr(mod, child)
        bias = None if layer.bias is None else layer.bias.detach()
        setattr(new, child, _attention_linear(layer.weight.detach(), bias, rows))
    proj_bias = None if mod.proj.bias is None else mod.proj.bias.detach()
    new.proj = _attention_linear(mod.proj.weight.detach(), proj_bias, torch.arange(mod.proj.out_features), v)
    setattr(new, attrs.heads, len(plan.heads))
    if narrow < d:   # scores scaled by the module's own scale (of the original width), not SDPA's default
        if hasattr(mod, "fused_attn"):
            new.fused_attn = False
        if attrs.width:
            setattr(new, attrs.width, narrow)
    if attrs.total:
        setattr(new, attrs.total, len(plan.heads) * narrow)
    return new.eval()


def prune_attention(mod: nn.Module, plan: AttentionPlan) -> nn.Module:
    """``mod`` with only the plan's heads and channels (a new module; ``mod`` is not changed)."""
    if fused_qkv(mod):
        return _prune_fused(mod, plan)
    d = plan.head_dim
    qk = torch.as_tensor([h * d + c for h, cs in zip(plan.heads, plan.qk, strict=True) for c in cs])
    v = torch.as_tensor([h * d + c for h, cs in zip(plan.heads, plan.v, strict=True) for c in cs])
    (wq, wk, wv), (bq, bk, bv) = projections(mod)
    out = mod.out_proj
    out_bias = None if out.bias is None else out.bias.detach()
    return PrunedAttention(
        _attention_linear(wq, bq, qk), _attention_linear(wk, bk, qk), _attention_linear(wv, bv, v),
        _attention_linear(out.weight.detach(), out_bias, torch.arange(out.out_features), v),
        num_heads=len(plan.heads), scale=1.0 / math.sqrt(d), batch_first=mod.batch_first,
        heads=plan.heads, total_heads=plan.num_heads,
    ).eval()
