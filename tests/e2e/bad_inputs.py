"""A corpus of bad inputs for ``spa-export build``, written into a directory on demand.

Every case is a function registered with :func:`case`; it writes whatever files
it needs through the :class:`Corpus` it is given and returns a :class:`Case`:
the ``build`` arguments (without ``--out`` unless the case is about ``--out``),
the substrings the one-line error must contain (the file, the tensor or key,
what was expected) and how to run it (in-process through click's CliRunner, or
as a real subprocess for the cases where the process boundary matters:
PYTHONPATH, pickles that would run code, startup).

The base is the shipped example (``models/tiny_resnet.safetensors``) and
most SPA files are edits of the shipped example SPA, so each case differs from
a valid build in one way only.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from safetensors.torch import save_file

from spa_export.spa import state_dict_digest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXAMPLE_BASE = REPO / "models" / "tiny_resnet.safetensors"
EXAMPLE_SPA = REPO / "models" / "tiny_resnet-example.spa"
SHAPE = "1,3,32,32"


# --------------------------------------------------------------------------- helpers of the e2e tests

def cli_command() -> list[str]:
    """The CLI as a user runs it, in a fresh interpreter."""
    return [sys.executable, "-m", "spa_export"]


def cli_env(*, pythonpath: bool = False, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = str(HERE)
    env.update(extra or {})
    return env


def invoke(args: list[str]):
    """Run ``spa-export ARGS`` in-process (click's CliRunner; stderr kept apart from stdout)."""
    from click.testing import CliRunner

    from spa_export.cli.main import _register, cli

    _register()
    return CliRunner().invoke(cli, args, prog_name="spa-export")


def tree(path: Path) -> object:
    """Everything under ``path``: names, kinds, bytes and permission bits (None if absent)."""
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_dir():
        return ("file", path.read_bytes(), path.stat().st_mode)
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = ("dir", None, p.stat().st_mode) if p.is_dir() else ("file", p.read_bytes(), p.stat().st_mode)
    return out


def existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@dataclass
class Case:
    id: str
    args: list[str]
    expect: list[str]
    subprocess: bool = False
    pythonpath: bool = False               # put tests/e2e on PYTHONPATH (factories_bad)
    out: Path | None = None                # the case's own --out (else the test supplies one)
    guards: list[Path] = field(default_factory=list)   # must be byte-identical afterwards
    marker: Path | None = None             # must not exist afterwards (code did not run)
    absent: list[Path] = field(default_factory=list)   # must not exist afterwards
    env: dict[str, str] = field(default_factory=dict)   # extra environment of the subprocess


class RunsCode:
    """Unpickling this runs code: it writes ``marker``. A safe loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: D105
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


class Corpus:
    """Writes the files of the cases into ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.base = EXAMPLE_BASE
        self.spa = EXAMPLE_SPA
        with safe_open(str(EXAMPLE_SPA), "pt") as f:
            self.meta: dict[str, str] = dict(f.metadata())
            self.tensors: dict[str, torch.Tensor] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        with safe_open(str(EXAMPLE_BASE), "pt") as f:
            self.state: dict[str, torch.Tensor] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        self.digest = state_dict_digest(self.state)

    def path(self, name: str) -> Path:
        return self.root / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        p = self.path(name)
        p.write_bytes(data)
        return p

    def spa_with(self, name: str, *, drop: tuple[str, ...] = (), meta: dict[str, str | None] | None = None,
                 **tensors: torch.Tensor) -> Path:
        """The example SPA with tensors replaced/added (``__`` in a keyword stands for ``.``)."""
        t = {k: v for k, v in self.tensors.items() if k not in drop}
        t.update({k.replace("__", "."): v for k, v in tensors.items()})
        m = dict(self.meta)
        for k, v in (meta or {}).items():
            if v is None:
                m.pop(k, None)
            else:
                m[k] = v
        return self.write_bytes(name, st_save(t, metadata=m))

    def spa_raw_header(self, name: str, header: dict, data: bytes) -> Path:
        text = json.dumps({"__metadata__": self.meta, **header}).encode()
        return self.write_bytes(name, struct.pack("<Q", len(text)) + text + data)

    def base_with(self, name: str, *, drop: tuple[str, ...] = (), **tensors: torch.Tensor) -> Path:
        sd = {k: v for k, v in self.state.items() if k not in drop}
        sd.update({k.replace("__", "."): v for k, v in tensors.items()})
        p = self.path(name)
        save_file(sd, str(p))
        return p

    def args(self, *, base: Path | str | None = None, spa: Path | str | None = None, shape: str = SHAPE,
             extra: tuple[str, ...] = ()) -> list[str]:
        return ["--base", str(base or self.base), "--spa", str(spa or self.spa), "--input-shape", shape,
                "--bench", "none", *extra]


CASES: dict[str, Callable[[Corpus], Case]] = {}


def case(fn: Callable[[Corpus], Case]) -> Callable[[Corpus], Case]:
    CASES[fn.__name__] = fn
    return fn


def build_case(corpus: Corpus, case_id: str) -> Case:
    c = CASES[case_id](corpus)
    c.id = case_id
    return c


def _mask(n: int, kept: int) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[:kept] = True
    return m


# --------------------------------------------------------------------------- the SPA container

@case
def spa_not_safetensors(c: Corpus) -> Case:
    p = c.write_bytes("notes.spa", b"this is plainly a text file, not a safetensors file\n" * 4)
    return Case("", c.args(spa=p), [str(p), "not a safetensors file", "header length"], subprocess=True)


@case
def spa_empty(c: Corpus) -> Case:
    p = c.write_bytes("empty.spa", b"")
    return Case("", c.args(spa=p), [str(p), "empty file", "not a safetensors file"])


@case
def spa_truncated(c: Corpus) -> Case:
    p = c.write_bytes("truncated.spa", EXAMPLE_SPA.read_bytes()[:-100])
    return Case("", c.args(spa=p), [str(p), "tensor '", "data_offsets", "out of range",
                                    "size of the data section"])


@case
def spa_header_length_absurd(c: Corpus) -> Case:
    p = c.write_bytes("hugeheader.spa", struct.pack("<Q", 2**40) + b"{}")
    return Case("", c.args(spa=p), [str(p), "header length 1099511627776", "exceeds the limit"])


@case
def spa_header_shape_absurd(c: Corpus) -> Case:
    entry = {"dtype": "BOOL", "shape": [2**40, 2**40], "data_offsets": [0, 16]}
    p = c.spa_raw_header("hugeshape.spa", {"stem.0.out_mask": entry}, b"\x01" * 16)
    return Case("", c.args(spa=p), [str(p), "tensor 'stem.0.out_mask'", f"[{2**40}, {2**40}]",
                                    "needs", "data_offsets [0, 16] give 16"])


@case
def spa_header_offsets_absurd(c: Corpus) -> Case:
    entry = {"dtype": "BOOL", "shape": [16], "data_offsets": [2**62, 2**62 + 16]}
    p = c.spa_raw_header("hugeoffsets.spa", {"stem.0.out_mask": entry}, b"\x01" * 16)
    return Case("", c.args(spa=p), [str(p), "tensor 'stem.0.out_mask'", "out of range",
                                    "begin <= end <= 16"])


@case
def spa_header_offsets_overlap(c: Corpus) -> Case:
    a = {"dtype": "BOOL", "shape": [16], "data_offsets": [0, 16]}
    b = {"dtype": "BOOL", "shape": [16], "data_offsets": [8, 24]}
    p = c.spa_raw_header("overlap.spa", {"stem.0.out_mask": a, "branch.0.out_mask": b}, b"\x01" * 24)
    return Case("", c.args(spa=p), [str(p), "overlap", "stem.0.out_mask", "branch.0.out_mask"])


@case
def spa_is_directory(c: Corpus) -> Case:
    p = c.path("adir.spa")
    p.mkdir(exist_ok=True)
    return Case("", c.args(spa=p), [str(p), "is a directory, not a file"])


@case
def base_is_directory(c: Corpus) -> Case:
    p = c.path("adir.safetensors")
    p.mkdir(exist_ok=True)
    return Case("", c.args(base=p), [str(p), "is a directory, not a file"])


@case
def spa_unknown_field(c: Corpus) -> Case:
    p = c.spa_with("unknownfield.spa", stem__0__adapter__extra=torch.ones(3))
    return Case("", c.args(spa=p), [str(p), "tensor 'stem.0.adapter.extra'", "unknown tensor name",
                                    "expected '<module>.<field>'"])


# --------------------------------------------------------------------------- metadata

@case
def spa_format_missing(c: Corpus) -> Case:
    p = c.spa_with("noformat.spa", meta={"spa.format": None})
    return Case("", c.args(spa=p), [str(p), "no spa.format", "expected spa.format 'spa'"])


@case
def spa_format_wrong(c: Corpus) -> Case:
    p = c.spa_with("wrongformat.spa", meta={"spa.format": "onnx"})
    return Case("", c.args(spa=p), [str(p), "spa.format 'onnx'", "expected spa.format 'spa'"])


@case
def spa_version_unknown(c: Corpus) -> Case:
    p = c.spa_with("v2.spa", meta={"spa.version": "2"})
    return Case("", c.args(spa=p), [str(p), "spa.version '2'", "knows spa.version '1'"])


@case
def spa_digest_malformed(c: Corpus) -> Case:
    p = c.spa_with("baddigest.spa", meta={"spa.base_digest": "md5:1234"})
    return Case("", c.args(spa=p), [str(p), "spa.base_digest 'md5:1234'", "64 lowercase hex digits"])


# --------------------------------------------------------------------------- masks and adapters

@case
def mask_wrong_length(c: Corpus) -> Case:
    p = c.spa_with("masklen.spa", stem__0__out_mask=_mask(17, 8))
    return Case("", c.args(spa=p), [str(p), "tensor 'stem.0.out_mask'", "expected length 16", "got 17"])


@case
def mask_wrong_dtype(c: Corpus) -> Case:
    p = c.spa_with("maskdtype.spa", stem__0__out_mask=_mask(16, 8).to(torch.uint8))
    return Case("", c.args(spa=p), [str(p), "tensor 'stem.0.out_mask'", "expected dtype BOOL", "got U8"])


@case
def mask_wrong_rank(c: Corpus) -> Case:
    p = c.spa_with("maskrank.spa", stem__0__out_mask=_mask(16, 8).reshape(4, 4))
    return Case("", c.args(spa=p), [str(p), "tensor 'stem.0.out_mask'", "expected a 1-D mask", "[4, 4]"])


@case
def adapter_cols_vs_mask(c: Corpus) -> Case:
    # layer1.0.conv1 keeps 8 of 16 outputs: the left factor must have 8 rows
    p = c.spa_with("colsrows.spa", layer1__0__conv1__adapter__cols=torch.zeros(9, 4))
    return Case("", c.args(spa=p), [str(p), "tensor 'layer1.0.conv1.adapter.cols'", "expected shape [8, 4]",
                                    "got [9, 4]"])


@case
def adapter_rows_vs_layer(c: Corpus) -> Case:
    # no in_mask: the right factor must cover all 16 inputs of layer1.0.conv1
    p = c.spa_with("rowslayer.spa", layer1__0__conv1__adapter__rows=torch.zeros(4, 15))
    return Case("", c.args(spa=p), [str(p), "tensor 'layer1.0.conv1.adapter.rows'", "expected shape [4, 16]",
                                    "got [4, 15]"])


@case
def adapter_on_depthwise(c: Corpus) -> Case:
    # branch.3 is a depthwise 3x3 convolution (groups=16) keeping 8 of its outputs
    p = c.spa_with("depthwise.spa", branch__3__adapter__cols=torch.zeros(8, 2),
                   branch__3__adapter__rows=torch.zeros(2, 16))
    return Case("", c.args(spa=p), [str(p), "tensor 'branch.3.adapter.cols'", "grouped convolution (groups=16)",
                                    "groups == 1"])


@case
def adapter_even_kernel(c: Corpus) -> Case:
    from factories_bad import even_kernel_net

    torch.manual_seed(0)
    base = c.path("evenkernel.safetensors")
    save_file({k: v.contiguous() for k, v in even_kernel_net().state_dict().items()}, str(base))
    meta = {"spa.format": "spa", "spa.version": "1", "spa.arch": "factories_bad:even_kernel_net"}
    spa = c.write_bytes("evenkernel.spa", st_save({"0.adapter.cols": torch.zeros(8, 2),
                                                   "0.adapter.rows": torch.zeros(2, 3)}, metadata=meta))
    return Case("", c.args(base=base, spa=spa, shape="1,3,16,16", extra=("--arch", "factories_bad:even_kernel_net")),
                [str(spa), "tensor '0.adapter.cols'", "kernel size (2, 2)", "odd kernel sizes"],
                subprocess=True, pythonpath=True)


@case
def layer_not_in_base(c: Corpus) -> Case:
    p = c.spa_with("nolayer.spa", layer9__conv__out_mask=_mask(16, 8))
    return Case("", c.args(spa=p), [str(p), "tensor 'layer9.conv.out_mask'", "no module 'layer9.conv'"])


@case
def layer_not_adaptable(c: Corpus) -> Case:
    p = c.spa_with("bnlayer.spa", layer1__0__bn1__out_mask=_mask(16, 8))
    return Case("", c.args(spa=p), [str(p), "tensor 'layer1.0.bn1.out_mask'", "BatchNorm2d",
                                    "expected Linear or ConvNd"])


@case
def adapter_nan(c: Corpus) -> Case:
    cols = c.tensors["layer1.0.conv1.adapter.cols"].clone()
    cols[3, 1] = float("nan")
    p = c.spa_with("nan.spa", layer1__0__conv1__adapter__cols=cols)
    return Case("", c.args(spa=p), [str(p), "tensor 'layer1.0.conv1.adapter.cols'", "non-finite"])


@case
def adapter_inf(c: Corpus) -> Case:
    bias = c.tensors["fc.adapter_bias"].clone()
    bias[0] = float("-inf")
    p = c.spa_with("inf.spa", fc__adapter_bias=bias)
    return Case("", c.args(spa=p), [str(p), "tensor 'fc.adapter_bias'", "non-finite"])


@case
def adapter_overflow_on_merge(c: Corpus) -> Case:
    # finite factors whose product overflows float32: caught when merging
    p = c.spa_with("overflow.spa", fc__adapter__cols=torch.full((10, 4), 3e38),
                   fc__adapter__rows=torch.full((4, 32), 3e38))
    return Case("", c.args(spa=p), [str(p), "'fc'", "non-finite"])


@case
def adapter_bias_without_bias(c: Corpus) -> Case:
    p = c.spa_with("nobias.spa", layer1__0__conv1__adapter_bias=torch.zeros(8))
    return Case("", c.args(spa=p), [str(p), "tensor 'layer1.0.conv1.adapter_bias'", "has no bias",
                                    "adapter_bias needs one"])


# --------------------------------------------------------------------------- overrides

@case
def override_unknown_key(c: Corpus) -> Case:
    p = c.spa_with("ovunknown.spa", override__head__weight=torch.zeros(10, 32))
    return Case("", c.args(spa=p), [str(p), "tensor 'override.head.weight'", "unknown key 'head.weight'"])


@case
def override_bn_resize(c: Corpus) -> Case:
    p = c.spa_with("ovbn.spa", override__layer1__0__bn1__weight=torch.ones(20))
    return Case("", c.args(spa=p), [str(p), "tensor 'override.layer1.0.bn1.weight'", "[20]", "[16]",
                                    "BatchNorm2d", "only dimension 0"])


@case
def override_head_without_bias(c: Corpus) -> Case:
    # a new head of 5 classes whose bias keeps the base's 10 entries
    p = c.spa_with("ovhead.spa", drop=("fc.adapter.cols", "fc.adapter_bias", "fc.adapter.rows"),
                   override__fc__weight=torch.zeros(5, 32))
    return Case("", c.args(spa=p), [str(p), "tensor 'override.fc.weight'", "'fc.bias' is not overridden"])


# --------------------------------------------------------------------------- base checkpoint, digest, arch

@case
def base_digest_mismatch(c: Corpus) -> Case:
    fake = "sha256:" + "0" * 64
    p = c.spa_with("otherbase.spa", meta={"spa.base_digest": fake})
    return Case("", c.args(spa=p), [str(p), fake, c.digest, "--ignore-base-digest"], subprocess=True)


@case
def base_missing(c: Corpus) -> Case:
    p = c.path("no-such-base.safetensors")
    return Case("", c.args(base=p), [str(p), "no such file"])


@case
def spa_missing(c: Corpus) -> Case:
    p = c.path("no-such.spa")
    return Case("", c.args(spa=p), [str(p), "no such file"])


@case
def base_not_a_checkpoint(c: Corpus) -> Case:
    p = c.write_bytes("base.txt", b"weights? no.\n" * 10)
    return Case("", c.args(base=p), [str(p), "cannot read as a safetensors file"])


@case
def base_extra_and_missing_keys(c: Corpus) -> Case:
    p = c.base_with("keys.safetensors", drop=("fc.bias",), extra__weight=torch.zeros(3))
    return Case("", c.args(base=p, extra=("--ignore-base-digest",)),
                [str(p), "missing keys 'fc.bias'", "unexpected keys 'extra.weight'"])


@case
def base_wrong_shape(c: Corpus) -> Case:
    p = c.base_with("shape.safetensors", fc__weight=torch.zeros(11, 32))
    return Case("", c.args(base=p, extra=("--ignore-base-digest",)),
                [str(p), "'fc.weight' has shape [11, 32]", "expects [10, 32]"])


@case
def base_nonfinite(c: Corpus) -> Case:
    w = c.state["stem.0.weight"].clone()
    w[0, 0, 0, 0] = float("nan")
    p = c.base_with("nanbase.safetensors", stem__0__weight=w)
    return Case("", c.args(base=p, extra=("--ignore-base-digest",)), [str(p), "non-finite", "'stem.0.weight'"])


@case
def base_negative_variance(c: Corpus) -> Case:
    # finite, but every output would be NaN
    p = c.base_with("negvar.safetensors", layer1__0__bn1__running_var=torch.full((16,), -1.0))
    return Case("", c.args(base=p, extra=("--ignore-base-digest",)),
                [str(p), "'layer1.0.bn1.running_var'", "negative", "cannot be negative"])


@case
def override_negative_variance(c: Corpus) -> Case:
    p = c.spa_with("ovnegvar.spa", override__layer2__1__bn2__running_var=torch.full((32,), -0.5))
    return Case("", c.args(spa=p), [str(p), "'layer2.1.bn2.running_var'", "negative"])


@case
def base_sparse_tensor(c: Corpus) -> Case:
    p = c.path("sparse.pt")
    torch.save({**c.state, "fc.weight": c.state["fc.weight"].to_sparse()}, str(p))
    return Case("", c.args(base=p, extra=("--ignore-base-digest",)),
                [str(p), "'fc.weight'", "sparse", "expected dense tensors"])


@case
def base_meta_tensor(c: Corpus) -> Case:
    p = c.path("meta.pt")
    torch.save({**c.state, "fc.bias": torch.empty(10, device="meta")}, str(p))
    return Case("", c.args(base=p, extra=("--ignore-base-digest",)), [str(p), "'fc.bias'", "meta tensor"])


@case
def base_pickle_runs_code(c: Corpus) -> Case:
    marker = c.path("MARKER-pt")
    p = c.path("evil.pt")
    torch.save({"stem.0.weight": torch.zeros(1), "payload": RunsCode(marker)}, str(p))
    return Case("", c.args(base=p), [str(p), "cannot read as a PyTorch checkpoint"], subprocess=True,
                marker=marker)


@case
def base_legacy_pickle_runs_code(c: Corpus) -> Case:
    marker = c.path("MARKER-pth")
    p = c.path("evil.pth")
    p.write_bytes(pickle.dumps({"stem.0.weight": RunsCode(marker)}, protocol=2))
    return Case("", c.args(base=p), [str(p), "cannot read as a PyTorch checkpoint"], subprocess=True,
                marker=marker)


@case
def base_not_a_state_dict(c: Corpus) -> Case:
    p = c.path("list.pt")
    torch.save([torch.zeros(2)], str(p))
    return Case("", c.args(base=p), [str(p), "expected a state dict"])


@case
def spa_arch_names_code(c: Corpus) -> Case:
    # the file names an importable factory with a side effect; only --arch may choose such code
    marker = c.path("MARKER-arch")
    p = c.spa_with("codearch.spa", meta={"spa.arch": "factories_bad:writes_marker", "spa.base_digest": None})
    return Case("", c.args(spa=p), [str(p), "spa.arch 'factories_bad:writes_marker'", "import and run",
                                    "pass --arch"], subprocess=True, pythonpath=True, marker=marker,
                env={"SPA_EXPORT_TEST_MARKER": str(marker)})


@case
def spa_arch_aborts(c: Corpus) -> Case:
    # 'os:abort' would kill the process outright (and leave the staging directory behind)
    p = c.spa_with("abort.spa", meta={"spa.arch": "os:abort"})
    return Case("", c.args(spa=p), [str(p), "spa.arch 'os:abort'", "pass --arch"], subprocess=True)


@case
def arch_differs_from_spa(c: Corpus) -> Case:
    return Case("", c.args(extra=("--arch", "torchvision:resnet18")),
                [str(EXAMPLE_SPA), "made for 'spa_export.examples:tiny_resnet'", "not 'torchvision:resnet18'"])


@case
def arch_unknown_torchvision(c: Corpus) -> Case:
    p = c.spa_with("noarch.spa", meta={"spa.arch": None})
    return Case("", c.args(spa=p, extra=("--arch", "torchvision:no_such_net")),
                ["unknown torchvision classification model 'no_such_net'"])


@case
def arch_unimportable(c: Corpus) -> Case:
    p = c.spa_with("noarch2.spa", meta={"spa.arch": None})
    return Case("", c.args(spa=p, extra=("--arch", "no_such_pkg.models:net")),
                ["cannot import 'no_such_pkg.models'", "no_such_pkg.models:net"])


@case
def arch_malformed(c: Corpus) -> Case:
    p = c.spa_with("noarch3.spa", meta={"spa.arch": None})
    return Case("", c.args(spa=p, extra=("--arch", "resnet50")),
                ["architecture 'resnet50'", "'torchvision:NAME' or 'package.module:callable'"])


@case
def arch_absent(c: Corpus) -> Case:
    p = c.spa_with("noarch4.spa", meta={"spa.arch": None})
    return Case("", c.args(spa=p), [str(p), "no architecture", "pass --arch"])


# --------------------------------------------------------------------------- options

@case
def input_shape_letters(c: Corpus) -> Case:
    return Case("", c.args(shape="1,3,x"), ["--input-shape '1,3,x'", "comma-separated integers"],
                subprocess=True)


@case
def input_shape_zero(c: Corpus) -> Case:
    return Case("", c.args(shape="0,3,32,32"), ["--input-shape '0,3,32,32'", "positive sizes"])


@case
def input_shape_one_dim(c: Corpus) -> Case:
    return Case("", c.args(shape="3"), ["--input-shape '3'", "N,C[,H[,W]]"])


@case
def input_shape_wrong_channels(c: Corpus) -> Case:
    return Case("", c.args(shape="1,4,32,32"), ["--input-shape 1,4,32,32", "does not fit",
                                                "spa_export.examples:tiny_resnet"])


@case
def opset_unsupported(c: Corpus) -> Case:
    return Case("", c.args(extra=("--opset", "3")), ["--opset 3", "between 7 and 23"])


@case
def out_is_a_file(c: Corpus) -> Case:
    out = c.write_bytes("out-file", b"precious\n")
    return Case("", c.args(), [str(out), "exists and is not a directory"], out=out, guards=[out],
                subprocess=True)


@case
def out_under_a_file(c: Corpus) -> Case:
    f = c.write_bytes("plainfile", b"also precious\n")
    out = f / "sub"
    return Case("", c.args(), [str(out), f"{f} is not a directory"], out=out, guards=[f])


@case
def out_missing_parents_bad_spa(c: Corpus) -> Case:
    # the build fails at load: the missing parents of --out must not be created either
    p = c.write_bytes("empty2.spa", b"")
    top = c.path("not-yet")
    return Case("", c.args(spa=p), [str(p), "empty file"], out=top / "a" / "b" / "out", absent=[top])


@case
def recipe_not_a_mapping(c: Corpus) -> Case:
    p = c.write_bytes("list.yaml", b"- base\n- spa\n")
    return Case("", ["--recipe", str(p)], [str(p), "a recipe is a mapping"])


@case
def recipe_not_yaml(c: Corpus) -> Case:
    p = c.write_bytes("broken.yaml", b"base: [unclosed\n")
    return Case("", ["--recipe", str(p)], [str(p), "cannot read the recipe"])


# --------------------------------------------------------------------------- verification inputs

@case
def npy_wrong_shape(c: Corpus) -> Case:
    p = c.path("small.npy")
    np.save(p, np.zeros((2, 3, 16, 16), dtype=np.float32))
    return Case("", c.args(extra=("--input", str(p))), [str(p), "shape [2, 3, 16, 16]", "[N, 3, 32, 32]"])


@case
def npy_pickled_objects(c: Corpus) -> Case:
    marker = c.path("MARKER-npy")
    p = c.path("objects.npy")
    np.save(p, np.array([RunsCode(marker), 1], dtype=object), allow_pickle=True)
    return Case("", c.args(extra=("--input", str(p))), [str(p), "holds Python objects", "expected a numeric array"], marker=marker,
                subprocess=True)


@case
def npy_not_npy(c: Corpus) -> Case:
    p = c.write_bytes("text.npy", b"0 1 2 3\n")
    return Case("", c.args(extra=("--input", str(p))), [str(p), "not a .npy array", "numpy.save"])
