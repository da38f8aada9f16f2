"""The merge formula on numpy arrays: the spec's steps 2 and 3, the same bits everywhere."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spa_export.runtime.merge_math import low_rank, merge_layer


def test_low_rank_is_the_exact_product_rounded_once() -> None:
    rng = np.random.default_rng(0)
    cols = rng.standard_normal((7, 5)).astype(np.float32)
    rows = rng.standard_normal((5, 9)).astype(np.float32)
    got = low_rank(cols, rows)
    assert got.dtype == np.float32 and got.shape == (7, 9)
    for i in range(7):
        for j in range(9):
            exact = math.fsum(float(cols[i, k]) * float(rows[k, j]) for k in range(5))
            # summed in float64 (53 bits) then rounded to float32 (24): at most half a float32 ulp off
            assert abs(float(got[i, j]) - exact) <= np.spacing(np.float32(abs(exact))) * 0.5 + 1e-30


def test_low_rank_does_not_depend_on_the_memory_layout() -> None:
    rng = np.random.default_rng(1)
    cols = rng.standard_normal((64, 8)).astype(np.float32)
    rows = rng.standard_normal((8, 48)).astype(np.float32)
    a = low_rank(cols, rows)
    b = low_rank(np.asfortranarray(cols), np.asfortranarray(rows))
    assert a.tobytes() == b.tobytes()


def test_splora_update_goes_to_the_kernel_centre_of_kept_channels_and_masks_zero() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    out_mask = np.array([1, 0, 1, 1], dtype=np.uint8)
    in_mask = np.array([True, True, False])
    cols = rng.standard_normal((3, 2)).astype(np.float32)
    rows = rng.standard_normal((2, 2)).astype(np.float32)
    merged, bias = merge_layer(w, b, {"out_mask": out_mask, "in_mask": in_mask, "lora_cols": cols, "lora_rows": rows})
    expected = w.copy()
    expected[np.ix_([0, 2, 3], [0, 1], [1], [1])] += (cols.astype(np.float64) @ rows.astype(np.float64)).astype(
        np.float32)[:, :, None, None]
    expected[1] = 0
    expected[:, 2] = 0
    np.testing.assert_array_equal(merged, expected)
    np.testing.assert_array_equal(bias, np.where(out_mask.astype(bool), b, 0))
    assert w[1].any()   # the caller's arrays are not touched


def test_grouped_input_masks_zero_what_each_group_reads() -> None:
    w = np.ones((4, 2, 1, 1), dtype=np.float32)   # 2 groups: outputs 0-1 read inputs 0-1, outputs 2-3 read 2-3
    in_mask = np.array([1, 1, 0, 1], dtype=bool)
    merged, _ = merge_layer(w, None, {"in_mask": in_mask}, groups=2)
    assert merged[:, :, 0, 0].tolist() == [[1, 1], [1, 1], [0, 1], [0, 1]]


@pytest.mark.parametrize("kind", ["sppara", "bias"])
def test_pointwise_update_and_adapter_bias(kind: str) -> None:
    w = np.zeros((2, 3), dtype=np.float32)
    b = np.zeros(2, dtype=np.float32)
    if kind == "sppara":
        pw = np.arange(6, dtype=np.float32).reshape(3, 2)   # stored (in, out)
        merged, _ = merge_layer(w, b, {"pointwise": pw})
        np.testing.assert_array_equal(merged, pw.T)
    else:
        merged, bias = merge_layer(w, b, {"adapter_bias": np.array([0.5], np.float32),
                                          "out_mask": np.array([0, 1], bool)})
        assert bias.tolist() == [0.0, 0.5]


@pytest.mark.parametrize("kind", ["splora", "sppara", "none"])
def test_merging_only_the_kept_channels_gives_the_same_bits_as_merging_all(kind: str) -> None:
    from spa_export.runtime.merge_math import merge_kept

    rng = np.random.default_rng(3)
    w = rng.standard_normal((12, 10, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    out_mask, in_mask = rng.random(12) < 0.6, rng.random(10) < 0.7
    layer = {"out_mask": out_mask, "in_mask": in_mask,
             "adapter_bias": rng.standard_normal(int(out_mask.sum())).astype(np.float32)}
    if kind == "splora":
        layer |= {"lora_cols": rng.standard_normal((int(out_mask.sum()), 3)).astype(np.float32),
                  "lora_rows": rng.standard_normal((3, int(in_mask.sum()))).astype(np.float32)}
    elif kind == "sppara":
        layer["pointwise"] = rng.standard_normal((int(in_mask.sum()), int(out_mask.sum()))).astype(np.float32)
    full_w, full_b = merge_layer(w, b, layer)
    # a plan keeps the masks' channels and, rounding up, a few masked ones
    out_keep = np.flatnonzero(out_mask | (np.arange(12) % 5 == 0))
    in_keep = np.flatnonzero(in_mask | (np.arange(10) == 9))
    kw, kb = merge_kept(w, b, layer, out_keep=out_keep, in_keep=in_keep)
    assert kw.tobytes() == np.ascontiguousarray(full_w[out_keep][:, in_keep]).tobytes()
    assert kb.tobytes() == full_b[out_keep].tobytes()
