"""all_finite: one sum decides, the element-wise check only where the sum overflows."""

from __future__ import annotations

import math

import pytest
import torch

from spa_export.nets.finite import all_finite


def test_finite_values_are_finite() -> None:
    assert all_finite(torch.randn(10_000, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_one_non_finite_element_anywhere_is_found(bad: float) -> None:
    for position in (0, 4_321, 9_999):
        t = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
        t[position] = bad
        assert not all_finite(t)


def test_infinities_of_both_signs_are_found() -> None:
    assert not all_finite(torch.tensor([1.0, math.inf, -math.inf]))


@pytest.mark.parametrize(("value", "dtype"), [(3e38, torch.float32), (60_000.0, torch.float16)])
def test_a_sum_that_overflows_on_finite_values_is_still_finite(value: float, dtype: torch.dtype) -> None:
    t = torch.full((8,), value, dtype=dtype)
    assert not torch.isfinite(t.sum())  # the fast path cannot decide this one
    assert all_finite(t)
    t[3] = math.nan
    assert not all_finite(t)


def test_integers_bools_and_empty_tensors_are_finite() -> None:
    assert all_finite(torch.tensor([1, 2, 3]))
    assert all_finite(torch.tensor([True, False]))
    assert all_finite(torch.empty(0))


def test_complex_values() -> None:
    assert all_finite(torch.tensor([1 + 2j, 3 - 1j]))
    assert not all_finite(torch.tensor([1 + 2j, complex(0, math.inf)]))
