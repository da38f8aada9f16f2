"""Multi-head attention with heads (and channels of heads) removed.

``nn.MultiheadAttention`` ties the inner width to its input width (``heads x
head_dim == embed_dim``) and gives query, key and value one head dimension,
so a pruned attention cannot be one. :class:`PrunedAttention` computes what
``nn.MultiheadAttention`` computes in eval mode, for its kept heads only,
with plain ``nn.Linear`` projections (so every runtime sees ordinary
matrix products) and the original scale. It takes the same call and returns
``(output, None)``: the plan keeps every head where the network reads the
attention weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class PrunedAttention(nn.Module):
    # Read by nn.TransformerEncoderLayer to choose its fused fast path: this module takes the regular one.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear, out_proj: nn.Linear, *,
                 num_heads: int, scale: float, batch_first: bool, heads: list[int], total_heads: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.num_heads = num_heads
        self.scale = scale
        self.batch_first = batch_first
        self.total_heads = total_heads   # of the original module: a per-head mask is given for all of them
        self.register_buffer("heads", torch.as_tensor(heads, dtype=torch.long), persistent=False)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        # ``is_causal`` is a hint in nn.MultiheadAttention: the mask it describes is ``attn_mask``.
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, t, s = query.shape[0], query.shape[1], key.shape[1]
        q = self._split(self.q_proj(query), n, t)
        k = self._split(self.k_proj(key), n, s)
        v = self._split(self.v_proj(value), n, s)
        scores = torch.matmul(q * self.scale, k.transpose(-2, -1))           # [N, H, T, S]
        if attn_mask is not None:
            mask = _additive(attn_mask, scores.dtype)
            if mask.dim() == 3:                                               # [N * H_all, T, S]
                mask = mask.reshape(n, self.total_heads, t, s).index_select(1, self.heads)
            scores = scores + mask
        if key_padding_mask is not None:
            scores = scores + _additive(key_padding_mask, scores.dtype).reshape(n, 1, 1, s)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)                  # [N, H, T, dv]
        out = self.out_proj(out.transpose(1, 2).reshape(n, t, -1))
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        return (out.squeeze(1) if unbatched else out), None

    def _split(self, x: torch.Tensor, n: int, length: int) -> torch.Tensor:
        return x.reshape(n, length, self.num_heads, -1).transpose(1, 2)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True: not attended) as ``-inf``/0; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


@dataclass(frozen=True)
class HeadAttributes:
    """Where an attention class keeps its head geometry, read by its ``forward``: the copy of a
    pruned one sets them. ``width`` None: the code infers the width (a reshape to ``-1``);
    ``total``: an attribute holding heads x width (the reshape of the heads' output)."""

    heads: str = "num_heads"
    width: str | None = "head_dim"
    total: str | None = None
    #: the projections and the parts each holds, in row order (TNT: ``qk`` holds query and key, ``v`` value)
    rows: tuple[tuple[str, str], ...] = (("qkv", "qkv"),)


#: timm's attention classes other than ``Attention`` with the same fused layout (one ``qkv`` Linear
#: whose rows are query, key and value, each ``heads x width``, or TNT's ``qk`` and ``v``; one ``proj``
#: Linear reading the heads' values), whose ``forward`` reads the geometry from the attributes named,
#: scales by ``self.scale`` (by hand, or unless ``fused_attn`` is on), and computes nothing else per
#: head. Read from each class's code (timm 1.0.31).
KNOWN: dict[tuple[str, str], HeadAttributes] = {
    ("timm.models.hieradet_sam2", "MultiScaleAttention"): HeadAttributes(width=None, total="dim_out"),
    ("timm.models.hiera", "MaskUnitAttention"): HeadAttributes(heads="heads", total="dim_out"),
    ("timm.models.tnt", "Attention"): HeadAttributes(rows=(("qk", "qk"), ("v", "v"))),
}


def _known(mod: nn.Module) -> HeadAttributes | None:
    return KNOWN.get((type(mod).__module__, type(mod).__name__))


def head_attributes(mod: nn.Module) -> HeadAttributes:
    """The attributes that hold ``mod``'s head geometry (``num_heads`` and ``head_dim`` unless known)."""
    return _known(mod) or HeadAttributes(total="attn_dim" if hasattr(mod, "attn_dim") else None)


def head_shape(mod: nn.Module) -> tuple[int, int]:
    """``(heads, width)`` of an attention module (``nn.MultiheadAttention`` or a fused-qkv one)."""
    attrs = _known(mod)
    if attrs is None:
        return mod.num_heads, mod.head_dim
    h = getattr(mod, attrs.heads)
    return h, (getattr(mod, attrs.width) if attrs.width else mod.proj.in_features // h)


def fused_qkv(mod: nn.Module) -> bool:
    """Whether ``mod`` is timm's ``Attention`` (or a class of :data:`KNOWN`): one ``qkv`` Linear
    reshaped into heads, softmax attention per head, one ``proj`` Linear; its ``forward`` reads the
    head count and width from the module, so a copy with fewer heads computes the kept heads.

    Only the plain form: no normalisation across heads (``norm``), no gate.
    """
    kind = type(mod)
    known = _known(mod) is not None
    if not known and (kind.__name__ != "Attention" or not kind.__module__.startswith("timm.")):
        return False
    attrs = head_attributes(mod)
    layers = [getattr(mod, child, None) for child, _ in attrs.rows]
    proj = getattr(mod, "proj", None)
    if not (all(isinstance(x, nn.Linear) for x in layers) and isinstance(proj, nn.Linear)):
        return False
    h, d = getattr(mod, attrs.heads, None), getattr(mod, attrs.width, None) if attrs.width else None
    if known and attrs.width is None and isinstance(h, int) and h > 0 and proj.in_features % h == 0:
        d = proj.in_features // h
    if not (isinstance(h, int) and isinstance(d, int)):
        return False
    total = getattr(mod, attrs.total, h * d) if attrs.total else h * d
    return (all(x.out_features == len(parts) * h * d for x, (_, parts) in zip(layers, attrs.rows, strict=True))
            and proj.in_features == h * d and total == h * d
            and isinstance(getattr(mod, "norm", nn.Identity()), nn.Identity) and getattr(mod, "gate", None) is None)


def narrowable_heads(mod: nn.Module) -> bool:
    """Whether fused-qkv ``mod`` can take heads narrower than it was built with: timm's own
    ``Attention.forward`` (it reads ``head_dim`` and ``attn_dim`` from the module, and scales by
    ``self.scale`` when ``fused_attn`` is off) or a class of :data:`KNOWN`, with no query/key
    normalisation (which would mix a head's channels)."""
    if not fused_qkv(mod):
        return False
    if _known(mod) is not None:   # scores scaled by ``self.scale``: computed by hand, or SDPA turned off
        return isinstance(getattr(mod, "scale", None), float) and (
            hasattr(mod, "fused_attn") or _known(mod).rows != HeadAttributes.rows)
    from timm.layers.attention import Attention

    return type(mod).forward is Attention.forward and hasattr(mod, "fused_attn") and all(
        isinstance(getattr(mod, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm"))


def out_projection(mod: nn.Module) -> nn.Linear:
    """The Linear that reads every head's values: ``out_proj`` (``nn.MultiheadAttention``) or ``proj``."""
    return mod.proj if fused_qkv(mod) else mod.out_proj


def projections(mod: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """The query, key and value weights and biases of ``mod`` (views, not copies): an
    ``nn.MultiheadAttention``, or timm's ``Attention`` (rows of its ``qkv``)."""
    if fused_qkv(mod):
        h, d = head_shape(mod)
        weights: list[torch.Tensor] = []
        biases: list[torch.Tensor | None] = []
        for child, parts in head_attributes(mod).rows:
            layer = getattr(mod, child)
            weights += layer.weight.detach().split(h * d)
            biases += [None] * len(parts) if layer.bias is None else layer.bias.detach().split(h * d)
        return weights, biases
    e = mod.embed_dim
    if mod._qkv_same_embed_dim:
        weights = list(mod.in_proj_weight.detach().split(e))
    else:
        weights = [mod.q_proj_weight.detach(), mod.k_proj_weight.detach(), mod.v_proj_weight.detach()]
    bias = mod.in_proj_bias
    biases = [None] * 3 if bias is None else list(bias.detach().split(e))
    return weights, biases



def attention_macs(mod: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> int:
    """Multiply-accumulates of one sample through ``mod``'s projections and head products.

    For :class:`PrunedAttention` only the head products: its projections are
    ``nn.Linear`` modules, counted as such.
    """
    batched = query.dim() == 3
    seq = 1 if (not batched or getattr(mod, "batch_first", False)) else 0
    t, s = query.shape[seq], key.shape[seq]
    if isinstance(mod, PrunedAttention):
        heads_qk, heads_v = mod.q_proj.out_features, mod.v_proj.out_features
        return t * s * (heads_qk + heads_v)
    e = mod.embed_dim
    projections_macs = t * e * query.shape[-1] + s * e * (key.shape[-1] + value.shape[-1]) + t * e * e
    return projections_macs + 2 * t * s * e
