"""What a network takes: one or several named inputs, each with a shape, a dtype and a value range.

An image network takes one float input, and ``--input-shape 1,3,224,224`` says
all there is to say: that is :func:`as_inputs` of a shape, one float32 input
named ``input``. A language or sequence network may take token ids (integers
an embedding looks up, so random ones must lie in ``[low, high)``), a mask, or
several tensors; each is an :class:`InputSpec`, in the order of the network's
``forward`` arguments, given on the command line as ``--input-shape
NAME:SHAPE[:DTYPE[:LOW:HIGH]]`` (once per input) and in a recipe as a list
under ``input_shape:``.

The first axis of every input is the batch: the exported file has a dynamic
batch axis per input and fixed sizes elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spa_export.safety import validate
from spa_export.safety.errors import InputError, shown

#: dtype name -> numpy dtype; float inputs are float32 (the reference's precision)
DTYPES = {"float32": np.float32, "int64": np.int64, "int32": np.int32, "bool": np.bool_}
DEFAULT_NAME = "input"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
SYNTAX = "NAME:SHAPE[:DTYPE[:LOW:HIGH]] (e.g. tokens:1,16,32 or ids:1,16:int64:0:1000)"


@dataclass(frozen=True)
class InputSpec:
    """One input: its name (in the ONNX file), shape with the batch axis first, dtype and value range."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: int = 0          # integer inputs: random values are drawn from [low, high)
    high: int | None = None

    @property
    def is_float(self) -> bool:
        return self.dtype == "float32"

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(DTYPES[self.dtype])

    @property
    def torch_dtype(self) -> object:
        import torch

        return getattr(torch, self.dtype)   # every name of DTYPES is torch's own (torch.bool...)

    def random(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """Seeded random values of this input at ``batch``: normal floats, integers in range, fair bools."""
        full = (batch, *self.shape[1:])
        if self.is_float:
            return rng.standard_normal(full).astype(np.float32)
        if self.dtype == "bool":
            return rng.random(full) < 0.5
        return rng.integers(self.low, self.high, size=full).astype(self.numpy_dtype)

    def example(self, batch: int = 1) -> np.ndarray:
        """A fixed value (zeros; for integers the range's low end) to run or export the network with."""
        full = (batch, *self.shape[1:])
        return np.full(full, self.low if self.dtype.startswith("int") else 0, dtype=self.numpy_dtype)

    def describe(self) -> str:
        text = f"{self.name}: {'×'.join(map(str, self.shape))} {self.dtype}"
        return text + (f" in [{self.low}, {self.high})" if self.high is not None else "")

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.high is not None:
            out["range"] = [self.low, self.high]
        return out


Inputs = tuple[InputSpec, ...]


def make_spec(name: object, shape: object, dtype: object = "float32", value_range: object = None, *,
              where: str) -> InputSpec:
    """An :class:`InputSpec` from loose values, every one checked; errors name ``where``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"{where}: input name {shown(str(name), 40)!r} must be 1 to 64 letters, "
                         "digits, '_', '.' or '-', starting with a letter or '_'")
    dims = validate.input_shape(shape, f"{where} (input '{name}')", min_dims=1)
    if dtype not in DTYPES:
        raise InputError(f"{where}: input '{name}' has dtype {shown(str(dtype), 20)!r}; "
                         f"one of {', '.join(DTYPES)}")
    low, high = 0, None
    if value_range is not None:
        if dtype in ("float32", "bool"):
            raise InputError(f"{where}: input '{name}' is {dtype}: a value range is for integer inputs")
        if not isinstance(value_range, (list, tuple)) or len(value_range) != 2:
            raise InputError(f"{where}: input '{name}': the range is two integers LOW, HIGH (values in "
                             "[LOW, HIGH))")
        low = validate.integer(value_range[0], f"{where} (input '{name}' low)", minimum=-(2**62), maximum=2**62)
        high = validate.integer(value_range[1], f"{where} (input '{name}' high)", minimum=-(2**62), maximum=2**62)
        if high <= low:
            raise InputError(f"{where}: input '{name}': the range [{low}, {high}) is empty")
        if dtype == "int32" and (low < -(2**31) or high > 2**31):
            raise InputError(f"{where}: input '{name}': the range [{low}, {high}) does not fit int32")
    elif dtype in ("int64", "int32"):
        raise InputError(f"{where}: input '{name}' is {dtype}: give the range its values lie in, "
                         f"e.g. {name}:{','.join(map(str, dims))}:{dtype}:0:1000 for an embedding of "
                         "1000 entries (random verification inputs are drawn from it)")
    return InputSpec(name, dims, str(dtype), low, high)


def parse_input(text: str, where: str = "--input-shape") -> InputSpec:
    """``NAME:SHAPE[:DTYPE[:LOW:HIGH]]`` -> :class:`InputSpec`."""
    parts = str(text).split(":")
    if len(parts) not in (2, 3, 5):
        raise InputError(f"{where} '{shown(str(text), 60)}': expected {SYNTAX}")
    value_range = (parts[3], parts[4]) if len(parts) == 5 else None
    return make_spec(parts[0], parts[1], parts[2] if len(parts) > 2 else "float32", value_range, where=where)


def checked(specs: Sequence[InputSpec], where: str) -> Inputs:
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"{where}: input name(s) given twice: {', '.join(repeated)}")
    return tuple(specs)


def as_inputs(value: object, where: str = "--input-shape") -> Inputs:
    """Every input of the network, from what a user or a caller may give.

    A shape (``1,3,224,224``, a list or tuple of integers: one float32 input
    named ``input``); an :class:`InputSpec`; a ``NAME:SHAPE[:DTYPE[:LOW:HIGH]]``
    string; a mapping with ``name``, ``shape``, ``dtype`` and ``range``; or a
    list of these (a repeated ``--input-shape``, a recipe's list), in the order
    of the network's inputs.
    """
    if isinstance(value, (InputSpec, str, dict)):
        items = [value]
    elif isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (InputSpec, str, dict, list, tuple)) for v in value):
        items = list(value)
    else:
        items = [value]   # a shape of integers (or something validate refuses with a clear message)
    specs = []
    for i, item in enumerate(items):
        here = where if len(items) == 1 else f"{where}[{i}]"
        if isinstance(item, InputSpec):
            specs.append(item)
        elif isinstance(item, str) and ":" in item:
            specs.append(parse_input(item, here))
        elif isinstance(item, dict):
            specs.append(_from_mapping(item, here))
        elif len(items) == 1:
            specs.append(InputSpec(DEFAULT_NAME, validate.input_shape(item, where)))
        else:
            raise InputError(f"{here}: with several inputs, name each one: {SYNTAX}")
    return checked(specs, where)


def _from_mapping(item: dict, where: str) -> InputSpec:
    unknown = set(item) - {"name", "shape", "dtype", "range"}
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (name, shape, dtype, range)")
    if "name" not in item or "shape" not in item:
        raise InputError(f"{where}: an input needs a name and a shape")
    return make_spec(item["name"], item["shape"], item.get("dtype", "float32"), item.get("range"), where=where)


def is_plain(inputs: Inputs) -> bool:
    """One float32 input named ``input``: what ``--input-shape`` alone describes."""
    return len(inputs) == 1 and inputs[0].name == DEFAULT_NAME and inputs[0].is_float


def random_arrays(inputs: Inputs, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    return {s.name: s.random(rng, batch) for s in inputs}


def random_tensors(inputs: Inputs, batch: int, generator: object) -> tuple:
    """Random torch tensors of every input, in order, from a ``torch.Generator``.

    Floats are standard normal (for one input exactly ``torch.randn`` of its
    shape), integers uniform in their range, bools fair.
    """
    import torch

    out = []
    for s in inputs:
        full = (batch, *s.shape[1:])
        if s.is_float:
            out.append(torch.randn(full, generator=generator))
        elif s.dtype == "bool":
            out.append(torch.rand(full, generator=generator) < 0.5)
        else:
            out.append(torch.randint(s.low, s.high, full, generator=generator, dtype=s.torch_dtype))
    return tuple(out)


def example_tensors(inputs: Inputs, batch: int = 1) -> tuple:
    import torch

    return tuple(torch.from_numpy(s.example(batch)) for s in inputs)


def describe(inputs: Inputs) -> str:
    """``1×3×224×224`` for a plain input; every input's name, shape, dtype and range otherwise."""
    if is_plain(inputs):
        return "×".join(map(str, inputs[0].shape))
    return "; ".join(s.describe() for s in inputs)


def as_option(inputs: Inputs) -> str:
    """The inputs as the command line gives them: ``--input-shape 1,3,8,8``, or one ``--input-shape`` per input."""
    if is_plain(inputs):
        return f"--input-shape {','.join(map(str, inputs[0].shape))}"
    return " ".join(f"--input-shape {s.name}:{','.join(map(str, s.shape))}:{s.dtype}"
                    + (f":{s.low}:{s.high}" if s.high is not None else "") for s in inputs)


def to_json(inputs: Inputs) -> dict:
    """``{"input_shape": [...]}`` for a plain input (as before), else ``{"inputs": [...]}``."""
    if is_plain(inputs):
        return {"input_shape": list(inputs[0].shape)}
    return {"inputs": [s.to_json() for s in inputs]}
