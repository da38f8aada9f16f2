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


def _entry(p: Path) -> tuple:
    if p.is_symlink():
        return ("link", os.readlink(p), None)
    if p.is_dir():
        return ("dir", None, p.stat().st_mode)
    return ("file", _digest(p), p.stat().st_mode)


def _digest(p: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree(path: Path) -> object:
    """Everything under ``path``: names, kinds, bytes, link targets and permission bits (None if absent)."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_dir():
        return _entry(path)
    out = {}
    for root, dirs, files in os.walk(path):   # links to folders are listed, not followed
        for name in [*dirs, *files]:
            p = Path(root) / name
            out[str(p.relative_to(path))] = _entry(p)
    return dict(sorted(out.items()))


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
    command: str = "build"                 # other commands run without --out and -q

    def argv(self, out: Path, *, quiet: bool) -> list[str]:
        """The whole command line after ``spa-export``."""
        if self.command == "assemble":
            return ["assemble", *self.args, "--out", str(out)]
        if self.command != "build":
            return [self.command, *self.args]
        return ["build", *self.args, "--out", str(out), *(["-q"] if quiet else [])]


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

    def big(self, name: str) -> Path:
        """A path for a huge (sparse) file, in a folder of its own that no case watches."""
        folder = self.root.with_name(self.root.name + "-big")
        folder.mkdir(exist_ok=True)
        return folder / name

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


# --------------------------------------------------------------------------- int8 calibration data

def _calibration(c: Corpus, name: str, x: np.ndarray, *extra: str) -> tuple[Path, list[str]]:
    p = c.path(name)
    with open(p, "wb") as fh:
        np.savez(fh, x=x)
    return p, c.args(extra=("--quantize", "int8", "--calibration", str(p), *extra))


@case
def calibration_wrong_shape(c: Corpus) -> Case:
    p, args = _calibration(c, "calib-shape.npz", np.zeros((32, 3, 16, 16), dtype=np.float32))
    return Case("", args, [str(p), "shape [32, 3, 16, 16]", "[N, 3, 32, 32]"])


@case
def calibration_wrong_dtype(c: Corpus) -> Case:
    p, args = _calibration(c, "calib-dtype.npz", np.full((32, 3, 32, 32), "a"))
    return Case("", args, [str(p), "array 'x'", "holds strings", "expected a numeric array"])


@case
def calibration_too_few_samples(c: Corpus) -> Case:
    p, args = _calibration(c, "calib-few.npz", np.zeros((3, 3, 32, 32), dtype=np.float32))
    return Case("", args, [str(p), "3 calibration samples", "16 or more"])


@case
def calibration_nan(c: Corpus) -> Case:
    x = np.zeros((32, 3, 32, 32), dtype=np.float32)
    x[5, 1, 2, 3] = np.nan
    p, args = _calibration(c, "calib-nan.npz", x)
    return Case("", args, [str(p), "array 'x'", "(nan) at index [5, 1, 2, 3]", "must be finite"])


@case
def calibration_empty(c: Corpus) -> Case:
    p, args = _calibration(c, "calib-empty.npz", np.zeros((0, 3, 32, 32), dtype=np.float32))
    return Case("", args, [str(p), "shape [0, 3, 32, 32]"])


@case
def calibration_missing(c: Corpus) -> Case:
    return Case("", c.args(extra=("--quantize", "int8")), ["--quantize int8 needs calibration data",
                                                          "--calibration DATA.npz", "--calibration random"])


@case
def quantize_unknown_precision(c: Corpus) -> Case:
    return Case("", c.args(extra=("--quantize", "fp8", "--calibration", "random")),
                ["--quantize", "unknown precision 'fp8'", "int8"])


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


# --------------------------------------------------------------------------- option values (issue 10)

@case
def seed_negative(c: Corpus) -> Case:
    return Case("", c.args(extra=("--seed", "-1")), ["--seed -1", "between 0 and"])


@case
def rtol_nan(c: Corpus) -> Case:
    return Case("", c.args(extra=("--rtol", "nan")), ["--rtol nan", "finite number"])


@case
def atol_negative(c: Corpus) -> Case:
    return Case("", c.args(extra=("--atol", "-0.001")), ["--atol -0.001", "at least 0"])


@case
def batch_zero(c: Corpus) -> Case:
    return Case("", c.args(extra=("--bench", "cpu", "--batch", "0")), ["--batch 0", "between 1 and 4096"])


@case
def batch_huge(c: Corpus) -> Case:
    return Case("", c.args(extra=("--bench", "cpu", "--batch", "1000000")), ["--batch 1000000", "between 1 and 4096"])


@case
def round_to_zero(c: Corpus) -> Case:
    return Case("", c.args(extra=("--round-to", "0")), ["--round-to 0", "between 1 and 1024"])


@case
def round_to_word(c: Corpus) -> Case:
    return Case("", c.args(extra=("--round-to", "fastest")), ["--round-to", "expected 'auto', 'auto:N' or an integer"])


@case
def budget_zero(c: Corpus) -> Case:
    return Case("", c.args(extra=("--bench", "cpu", "--budget", "0")), ["--budget 0", "greater than 0"])


@case
def threads_absurd(c: Corpus) -> Case:
    return Case("", c.args(extra=("--bench", "cpu", "--threads", "2000")),
                ["--threads 2000", "this machine gives this process"])


@case
def out_name_too_long(c: Corpus) -> Case:
    out = c.path("n" * 300)
    return Case("", c.args(), ["--out", "has 300 bytes", "allows 255"], out=out)


@case
def input_shape_exhausts_memory(c: Corpus) -> Case:
    # tiny_resnet at 8192x8192: 32 channels of 8192^2 floats per sample, far beyond this machine
    return Case("", c.args(shape="1,3,8192,8192"), ["--input-shape 1,3,8192,8192", "needs about",
                                                    "available on this machine"])


@case
def jobs_without_recipe(c: Corpus) -> Case:
    return Case("", c.args(extra=("-j", "2")), ["-j needs a recipe"])


@case
def task_without_recipe(c: Corpus) -> Case:
    return Case("", c.args(extra=("--task", "x")), ["--task needs a recipe"])


# --------------------------------------------------------------------------- --input files (issue 10)

@case
def npy_is_npz_archive(c: Corpus) -> Case:
    p = c.path("archive.npy")
    with open(p, "wb") as fh:
        np.savez(fh, x=np.zeros((1, 3, 32, 32), dtype=np.float32))
    return Case("", c.args(extra=("--input", str(p))), [str(p), "an .npz archive", "one array per file"])


@case
def npy_strings(c: Corpus) -> Case:
    p = c.path("strings.npy")
    np.save(p, np.array(["cat", "dog"]))
    return Case("", c.args(extra=("--input", str(p))), [str(p), "holds strings", "numeric array"])


@case
def npy_structured(c: Corpus) -> Case:
    p = c.path("structured.npy")
    np.save(p, np.zeros(4, dtype=[("a", "f4"), ("b", "i4")]))
    return Case("", c.args(extra=("--input", str(p))), [str(p), "structured array", "fields a, b"])


@case
def npy_nan(c: Corpus) -> Case:
    p = c.path("nan.npy")
    x = np.zeros((1, 3, 32, 32), dtype=np.float32)
    x[0, 2, 5, 7] = np.nan
    np.save(p, x)
    return Case("", c.args(extra=("--input", str(p))), [str(p), "the input holds", "nan", "[0, 2, 5, 7]",
                                                         "inputs must be finite"])


@case
def npy_overflows_float32(c: Corpus) -> Case:
    p = c.path("huge.npy")
    x = np.zeros((1, 3, 32, 32), dtype=np.float64)
    x[0, 0, 0, 1] = 1e300
    np.save(p, x)
    return Case("", c.args(extra=("--input", str(p))), [str(p), "float32 cannot use", "1e+300"])


@case
def npy_header_claims_huge_array(c: Corpus) -> Case:
    p = c.path("claims.npy")
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 3, 32, 32), }"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    p.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\x00" * 64)
    return Case("", c.args(extra=("--input", str(p))), [str(p), "claims shape [100000, 3, 32, 32]",
                                                        "the file holds 64 bytes"])


# --------------------------------------------------------------------------- recipes (issue 10)

def _recipe(c: Corpus, name: str, text: str) -> Path:
    return c.write_bytes(name, text.encode())


def _recipe_head(c: Corpus) -> str:
    return f"base: {c.base}\ninput_shape: 1,3,32,32\n"


@case
def recipe_misspelt_key(c: Corpus) -> Case:
    p = _recipe(c, "misspelt.yaml", _recipe_head(c) + f"rtoll: 0.001\nspa: {c.spa}\n")
    return Case("", [str(p)], [str(p), "unknown key 'rtoll'", "did you mean 'rtol'"])


@case
def recipe_unknown_key(c: Corpus) -> Case:
    p = _recipe(c, "unknown.yaml", _recipe_head(c) + f"colour: blue\nspa: {c.spa}\n")
    return Case("", [str(p)], [str(p), "unknown key 'colour'", "known:"])


@case
def recipe_misspelt_task_key(c: Corpus) -> Case:
    p = _recipe(c, "taskkey.yaml", _recipe_head(c) + f"tasks:\n  - name: a\n    sap: {c.spa}\n")
    return Case("", [str(p)], [str(p), "tasks[0]", "unknown key 'sap'", "did you mean 'spa'"])


@case
def recipe_wrong_type(c: Corpus) -> Case:
    p = _recipe(c, "wrongtype.yaml", _recipe_head(c) + f"rtol: lots\nspa: {c.spa}\n")
    return Case("", [str(p)], [str(p), "key 'rtol'", "expected a number", "'lots'"])


@case
def recipe_bool_for_number(c: Corpus) -> Case:
    p = _recipe(c, "boolnum.yaml", _recipe_head(c) + f"opset: yes\nspa: {c.spa}\n")
    return Case("", [str(p)], [str(p), "key 'opset'", "expected an integer", "a boolean (true)"])


@case
def recipe_tasks_not_a_list(c: Corpus) -> Case:
    p = _recipe(c, "tasksmap.yaml", _recipe_head(c) + f"tasks:\n  spa: {c.spa}\n")
    return Case("", [str(p)], [str(p), "key 'tasks'", "expected a list of tasks"])


@case
def recipe_task_name_escapes(c: Corpus) -> Case:
    p = _recipe(c, "escape.yaml", _recipe_head(c) + f"tasks:\n  - name: ../../etc\n    spa: {c.spa}\n")
    return Case("", [str(p)], [str(p), "tasks[0]", "'../../etc'", "not a plain folder name"])


@case
def recipe_task_names_twice(c: Corpus) -> Case:
    p = _recipe(c, "twice.yaml", _recipe_head(c) + f"tasks:\n  - name: a\n    spa: {c.spa}\n"
                f"  - name: a\n    spa: {c.spa}\n")
    return Case("", [str(p)], [str(p), "task name 'a' is used twice"])


@case
def recipe_task_named_like_a_package_file(c: Corpus) -> Case:
    p = _recipe(c, "reserved.yaml", _recipe_head(c) + f"tasks:\n  - name: a\n    spa: {c.spa}\n"
                f"  - name: Summary.md\n    spa: {c.spa}\n")
    return Case("", [str(p)], [str(p), "task name 'Summary.md' is a file of the package itself",
                               "manifest.json, summary.md"])


@case
def recipe_duplicate_key(c: Corpus) -> Case:
    p = _recipe(c, "dupkey.yaml", _recipe_head(c) + f"spa: {c.spa}\nrtol: 0.1\nrtol: 0.2\n")
    return Case("", [str(p)], [str(p), "key 'rtol' is given twice", "line 5"])


@case
def recipe_alias_bomb(c: Corpus) -> Case:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    p = _recipe(c, "bomb.yaml", "\n".join(lines) + "\n")   # 10^10 values once expanded, 1 KB on disk
    return Case("", [str(p)], [str(p), "expands to more than 100000 values", "refusing"])


@case
def recipe_recursive_alias(c: Corpus) -> Case:
    p = _recipe(c, "recursive.yaml", "a: &a [1, *a]\n")
    return Case("", [str(p)], [str(p), "refers to itself"])


@case
def recipe_python_object(c: Corpus) -> Case:
    marker = c.path("MARKER-yaml")
    p = _recipe(c, "object.yaml", f"base: !!python/object/apply:os.system ['touch {marker}']\n")
    return Case("", [str(p)], [str(p), "not valid YAML", "line 1"], marker=marker)


@case
def recipe_too_large(c: Corpus) -> Case:
    p = _recipe(c, "large.yaml", "# padding\n" * 120_000)
    return Case("", [str(p)], [str(p), "a recipe is at most 1048576 bytes"])


@case
def recipe_empty(c: Corpus) -> Case:
    p = _recipe(c, "empty.yaml", "# nothing here\n")
    return Case("", [str(p)], [str(p), "the recipe is empty"])


@case
def recipe_missing_spa_file(c: Corpus) -> Case:
    p = _recipe(c, "nospa.yaml", _recipe_head(c) + "tasks:\n  - name: a\n    spa: missing.spa\n")
    return Case("", [str(p)], [str(c.path("missing.spa")), "no such file"])


@case
def recipe_unknown_task_selected(c: Corpus) -> Case:
    p = _recipe(c, "select.yaml", _recipe_head(c) + f"tasks:\n  - name: first\n    spa: {c.spa}\n")
    return Case("", [str(p), "--task", "frist"], ["--task 'frist'", "did you mean 'first'"])


@case
def recipe_and_spa_flag(c: Corpus) -> Case:
    p = _recipe(c, "withspa.yaml", _recipe_head(c) + f"spa: {c.spa}\n")
    return Case("", [str(p), "--spa", str(c.spa)], ["--spa with a recipe", "--task NAME"])


@case
def recipe_shard_malformed(c: Corpus) -> Case:
    p = _recipe(c, "shard.yaml", _recipe_head(c) + f"spa: {c.spa}\n")
    return Case("", [str(p), "--shard", "3/2"], ["--shard 3/2", "need 1 <= i <= n"])


# --------------------------------------------------------------------------- bases (issue 10)

@case
def base_integer_weights(c: Corpus) -> Case:
    p = c.base_with("intweights.safetensors", stem__0__weight=c.state["stem.0.weight"].to(torch.int32))
    return Case("", c.args(base=p, extra=("--ignore-base-digest",)),
                [str(p), "'stem.0.weight'", "torch.int32", "floating-point"])


@case
def base_bool_statistics(c: Corpus) -> Case:
    p = c.base_with("boolvar.safetensors",
                    layer1__0__bn1__running_var=torch.ones(16, dtype=torch.bool))
    return Case("", c.args(base=p, extra=("--ignore-base-digest",)),
                [str(p), "'layer1.0.bn1.running_var'", "torch.bool", "floating-point"])


@case
def base_view_claims_more_than_its_data(c: Corpus) -> Case:
    p = c.path("view.pt")
    huge = torch.zeros(4).as_strided((1_000_000, 1_000_000), (0, 0))    # 10^12 elements over 16 bytes
    torch.save({**c.state, "fc.weight": huge}, str(p))
    return Case("", c.args(base=p, extra=("--ignore-base-digest",)),
                [str(p), "'fc.weight'", "claims 1000000000000 elements", "over 16 bytes"], subprocess=True)


@case
def base_zip_entry_compressed(c: Corpus) -> Case:
    import zipfile

    plain = c.path("plain.pt")
    torch.save(c.state, str(plain))
    p = c.path("deflated.pt")
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return Case("", c.args(base=p, extra=("--ignore-base-digest",)),
                [str(p), "is compressed", "expand far beyond the file's size"])


@case
def base_header_length_zero_in_a_huge_file(c: Corpus) -> Case:
    p = c.big("sparse-base.safetensors")
    with open(p, "wb") as fh:              # 3 GiB on paper, a few bytes on disk (sparse)
        fh.write(struct.pack("<Q", 0))
        fh.truncate(3 * 2**30)
    return Case("", c.args(base=p), [str(p), "header length 0 is too small"], subprocess=True)


@case
def spa_header_length_zero_in_a_huge_file(c: Corpus) -> Case:
    p = c.big("sparse.spa")
    with open(p, "wb") as fh:
        fh.write(struct.pack("<Q", 0))
        fh.truncate(3 * 2**30)
    return Case("", c.args(spa=p), [str(p), "header length 0 is too small"], subprocess=True)


@case
def spa_header_claims_more_data_than_the_file(c: Corpus) -> Case:
    entry = {"dtype": "F32", "shape": [1 << 28], "data_offsets": [0, 1 << 30]}
    p = c.spa_raw_header("claims.spa", {"fc.adapter_bias": entry}, b"\x00" * 16)
    return Case("", c.args(spa=p), [str(p), "tensor 'fc.adapter_bias'", "out of range",
                                    "begin <= end <= 16"])


@case
def override_resizes_an_inner_layer(c: Corpus) -> Case:
    # a 20-channel layer1.0.conv1: the batch-norm after it has 16 entries; the spec allows it,
    # but the network cannot run: the SPA's key is to blame, not --input-shape
    p = c.spa_with("resize-inner.spa", drop=tuple(k for k in c.tensors if k.startswith("layer1.0.conv1.")),
                   override__layer1__0__conv1__weight=torch.zeros(20, 16, 3, 3))
    return Case("", c.args(spa=p), [str(p), "tensor 'override.layer1.0.conv1.weight'",
                                    "resizes 'layer1.0.conv1' to 20 outputs", "no longer runs"])


# --------------------------------------------------------------------------- text from files (issue 10)

@case
def spa_name_with_escape_sequences(c: Corpus) -> Case:
    name = "\x1b]0;owned\x07\x1b[2J" + "stem.0.bogus_field"
    p = c.spa_with("escapes.spa", **{name.replace(".", "__"): torch.ones(2)})
    return Case("", c.args(spa=p), [str(p), "\\x1b]0;owned\\x07\\x1b[2J", "unknown tensor name"])


@case
def spa_arch_with_newline(c: Corpus) -> Case:
    p = c.spa_with("newline.spa", meta={"spa.arch": "evil.mod:f\nerror: forged second line"})
    return Case("", c.args(spa=p), [str(p), "evil.mod:f\\x0aerror: forged second line", "pass --arch"])


@case
def spa_name_very_long(c: Corpus) -> Case:
    name = "x" * 20_000 + ".bogus"
    p = c.spa_with("longname.spa", **{name: torch.ones(1)})
    return Case("", c.args(spa=p), [str(p), "more characters)", "unknown tensor name"])


# --------------------------------------------------------------------------- pack (issue 7)

def _adapted_tiny(c: Corpus, name: str, edit: Callable[[torch.nn.Module], None] | None = None) -> Path:
    """A state dict of the example network adapted with sp_adapters (SPLoRA rank 2)."""
    import sp_adapters

    from spa_export.examples import tiny_resnet

    net = tiny_resnet()
    net.load_state_dict(c.state)
    lib = sp_adapters.SPLoRA(net, rank=2, init_range=0.1).eval()
    if edit is not None:
        edit(lib)
    p = c.path(name)
    torch.save(lib.state_dict(), str(p))
    return p


def _pack_args(c: Corpus, adapted: Path, *extra: str, out: str = "packed.spa") -> list[str]:
    return ["--arch", "spa_export.examples:tiny_resnet", "--base", str(c.base), "--adapted", str(adapted),
            "--input-shape", SHAPE, "-o", str(c.path(out)), *extra]


@case
def pack_fractional_masks(c: Corpus) -> Case:
    masks = c.path("fractional-masks.safetensors")
    save_file({"stem.0.out_mask": torch.linspace(0, 1, 16)}, str(masks))
    return Case("", _pack_args(c, _adapted_tiny(c, "adapted1.pt"), "--masks", str(masks)),
                [f"--masks {masks}: 'stem.0' out_mask", "other than 0 and 1", "threshold it first"], command="pack",
                out=c.path("packed.spa"))


@case
def pack_masks_name_no_layer(c: Corpus) -> Case:
    masks = c.path("nolayer-masks.safetensors")
    save_file({"stem.9.out_mask": torch.ones(16, dtype=torch.bool)}, str(masks))
    return Case("", _pack_args(c, _adapted_tiny(c, "adapted2.pt"), "--masks", str(masks)),
                [f"--masks {masks}: mask for 'stem.9'", "no Linear or ConvNd layer"], command="pack",
                out=c.path("packed.spa"))


@case
def pack_masks_file_wrong_keys(c: Corpus) -> Case:
    masks = c.path("keys-masks.safetensors")
    save_file({"stem.0.weight": torch.ones(16)}, str(masks))
    return Case("", _pack_args(c, _adapted_tiny(c, "adapted3.pt"), "--masks", str(masks)),
                [str(masks), "'stem.0.weight'", "'<layer>.out_mask'"], command="pack", out=c.path("packed.spa"))


@case
def pack_unstructured_prune_mask(c: Corpus) -> Case:
    from torch.nn.utils import prune

    def edit(lib: torch.nn.Module) -> None:
        torch.manual_seed(0)
        prune.random_unstructured(lib.stem[0], "weight", amount=0.4)

    return Case("", _pack_args(c, _adapted_tiny(c, "adapted4.pt", edit)),
                ["'stem.0'", "zeroes single weights", "prune channels"], command="pack", out=c.path("packed.spa"))


@case
def pack_adapted_of_another_architecture(c: Corpus) -> Case:
    p = c.path("adapted-other.pt")
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, str(p))
    return Case("", _pack_args(c, p), [str(p), "does not fit the architecture", "missing keys"],
                command="pack", out=c.path("packed.spa"))


@case
def pack_adapted_not_a_state_dict(c: Corpus) -> Case:
    p = c.path("adapted-list.pt")
    torch.save([torch.zeros(3)], str(p))
    return Case("", _pack_args(c, p), [str(p), "expected a state dict"], command="pack", out=c.path("packed.spa"))


@case
def pack_output_is_the_base(c: Corpus) -> Case:
    adapted = _adapted_tiny(c, "adapted5.pt")
    args = _pack_args(c, adapted)
    args[args.index("-o") + 1] = str(c.base)
    return Case("", [*args, "--force"], ["-o", str(c.base), "is the input"], command="pack", out=c.base)


@case
def pack_task_name_with_a_slash(c: Corpus) -> Case:
    return Case("", _pack_args(c, _adapted_tiny(c, "adapted6.pt"), "--task", "a/b"),
                ["--task", "'a/b'", "not a plain folder name"], command="pack", out=c.path("packed.spa"))


# --------------------------------------------------------------------------- assemble (issue 7)

def _part(c: Corpus, folder: str, *, base: Path | None = None, shard: str = "1/2", extra: str = "") -> Path:
    """A part of a two-task recipe of the example, built for real into FOLDER/part."""
    import shutil

    root = c.path(folder)
    root.mkdir(exist_ok=True)
    shutil.copy(base or c.base, root / "base.safetensors")
    shutil.copy(c.spa, root / "a.spa")
    shutil.copy(c.spa, root / "b.spa")
    (root / "recipe.yaml").write_text("base: base.safetensors\narch: spa_export.examples:tiny_resnet\n"
                                      f"input_shape: {SHAPE}\nignore_base_digest: true\n{extra}"
                                      "tasks:\n  - name: a\n    spa: a.spa\n  - name: b\n    spa: b.spa\n")
    result = invoke(["build", str(root / "recipe.yaml"), "--shard", shard, "--out", str(root / "part"), "-q"])
    assert result.exit_code == 0, result.stderr
    return root / "part"


@case
def assemble_a_task_missing(c: Corpus) -> Case:
    return Case("", [str(_part(c, "asm-one"))], ["the parts lack task(s) b", "--task b"], command="assemble",
                out=c.path("assembled"))


@case
def assemble_into_one_of_its_parts(c: Corpus) -> Case:
    a, b = _part(c, "asm-into1"), _part(c, "asm-into2", shard="2/2")
    return Case("", [str(a), str(b)], ["--out", str(a / "merged"), "lies inside the input", str(a)],
                command="assemble", out=a / "merged")


@case
def shard_and_task_that_select_nothing(c: Corpus) -> Case:
    recipe = _part(c, "asm-empty").parent / "recipe.yaml"
    return Case("", [str(recipe), "--task", "a", "--shard", "2/2"],
                ["--task a with --shard 2/2 selects no task", "shard 2/2 holds b"])


@case
def assemble_parts_of_other_bases(c: Corpus) -> Case:
    other = c.base_with("other-base.safetensors", stem__0__weight=c.state["stem.0.weight"] * 2)
    a, b = _part(c, "asm-base1"), _part(c, "asm-base2", base=other, shard="2/2")
    return Case("", [str(a), str(b)], [str(b), "built from another base"], command="assemble",
                out=c.path("assembled"))


@case
def assemble_parts_of_other_recipes(c: Corpus) -> Case:
    a, b = _part(c, "asm-rec1"), _part(c, "asm-rec2", shard="2/2", extra="rtol: 0.001\n")
    return Case("", [str(a), str(b)], [str(b), "built from another recipe (or other settings)"],
                command="assemble", out=c.path("assembled"))


@case
def assemble_parts_of_another_tool_version(c: Corpus) -> Case:
    import hashlib

    a, b = _part(c, "asm-ver1"), _part(c, "asm-ver2", shard="2/2")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["content"]["tool"]["version"] = "0.0.9"
    manifest["content_sha256"] = "sha256:" + hashlib.sha256(
        json.dumps(manifest["content"], sort_keys=True).encode()).hexdigest()
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (b / "manifest.json").write_bytes(data)
    marker = json.loads((b / ".spa-export").read_text())     # as a part built by that version would be
    marker["files"]["manifest.json"] = {"size": len(data), "sha256": "sha256:" + hashlib.sha256(data).hexdigest()}
    (b / ".spa-export").write_text(json.dumps(marker))
    return Case("", [str(a), str(b)], [str(b), "built from another spa-export version", "0.0.9"],
                command="assemble", out=c.path("assembled"))


@case
def assemble_a_changed_model(c: Corpus) -> Case:
    a, b = _part(c, "asm-chg1"), _part(c, "asm-chg2", shard="2/2")
    with open(b / "b" / "model.onnx", "ab") as fh:
        fh.write(b"\x00")
    return Case("", [str(a), str(b)], [str(b), "b/model.onnx was changed after spa-export wrote it"],
                command="assemble", out=c.path("assembled"))


@case
def assemble_not_a_part(c: Corpus) -> Case:
    folder = c.path("not-a-part")
    folder.mkdir(exist_ok=True)
    (folder / "model.onnx").write_bytes(b"onnx?")
    return Case("", [str(folder)], [str(folder), "not a package that spa-export built"], command="assemble",
                out=c.path("assembled"))
