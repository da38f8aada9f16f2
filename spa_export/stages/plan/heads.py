"""Attention heads: what ``nn.MultiheadAttention`` can lose, exactly.

Head ``h`` of an attention computes ``softmax(q_h k_h^T * s) v_h`` and the
output projection reads it through its columns ``W_o[:, h]``. Read from the
merged weights (masks already applied), a value channel ``j`` contributes
nothing when

* the output projection does not read it (``W_o[:, j] == 0``: an input mask
  on ``out_proj``), or
* it is zero at every position (its value-projection row and bias are zero:
  an output mask on ``v_proj``).

A head all of whose value channels contribute nothing goes whole: its
query, key and value rows and its output-projection columns. In a kept head,
such value channels go too (a smaller value dimension), and a query/key
channel goes where either side of the product is zero at every position
(``q_c k_c == 0``). Kept heads keep equal dimensions (the largest any of them
needs; the rest keep a few removable channels, which is always exact), and
the scale stays ``1/sqrt(original head dimension)``.

Left whole, with the reason in the plan: attention whose weights the network
reads (the second output), attention with ``add_bias_kv`` or
``add_zero_attn`` (extra key/value positions with values of their own).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spa_export.nets.attention import (
    fused_qkv,
    head_shape,
    narrowable_heads,
    out_projection,
    projections,
)


@dataclass
class AttentionPlan:
    """Kept heads and, per kept head, kept query/key and value channels (indices within the head)."""

    module: str
    num_heads: int
    head_dim: int
    heads: list[int]
    qk: list[list[int]]
    v: list[list[int]]
    reason: str | None = None     # why heads the masks would remove stay
    #: channels of kept heads that the masks remove but that stay ("value", "query_key"), and why
    kept_beyond_masks: dict | None = None

    @property
    def changed(self) -> bool:
        return len(self.heads) < self.num_heads or any(
            len(c) < self.head_dim for c in self.qk + self.v)

    def to_json(self) -> dict:
        out = {"num_heads": self.num_heads, "head_dim": self.head_dim, "heads_kept": self.heads,
               "qk_dim": len(self.qk[0]), "v_dim": len(self.v[0])}
        if self.reason:
            out["reason"] = self.reason
        if self.kept_beyond_masks:
            out["kept_beyond_masks"] = self.kept_beyond_masks
        return out

    def summary(self) -> str:
        return (f"{len(self.heads)} of {self.num_heads} heads, query/key dimension "
                f"{len(self.qk[0])} and value dimension {len(self.v[0])} of {self.head_dim}")


def _zero_rows(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    zero = (weight == 0).all(1)
    return zero if bias is None else zero & (bias == 0)


def plan_heads(name: str, mod: nn.Module, *, weights_read: bool, round_to: int = 1,
               round_small: bool = True) -> AttentionPlan:
    """What of attention ``name`` (merged, masked weights) can go.

    ``round_to`` and ``round_small`` round the kept head dimensions as
    :func:`~spa_export.stages.plan.decide.decide` rounds channel groups.
    timm's ``Attention`` (one ``qkv`` reshaped into heads of one width) keeps one width for its
    query, key and value, or whole heads where its code cannot take narrower ones.
    """
    h, d = head_shape(mod)
    whole = AttentionPlan(name, h, d, list(range(h)), [list(range(d))] * h, [list(range(d))] * h)
    (wq, wk, wv), (bq, bk, bv) = projections(mod)
    v_gone = (_zero_rows(wv, bv) | (out_projection(mod).weight.detach() == 0).all(0)).reshape(h, d)
    qk_gone = (_zero_rows(wq, bq) | _zero_rows(wk, bk)).reshape(h, d)
    if not bool(v_gone.any() or qk_gone.any()):
        return whole
    if fused_qkv(mod):
        return _plan_fused(name, mod, v_gone, qk_gone, round_to, round_small)
    if weights_read:
        whole.reason = "the network reads the attention weights (the second output)"
        return whole
    if mod.bias_k is not None or mod.add_zero_attn:
        whole.reason = "add_bias_kv or add_zero_attn gives keys and values positions of their own"
        return whole
    heads = [i for i in range(h) if not bool(v_gone[i].all())] or [0]
    dv = _rounded(max(int((~v_gone[i]).sum()) for i in heads), round_to, d, round_small)
    dqk = _rounded(max(int((~qk_gone[i]).sum()) for i in heads), round_to, d, round_small)
    return _narrowed(AttentionPlan(name, h, d, heads, [], []), qk_gone, v_gone, dqk, dv,
                     "kept heads share one value and one query/key width (the largest any of them needs"
                     + _rounding_note(round_to) + "); the channels kept for it compute what the masked network computes")


def _plan_fused(name: str, mod: nn.Module, v_gone: torch.Tensor, qk_gone: torch.Tensor, round_to: int,
                round_small: bool) -> AttentionPlan:
    """timm's ``Attention``: one ``qkv`` reshaped into heads of one width, so query, key and value
    keep one width (the largest any kept head needs); whole heads only where it cannot narrow."""
    h, d = head_shape(mod)
    heads = [i for i in range(h) if not bool(v_gone[i].all())] or [0]
    if narrowable_heads(mod):
        width = _rounded(max(max(int((~qk_gone[i]).sum()), int((~v_gone[i]).sum())) for i in heads),
                         round_to, d, round_small)
        why = ("query, key and value of a fused qkv projection share one head width (the largest any head "
               "needs" + _rounding_note(round_to) + "); the channels kept for it compute what the masked "
               "network computes")
    else:
        width = d
        why = "a fused qkv projection reshapes into heads of one width: only whole heads go"
    return _narrowed(AttentionPlan(name, h, d, heads, [], []), qk_gone, v_gone, width, width, why)


def _rounding_note(round_to: int) -> str:
    return f", rounded to a multiple of {round_to}" if round_to > 1 else ""


def _narrowed(plan: AttentionPlan, qk_gone: torch.Tensor, v_gone: torch.Tensor, dqk: int, dv: int,
              why: str) -> AttentionPlan:
    """``plan``'s kept heads at query/key width ``dqk`` and value width ``dv`` (every channel that must
    stay, then removable ones), with what the masks remove that stays, and ``why``."""
    plan.qk = [_first(qk_gone[i], dqk) for i in plan.heads]
    plan.v = [_first(v_gone[i], dv) for i in plan.heads]
    extra_v = sum(int(v_gone[i][plan.v[k]].sum()) for k, i in enumerate(plan.heads))
    extra_qk = sum(int(qk_gone[i][plan.qk[k]].sum()) for k, i in enumerate(plan.heads))
    if extra_v or extra_qk:
        plan.kept_beyond_masks = {"value": extra_v, "query_key": extra_qk, "why": why}
    return plan


def _rounded(n: int, round_to: int, cap: int, round_small: bool) -> int:
    n = max(n, 1)
    if n < round_to and not round_small:
        return n
    return min(cap, -(-n // round_to) * round_to)


def _first(gone: torch.Tensor, size: int) -> list[int]:
    """``size`` channels: every channel that must stay, then removable ones (exact to keep)."""
    order = sorted(range(len(gone)), key=lambda j: (bool(gone[j]), j))
    return sorted(order[:size])
