"""Inputs other than one float image: names, shapes, dtypes and value ranges (spa_export.runtime.inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spa_export.runtime.inputs import (
    InputSpec,
    as_inputs,
    describe,
    parse_input,
    random_tensors,
    to_json,
)
from spa_export.safety.errors import InputError


def test_a_shape_is_one_float_input_named_input() -> None:
    for given in ("1,3,8,8", "1x3x8x8", (1, 3, 8, 8), [1, 3, 8, 8], ("1,3,8,8",), ((1, 3, 8, 8),)):
        assert as_inputs(given) == (InputSpec("input", (1, 3, 8, 8)),)
    assert to_json(as_inputs("1,3,8,8")) == {"input_shape": [1, 3, 8, 8]}
    assert describe(as_inputs("1,3,8,8")) == "1×3×8×8"


def test_named_inputs_with_dtypes_and_ranges() -> None:
    specs = as_inputs(["ids:2,16:int64:0:1000", "padding:2,16:bool",
                       {"name": "lengths", "shape": [2], "dtype": "int32", "range": [1, 17]},
                       "features:2,16,6"])
    assert specs == (InputSpec("ids", (2, 16), "int64", 0, 1000), InputSpec("padding", (2, 16), "bool"),
                     InputSpec("lengths", (2,), "int32", 1, 17), InputSpec("features", (2, 16, 6)))
    assert to_json(specs)["inputs"][0] == {"name": "ids", "shape": [2, 16], "dtype": "int64", "range": [0, 1000]}
    assert describe(specs).startswith("ids: 2×16 int64 in [0, 1000); padding: 2×16 bool")


def test_random_values_lie_in_their_range_and_are_seeded() -> None:
    specs = as_inputs(["ids:1,64:int64:5:9", "padding:1,64:bool", "x:1,4"])
    first = random_tensors(specs, 3, torch.Generator().manual_seed(0))
    again = random_tensors(specs, 3, torch.Generator().manual_seed(0))
    ids, padding, x = first
    assert ids.dtype == torch.int64 and ids.shape == (3, 64) and set(ids.unique().tolist()) == {5, 6, 7, 8}
    assert padding.dtype == torch.bool and 0 < int(padding.sum()) < padding.numel()
    assert x.dtype == torch.float32 and x.shape == (3, 4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # one float input: exactly torch.randn, as the tracer and pack have always drawn it
    plain = random_tensors(as_inputs("1,3,4,4"), 2, torch.Generator().manual_seed(7))[0]
    assert torch.equal(plain, torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(7)))
    rng = np.random.default_rng(1)
    assert set(np.unique(specs[0].random(rng, 4)).tolist()) <= {5, 6, 7, 8}


@pytest.mark.parametrize(("given", "message"), [
    ("ids:1,16:int64", "give the range its values lie in, e.g. ids:1,16:int64:0:1000"),
    ("ids:1,16:int64:9:9", "the range [9, 9) is empty"),
    ("x:1,16:float16", "has dtype 'float16'; one of float32, int64, int32, bool"),
    ("x:1,16:float32:0:4", "a value range is for integer inputs"),
    ("1x:1,16", "must be 1 to 64 letters"),
    ("x:1,0", "positive sizes"),
    ("x:1,16:int64:0", "expected NAME:SHAPE[:DTYPE[:LOW:HIGH]]"),
    ("ids:1,16:int64:a:9", "expected an integer"),
])
def test_bad_input_specs_say_what_is_wrong(given: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        parse_input(given)
    assert message in str(err.value)


def test_several_inputs_must_each_be_named_once() -> None:
    with pytest.raises(InputError, match="with several inputs, name each one"):
        as_inputs(["1,3,8,8", "ids:1,4:int64:0:9"])
    with pytest.raises(InputError, match="input name\\(s\\) given twice: ids"):
        as_inputs(["ids:1,4:int64:0:9", "ids:1,4:bool"])
    with pytest.raises(InputError, match="unknown key\\(s\\) size"):
        as_inputs([{"name": "x", "shape": "1,4", "size": 3}])
