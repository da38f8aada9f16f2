"""Trace a network and follow its channels.

:func:`trace_channels` runs the network once under :mod:`torch.fx` on a probe
batch and records, for every tensor, which *channel ids* it carries along its
channel axis and which of those channels depend on the input. The channel
axis is dimension 1 (``[N, C, ...]``), or the last one where a linear layer
reads or writes features of tokens (``[N, T, D]``, ``[N, H, W, C]``: a
transformer's MLP); an operation that would move channels between the two
is not followed.
Channel ids are created by producers (convolutions, linear layers, the
network input, operations we do not understand); operations that act on each
channel by itself pass their input's ids on; elementwise combinations unite
the ids of their operands; concatenation joins them. Two channels with the
same root id (after :class:`~spa_export.stages.plan.unionfind.UnionFind`) must be
removed together or kept together: that is the dependency group at channel
granularity, in original indices, on the unpruned network.

The probe batch holds two different random samples. A channel that the
analysis calls input-independent must hold the same value in both; where it
does not, the channel is treated as input-dependent (the safe side).
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from spa_export.nets.attention import fused_qkv
from spa_export.nets.blur import is_blur_pool, sized
from spa_export.runtime.inputs import Inputs, random_tensors
from spa_export.safety.errors import ArchitectureError, error_line
from spa_export.stages.plan import layout, ops, slicing
from spa_export.stages.plan.counts import ChannelCounts
from spa_export.stages.plan.model import STREAM_REASON
from spa_export.stages.plan.shaped import Call, ShapedTracing, attributes_kept, record_calls
from spa_export.stages.plan.unionfind import UnionFind

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Slot:
    """Channel ids and input dependence of one tensor."""

    ids: np.ndarray
    dep: np.ndarray
    axis: int = 1  # 1, or -1: features on the last axis (a 2-D tensor's are always 1)


@dataclass
class ConsumerUse:
    """A convolution or linear layer reading channels through its weights."""

    module: str
    ids: np.ndarray          # id per input position (per feature for a Linear)
    dep: np.ndarray
    unread: np.ndarray       # weight columns that are zero for every output
    groups: int
    value: torch.Tensor      # its probe input at the input-independent positions only (sample 0)
    shape: tuple[int, ...]   # the probe input's shape for one sample (batch axis 1)
    axis: int = 1            # where ``value``'s channels are: 1, or -1 (a Linear over tokens)
    #: read through ``F.linear``/``F.convNd`` on the module's tensors (a subclass traced through):
    #: ``value`` is the function's input, which the module's own ``forward`` may have padded first
    functional: bool = False

    @property
    def channel_dim(self) -> int:
        """The dimension of the probe input (and of ``value``) that holds the channels."""
        return _dim(self.axis, self.value)


@dataclass
class Producer:
    """Where channel ids are created: a layer's outputs, the input, a barrier's outputs."""

    label: str
    ids: np.ndarray
    groups: int = 1
    module: str | None = None  # set for conv/linear outputs that can shrink
    dep: np.ndarray | None = None  # which outputs depend on the input (None: all)


@dataclass
class Member:
    """A module with per-channel parameters that follows its channels (batch-norm, depthwise conv)."""

    module: str
    kind: str
    ids: np.ndarray


@dataclass
class ChannelGraph:
    uf: UnionFind = field(default_factory=UnionFind)
    fixed: dict[int, str] = field(default_factory=dict)       # id -> why it cannot go
    holds: list[tuple[np.ndarray, str]] = field(default_factory=list)
    consumers: list[ConsumerUse] = field(default_factory=list)
    producers: list[Producer] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    spaces: list[tuple[str, np.ndarray]] = field(default_factory=list)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    #: convolution -> the batch-norm that is the only reader of its output (both called once)
    followers: dict[str, str] = field(default_factory=dict)
    #: nn.MultiheadAttention modules whose heads may go -> whether the network reads their weights
    attention: dict[str, bool] = field(default_factory=dict)
    #: modules torch.fx could not trace into -> why; each ran as one step that keeps its channels
    opaque: dict[str, str] = field(default_factory=dict)
    #: channels cut into equal parts (``chunk``): (label, ids, parts); every part keeps as many
    equal: list[tuple[str, np.ndarray, int]] = field(default_factory=list)

    def new_ids(self, n: int, label: str, *, fixed_reason: str | None = None) -> np.ndarray:
        ids = self.uf.new(n)
        if fixed_reason is not None:
            for i in ids.tolist():
                self.fixed[i] = fixed_reason
        return ids


def trace_channels(model: nn.Module, inputs: Inputs, *, seed: int = 0) -> ChannelGraph:
    """Trace ``model`` (not modified, not copied) on a probe of two samples of ``inputs``.

    ``inputs``: :class:`~spa_export.runtime.inputs.InputSpec` s, in the order of ``forward``'s arguments.
    """
    with attributes_kept(model):
        return _trace_channels(model, inputs, seed)


def _trace_channels(model: nn.Module, specs: Inputs, seed: int) -> ChannelGraph:
    probe = random_tensors(specs, 2, torch.Generator().manual_seed(seed))
    try:
        tracer, traced = _trace(model, _defaults_beyond(model, len(specs)), probe=tuple(probe))
        gm = fx.GraphModule(model, traced)  # shares the model's modules, changes none
    except Exception as err:
        raise ArchitectureError(
            f"the network cannot be traced with torch.fx ({error_line(err)})"
        ) from err
    # the network's own modules: the graph module holds a module that was traced through (a
    # batch-norm or layer calling F.batch_norm, F.linear, F.conv2d) as a plain container of the
    # tensors it copied; leaves are the same objects in both
    graph = ChannelGraph(modules=dict(model.named_modules()), opaque=dict(tracer.opaque))
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    with torch.no_grad():
        try:
            interpreter = _Interpreter(gm, graph, calls)
            interpreter.run(*probe)
            graph.holds += interpreter.counts.settle()
        except Exception as err:   # the traced graph does not compute what the network does: plan nothing
            raise ArchitectureError(f"the network's traced graph does not run ({error_line(err)})") from err
    return graph


def _defaults_beyond(model: nn.Module, given: int) -> dict[str, object]:
    """``forward``'s parameters after the ``given`` inputs, at their defaults (``mask=None``...).

    The build feeds only the inputs it was told of; a parameter left to its default would
    otherwise be traced as an input, and a branch such as ``if mask is not None`` taken for it.
    """
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    out = {}
    for p in params[given:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            break
        if p.default is p.empty:
            return {}
        out[p.name] = p.default
    return out


def _trace(model: nn.Module, concrete: dict[str, object] | None = None, rounds: int = 8,
           probe: tuple | None = None) -> tuple[_Tracer, fx.Graph]:
    """Trace ``model``; where its own code cannot be traced, call the function that fails as one step.

    A network's ``forward`` may call a helper with control flow on shapes (timm's ViT resamples
    its position embedding with ``resample_abs_pos_embed``, which compares token counts). Such a
    function, a plain function of a module's globals, is wrapped (torch.fx's ``autowrap_functions``)
    and traced again: it becomes one node, run as a whole on real values, keeping the channels it
    reads and writes. A failure in a method of the network itself still leaves it untraced.
    """
    wrapped: list = []
    calls = None
    while True:
        tracer = _Tracer(autowrap_functions=tuple(wrapped), calls=calls)
        try:
            traced = tracer.trace(model, concrete_args=concrete or None)
        except Exception as err:
            fn = _failing_function(err)
            if fn is None or fn in wrapped or len(wrapped) >= rounds:
                raise
            wrapped.append(fn)
            continue
        # a submodule went opaque: run the network once (outside the trace, which patches every
        # module's call) to record its submodules' arguments, and trace again on their shapes
        if calls is None and probe is not None and tracer.opaque.keys() & dict(model.named_modules()).keys():
            calls = record_calls(model, probe)
            if calls:
                continue
        return tracer, traced


def _failing_function(err: BaseException) -> object | None:
    """The innermost function outside torch where ``err`` was raised, if it is a plain module-level function."""
    import types

    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    torch_dir = torch.__file__.rsplit("/", 1)[0]
    for frame in reversed(frames):
        if frame.f_code.co_filename.startswith(torch_dir):
            continue
        fn = frame.f_globals.get(frame.f_code.co_name)
        if isinstance(fn, types.FunctionType) and fn.__code__ is frame.f_code:
            return fn
        return None
    return None


class _Tracer(ShapedTracing):
    """torch.fx's tracer, entering ``nn.TransformerEncoder`` and its layers (leaves by default),
    and stepping over what it cannot trace.

    Their ``forward`` chooses a fused fast path by inspecting tensors, which a
    symbolic trace cannot; the regular path they compute in eval mode is
    written out here, calling the same submodules, so that their linear
    layers and attention are seen by name.

    A submodule whose ``forward`` cannot be traced (control flow on a shape, as
    in MobileViT's blocks; ``math`` on sizes, as in timm's ``Conv2dSame``) is
    traced again on the probe's real values, its shapes then numbers
    (:mod:`~spa_export.stages.plan.shaped`). Where that fails too, or the
    submodule is called more than once, it becomes one step of the graph: the
    nodes its attempts made are erased, and the module is called as a whole. The rest of the network is planned as
    usual; the step keeps the channels it reads and writes, with the reason
    in ``opaque``. Only a failure in the network's own ``forward`` leaves the
    whole network untraced.
    """

    def __init__(self, autowrap_functions: tuple = (), calls: dict[str, Call] | None = None) -> None:
        super().__init__(calls, autowrap_functions=autowrap_functions)
        self.opaque: dict[str, str] = {
            f"{fn.__module__}.{fn.__qualname__}": "a function torch.fx cannot trace, called as one step"
            for fn in autowrap_functions}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # timm's attention is planned as a whole, like nn.MultiheadAttention (heads, not channels);
        # a blur pool is one per-channel step (its functional convolution reads a filter buffer)
        return fused_qkv(m) or is_blur_pool(m) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: object, args: tuple, kwargs: dict) -> object:
        if self.evaluating:
            return super().call_module(m, forward, args, kwargs)   # run, not traced
        if type(m) is nn.TransformerEncoderLayer:
            return _encoder_layer(m, *args, **kwargs)
        if type(m) is nn.TransformerEncoder:
            return _encoder(m, *args, **kwargs)
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        before, depth = len(self.graph.nodes), len(self.module_stack)

        def undo() -> None:   # erase what a failed attempt made
            while len(self.module_stack) > depth:   # what it pushed and never popped
                self.module_stack.popitem(last=True)
            made = []
            for node in reversed(self.graph.nodes):
                if len(made) == len(self.graph.nodes) - before:
                    break
                made.append(node)
            for node in made:   # the newest first: each is used only by nodes made after it
                self.graph.erase_node(node)
            self.forget(made)

        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as err:
            undo()
            shaped = self.trace_on_probe(m, name, forward, args, kwargs, undo)
            if shaped is not None:
                return shaped
            self.opaque[name] = error_line(err, 160)
            return self.create_proxy("call_module", name, args, kwargs)


def _encoder_layer(m: nn.TransformerEncoderLayer, src: object, src_mask: object = None,
                   src_key_padding_mask: object = None, is_causal: bool = False) -> object:
    def attend(x: object) -> object:
        out = m.self_attn(x, x, x, attn_mask=src_mask, key_padding_mask=src_key_padding_mask, need_weights=False)
        return m.dropout1(out[0])

    def feed_forward(x: object) -> object:
        return m.dropout2(m.linear2(m.dropout(m.activation(m.linear1(x)))))

    if m.norm_first:
        x = src + attend(m.norm1(src))
        return x + feed_forward(m.norm2(x))
    x = m.norm1(src + attend(src))
    return m.norm2(x + feed_forward(x))


def _encoder(m: nn.TransformerEncoder, src: object, mask: object = None, src_key_padding_mask: object = None,
             is_causal: bool | None = None) -> object:
    out = src
    for layer in m.layers:
        out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask)
    return out if m.norm is None else m.norm(out)


class _Interpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, graph: ChannelGraph, calls: Counter) -> None:
        super().__init__(gm)
        self.g = graph
        self.calls = calls
        self.slots: dict[str, Slot] = {}
        self.items: dict[str, tuple[Slot | None, ...]] = {}   # slots of tuple outputs (attention, chunk)
        self.parameters_only: dict[str, bool] = {}   # node -> computed from parameters alone
        self.counts = ChannelCounts()   # channel counts read from shapes, and their uses

    # -- helpers -------------------------------------------------------------------------
    def slot_of(self, arg: object) -> Slot | None:
        return self.slots.get(arg.name) if isinstance(arg, fx.Node) else None

    def fresh(self, n: fx.Node, result: object, reason: str) -> Slot | None:
        if isinstance(result, torch.Tensor) and result.dim() >= 2:
            ids = self.g.new_ids(int(result.shape[1]), n.name, fixed_reason=reason)
            self.g.producers.append(Producer(n.name, ids))
            return Slot(ids, np.ones(len(ids), dtype=bool))
        return None

    def barrier(self, n: fx.Node, result: object, what: str) -> Slot | None:
        reason = f"read by '{n.name}' ({what}), which mixes channels or is not understood"
        for arg in n.all_input_nodes:
            s = self.slots.get(arg.name)
            if s is not None:
                self.g.holds.append((s.ids, reason))
        return self.fresh(n, result, f"produced by '{n.name}' ({what})")

    # -- the walk ------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> object:
        if n.op == "call_function" and n.target in ops.OUT_OF_PLACE:
            n.target = ops.OUT_OF_PLACE[n.target]
        if n.op in ("call_function", "call_method") and n.kwargs.get("inplace"):
            n.kwargs = {**n.kwargs, "inplace": False}
        if n.op == "call_method" and isinstance(n.target, str) and n.target.endswith("_") \
                and not n.target.startswith("_"):
            n.target = n.target[:-1]
        if n.op == "call_module" and getattr(self.g.modules[n.target], "inplace", False):
            # Run an in-place module on a copy, so that every recorded value stays what its readers saw.
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
            result = self.call_module(n.target, args, kwargs)
        else:
            result = super().run_node(n)
        slot = self.analyse(n, result)
        self.counts.note_uses(n)
        if slot is not None:
            if isinstance(result, torch.Tensor):
                if slot.axis == -1 and result.dim() == 2:
                    slot = Slot(slot.ids, slot.dep)  # the last axis of a 2-D tensor is dimension 1
                slot = _check_constant(slot, result)
            self.slots[n.name] = slot
            self.g.spaces.append((n.name, slot.ids))
        return result

    def analyse(self, n: fx.Node, result: object) -> Slot | None:
        if n.op == "placeholder":
            return self.fresh(n, result, "the network input")
        if n.op == "get_attr":
            if isinstance(result, torch.Tensor) and result.dim() >= 2:
                ids = self.g.new_ids(int(result.shape[1]), n.name, fixed_reason=f"a constant '{n.target}'")
                return Slot(ids, np.zeros(len(ids), dtype=bool))
            return None
        if n.op == "output":
            for arg in n.all_input_nodes:
                s = self.slots.get(arg.name)
                if s is not None:
                    self.g.holds.append((s.ids, "reaches the network output"))
            return None
        if n.op == "call_module":
            return self.on_module(n, result)
        return self.on_function(n, result)

    def on_module(self, n: fx.Node, result: object) -> Slot | None:
        mod = self.g.modules[n.target]
        kind = type(mod).__name__
        x = self.slot_of(n.args[0]) if n.args else None
        stateful = any(True for _ in mod.parameters()) or any(True for _ in mod.buffers())
        if self.calls[n.target] > 1 and stateful:
            return self.barrier(n, result, f"{kind} called more than once")
        if type(mod) is nn.MultiheadAttention or fused_qkv(mod):
            return self.attention(n, mod, result)
        if n.target in self.g.opaque:
            return self.barrier(n, result, f"{kind}, which torch.fx cannot trace ({self.g.opaque[n.target]}), "
                                           "run as one step")
        if x is None or not isinstance(result, torch.Tensor) or len(n.args) != 1 or n.kwargs:
            return self.barrier(n, result, kind)
        value = self.env[n.args[0]]
        if type(mod) is nn.Linear and value.dim() >= 3:
            return self.linear_last(n.name, n.target, mod, x, value)
        if kind in ops.UNARY_MODULE_NAMES and _same_channels(value, result, x.axis):
            return x
        if is_blur_pool(mod) and x.axis == 1 and _same_channels(value, result, 1):
            if sized(mod):   # one filter row per channel: the copy keeps the kept channels' rows
                self.g.members.append(Member(n.target, "blur", x.ids))
            return x
        if x.axis != 1:
            return self.barrier(n, result, f"{kind} on features along the last axis")
        if type(mod) in _CONV and mod.padding_mode == "zeros" and value.dim() == mod.weight.dim():
            return self.conv(n.target, mod, x, value)
        if type(mod) is nn.Linear and value.dim() == 2:
            return self.linear(n.target, mod, x, value)
        if type(mod) in _BN and mod.track_running_stats and mod.running_mean is not None:
            self.g.members.append(Member(n.target, "batchnorm", x.ids))
            src = n.args[0]
            if (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                    and type(self.g.modules[src.target]) in _CONV and self.calls[src.target] == 1):
                self.g.followers[src.target] = n.target
            return x
        if type(mod) is nn.Flatten and mod.start_dim == 1 and mod.end_dim == -1:
            return _flatten(x, value)
        return self.barrier(n, result, kind)

    def conv(self, name: str, mod: nn.Module, x: Slot, value: torch.Tensor, *, functional: bool = False) -> Slot:
        cout, cin, g = mod.out_channels, mod.in_channels, mod.groups
        nz = (mod.weight.detach() != 0).reshape(cout, cin // g, -1).any(-1).numpy()
        if g > 1 and g == cin == cout:
            self.g.members.append(Member(name, "depthwise", x.ids))
            return Slot(x.ids, x.dep & nz[:, 0])
        per_in, per_out = cin // g, cout // g
        read = np.zeros(cin, dtype=bool)
        for j in range(g):
            read[j * per_in:(j + 1) * per_in] = nz[j * per_out:(j + 1) * per_out].any(0)
        self.g.consumers.append(ConsumerUse(name, x.ids, x.dep, ~read, g, *_constant_part(value, x.dep),
                                            functional=functional))
        ids = self.g.new_ids(cout, name)
        dep_in = x.dep.reshape(g, per_in)[np.arange(cout) // per_out]
        dep = (nz & dep_in).any(1)
        self.g.producers.append(Producer(name, ids, g, module=name, dep=dep))
        return Slot(ids, dep)

    def linear(self, name: str, mod: nn.Linear, x: Slot, value: torch.Tensor, *, functional: bool = False) -> Slot:
        nz = (mod.weight.detach() != 0).numpy()
        self.g.consumers.append(ConsumerUse(name, x.ids, x.dep, ~nz.any(0), 1, *_constant_part(value, x.dep),
                                            functional=functional))
        ids = self.g.new_ids(mod.out_features, name)
        dep = (nz & x.dep[None, :]).any(1)
        self.g.producers.append(Producer(name, ids, 1, module=name, dep=dep))
        return Slot(ids, dep)

    def linear_last(self, label: str, name: str, mod: nn.Linear, x: Slot, value: torch.Tensor, *,
                    functional: bool = False) -> Slot:
        """A Linear layer on ``[N, ..., features]``: it reads and writes features on the last axis.

        Where channels are followed on axis 1 of ``[N, C, ..., T]`` (gMLP's and MLP-Mixer's token
        mixing, after a transpose), the layer mixes the last axis of each channel by itself: the
        channels pass through it, as through a pooling."""
        if x.axis == 1 and value.dim() >= 3 and not self.opaque(x):
            return Slot(x.ids, x.dep)
        if x.axis != -1 or len(x.ids) != mod.in_features:
            # its input's features were not followed (a layer norm's output, a reshape): they stay
            reason = f"read by '{label}' (Linear over the last axis) from an operation not followed"
            self.g.holds.append((x.ids, reason))
            ids = self.g.new_ids(mod.in_features, label, fixed_reason=reason)
            x = Slot(ids, np.ones(len(ids), dtype=bool), -1)
        nz = (mod.weight.detach() != 0).numpy()
        self.g.consumers.append(ConsumerUse(name, x.ids, x.dep, ~nz.any(0), 1,
                                            *_constant_part(value, x.dep, -1), axis=-1, functional=functional))
        ids = self.g.new_ids(mod.out_features, name)
        dep = (nz & x.dep[None, :]).any(1)
        self.g.producers.append(Producer(name, ids, 1, module=name, dep=dep))
        return Slot(ids, dep, -1)

    def attention(self, n: fx.Node, mod: nn.Module, result: object) -> Slot | None:
        """Self- or cross-attention: its inputs and outputs stay, its heads are planned apart.

        ``nn.MultiheadAttention`` returns ``(output, weights)``; timm's ``Attention`` its output."""
        reason = f"read by attention '{n.target}' (its input features stay)"
        for arg in n.all_input_nodes:
            s = self.slots.get(arg.name)
            if s is not None:
                self.g.holds.append((s.ids, reason))
        out = result[0] if isinstance(result, tuple) else result
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            return None
        ids = self.g.new_ids(int(out.shape[-1]), n.name)
        self.g.holds.append((ids, f"the output of attention '{n.target}'"))
        self.g.producers.append(Producer(n.name, ids))
        slot = Slot(ids, np.ones(len(ids), dtype=bool), -1)
        if not isinstance(result, tuple):
            self.g.attention[n.target] = False     # timm's Attention returns no weights
            return slot
        self.items[n.name] = (slot, None)
        self.g.attention[n.target] = _reads_weights(n)
        return None

    def sliced(self, n: fx.Node, x: Slot, value: torch.Tensor, result: object) -> Slot | None:
        """``x[index]`` with slices and integers (:mod:`~spa_export.stages.plan.slicing`): the channels
        it takes go on, and those before the slice's end (its start, where it runs to the end) stay."""
        if not isinstance(result, torch.Tensor):
            return None
        cut = slicing.channel_slice(n.args[1], value.dim(), _dim(x.axis, value), len(x.ids))
        if cut is None or cut.start >= cut.stop:
            return None
        taken = _slot_on(x.ids[cut.start:cut.stop], x.dep[cut.start:cut.stop], cut.channel_dim, result)
        if taken is not None and cut.fixed:
            self.g.holds.append((x.ids[:cut.fixed], f"indexed by '{n.name}' with numbers in the code (the "
                                                    "channels before the end of its slice keep their places)"))
        return taken

    def from_parameters(self, arg: object) -> bool:
        """Whether ``arg`` is computed from the network's parameters and buffers alone (never its input)."""
        if not isinstance(arg, fx.Node):
            return True
        if arg.name not in self.parameters_only:
            seen, todo, alone = set(), [arg], True
            while todo and alone:
                node = todo.pop()
                if node.name in seen or node.op == "get_attr":
                    continue
                seen.add(node.name)
                alone = node.op not in ("placeholder", "call_module") and self.parameters_only.get(node.name, True)
                todo.extend(node.all_input_nodes)
            self.parameters_only[arg.name] = alone
        return self.parameters_only[arg.name]

    def opaque(self, s: Slot) -> bool:
        return all(int(i) in self.g.fixed for i in s.ids)

    def on_axis(self, s: Slot, axis: int, value: torch.Tensor, n: fx.Node) -> Slot:
        """``s`` along ``axis``, where every channel of ``s`` stays anyway (else ``s`` as it is).

        A tensor made by an operation not followed (a reshape into tokens, a
        class token concatenated) has fixed ids along dimension 1; added to
        features on the last axis (the residual stream of a transformer), its
        features stay, and so do those they are added to: one group for the
        whole stream, not one per block.
        """
        if s.axis == axis or not self.opaque(s):
            return s
        reason = f"{STREAM_REASON} (features added along it stay wherever any of them is normalised, " \
                 "attended to or read by an operation not followed)"
        ids = self.g.new_ids(int(value.shape[_dim(axis, value)]), n.name, fixed_reason=reason)
        return Slot(ids, np.ones(len(ids), dtype=bool), axis)

    def on_function(self, n: fx.Node, result: object) -> Slot | None:
        target = n.target
        name = target if isinstance(target, str) else ops.function_name(target)
        is_method = n.op == "call_method"
        args = n.args
        x = self.slot_of(args[0]) if args else None
        items = self.items.get(args[0].name) if target is operator.getitem and isinstance(args[0], fx.Node) else None
        if items is not None and isinstance(args[1], int) and -len(items) <= args[1] < len(items):
            return items[args[1]]
        if (is_method and name in ops.SHAPE_METHODS) or (not is_method and target in ops.SHAPE_FUNCTIONS):
            self.read_count(n, name)
            if target is operator.getitem and isinstance(self.env.get(args[0]), torch.Tensor):
                taken = self.sliced(n, x, self.env[args[0]], result) if x is not None else None
                return taken if taken is not None else self.barrier(n, result, "indexing")
            if isinstance(result, torch.Tensor):
                return self.fresh(n, result, f"produced by '{n.name}' ({name})")
            return None
        if not is_method and ops.is_cat(target):
            return self.cat(n, result)
        if (is_method and name in ops.ADD_METHODS | ops.MUL_METHODS) or target in ops.ADD_LIKE | ops.MUL_LIKE:
            is_mul = (name in ops.MUL_METHODS) if is_method else target in ops.MUL_LIKE
            return self.binary(n, result, is_mul)
        if name in ("chunk", "split") and x is not None and isinstance(result, (tuple, list)):
            return self.chunk(n, name, x, result)
        if x is None or not isinstance(result, torch.Tensor):
            return self.barrier(n, result, name)
        value = self.env[args[0]]
        if name == "batch_norm" and not is_method:
            return self.functional_batchnorm(n, x, value, result)
        if name in _FUNCTIONAL_LAYERS and not is_method:
            return self.functional_layer(n, name, x, value, result)
        if name == "pad" and not is_method and x.axis == 1 and _same_channels(value, result):
            widths = args[1] if len(args) > 1 else n.kwargs.get("pad")
            if isinstance(widths, (list, tuple)) and len(widths) <= 2 * (value.dim() - 2):
                return x   # spatial padding (any mode) acts on each channel by itself
        if name in ("dropout", "stochastic_depth", "dropout2d") and not torch.equal(value, result):
            return self.barrier(n, result, f"{name} in training mode")
        # other operands that act as numbers: one-element tensors of parameters alone (clamp bounds, exponents)
        tensor_inputs = [a for a in n.all_input_nodes if isinstance(self.env[a], torch.Tensor)
                         and not (a is not args[0] and self.env[a].numel() == 1 and self.from_parameters(a))]
        if name in ops.UNARY_FUNCTION_NAMES and _same_channels(value, result, x.axis) and len(tensor_inputs) == 1:
            return x
        if name in layout.PERMUTATIONS | layout.RESHAPES:
            moved = self.layout(n, name, x, value, result)
            if moved is not None:
                return moved
        if name in layout.RESHAPES_AS and len(args) > 1 and isinstance(args[1], fx.Node):
            moved = self.reshaped_as(n, x, value, result)
            if moved is not None:
                return moved
        if name in ("mean", "sum", "amax", "amin") and isinstance(result, torch.Tensor):
            pooled = self.pooled(n, x, value, result)
            if pooled is not None:
                return pooled
        if x.axis != 1:
            return self.barrier(n, result, f"{name} on features along the last axis")
        if name in ("flatten", "view", "reshape") and result.dim() == 2 and value.dim() >= 2 \
                and result.shape[0] == value.shape[0] and result.shape[1] == value[0].numel():
            return _flatten(x, value)
        return self.barrier(n, result, name)

    def chunk(self, n: fx.Node, name: str, x: Slot, result: tuple) -> None:
        """Channels cut into equal parts (``chunk``, or ``split`` by a size read from a shape): each part
        is passed on, and every part keeps as many channels, so that the cut falls where it did.

        A ``split`` by sizes written in the code (``torch.split(x, [16, 48], 1)``) would cut in the wrong
        place once channels go: its channels stay.
        """
        value = self.env[n.args[0]]
        dim = _dim(x.axis, value)
        bound = _bound(n, ("tensor", "chunks" if name == "chunk" else "split_size_or_sections", "dim"))
        parts = len(result)
        size = bound.get("split_size_or_sections", bound.get("split_size"))
        cut = int(bound.get("dim", 0)) % value.dim() if isinstance(bound.get("dim", 0), int) else None
        even = parts > 0 and value.shape[dim] % parts == 0 and all(
            isinstance(t, torch.Tensor) and t.shape[dim] == value.shape[dim] // parts for t in result)
        written = name == "split" and not self.counts.split_by_count(size, x.ids, parts)
        if cut != dim or not even or written:
            what = f"{name} of channels into parts whose sizes are written in the code" if cut == dim and written \
                else f"{name} of channels into unequal parts" if cut == dim else f"{name} along another axis"
            self.barrier(n, None, what)
            self.items[n.name] = tuple(self.fresh(n, t, f"produced by '{n.name}' ({name})") for t in result)
            return None
        self.g.equal.append((n.name, x.ids, parts))
        per = len(x.ids) // parts
        self.items[n.name] = tuple(Slot(x.ids[j * per:(j + 1) * per], x.dep[j * per:(j + 1) * per], x.axis)
                                   for j in range(parts))
        return None

    def read_count(self, n: fx.Node, name: str) -> None:
        """Note ``n`` where it reads a followed tensor's channel count or whole shape."""
        src = n.args[0] if n.args else None
        s = self.slot_of(src)
        value = self.env.get(src) if isinstance(src, fx.Node) else None
        if s is not None and isinstance(value, torch.Tensor) and not self.opaque(s):
            self.counts.read(n, name, s.ids, _dim(s.axis, value), value.dim())
        elif isinstance(src, fx.Node) and isinstance(value, tuple):
            self.g.holds += self.counts.index(n, len(value))

    def layout(self, n: fx.Node, name: str, x: Slot, value: torch.Tensor, result: torch.Tensor) -> Slot | None:
        """The same channels on the axis a permutation or reshape moves them to (:mod:`.layout`), or None.

        Not for ids an operation not followed made (they name dimension 1 of its output, whatever that holds)."""
        if self.opaque(x):
            return None
        dim = layout.moved_to(name, n.args[1:], dict(n.kwargs), value, result, _dim(x.axis, value), fx.Node)
        moved = None if dim is None else _slot_on(x.ids, x.dep, dim, result)
        if moved is None:
            return None
        size = layout.size_at(name, n.args[1:], dict(n.kwargs), dim)
        if isinstance(size, fx.Node):   # a size read from a shape: the channels it counts and these go together
            counted = self.counts.pair(n, size, len(x.ids))
            if counted is None:
                return None
            self.g.uf.union_arrays(counted, x.ids)
        return moved

    def pooled(self, n: fx.Node, x: Slot, value: torch.Tensor, result: torch.Tensor) -> Slot | None:
        """A mean, sum, maximum or minimum over axes other than the batch and the channels (spatial
        pooling, a mean over tokens, Hiera's max-pool of token groups): each channel by itself, on the
        axis it lands on."""
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        rank, at = value.dim(), _dim(x.axis, value)
        if not dims or not all(isinstance(d, int) and d % rank not in (0, at) for d in dims):
            return None
        keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
        new = at if keep else at - sum(d < at for d in {d % rank for d in dims})
        if result.dim() < 2 or new >= result.dim() or result.shape[new] != len(x.ids):
            return None
        return _slot_on(x.ids, x.dep, new, result)

    def reshaped_as(self, n: fx.Node, x: Slot, value: torch.Tensor, result: torch.Tensor) -> Slot | None:
        """``x.reshape_as(other)``: followed as a reshape whose channel size is ``other``'s channel count,
        where ``other``'s channels land where ``x``'s do; they go together (LeViT's
        ``bn(x.flatten(0, 1)).reshape_as(x)``)."""
        other, shape = self.slot_of(n.args[1]), self.env[n.args[1]]
        if other is None or self.opaque(x) or not isinstance(shape, torch.Tensor) or len(other.ids) != len(x.ids):
            return None
        at = _dim(other.axis, shape)
        sizes = [-1 if d == at else int(size) for d, size in enumerate(shape.shape)]
        if layout.moved_to("reshape", [sizes], {}, value, result, _dim(x.axis, value), fx.Node) != at:
            return None
        self.g.uf.union_arrays(other.ids, x.ids)
        return _slot_on(x.ids, x.dep, at, result)

    def functional_batchnorm(self, n: fx.Node, x: Slot, value: torch.Tensor, result: torch.Tensor) -> Slot | None:
        """``F.batch_norm`` in eval mode, on the running statistics and affine parameters of one module.

        Norm-activation layers (timm's ``BatchNormAct2d`` and its kin, subclasses
        of ``nn.BatchNorm2d`` that add an activation) call the function, not the
        module. In eval mode it is a per-channel affine map; its tensors belong
        to one module, which loses the channels with them (sliced as a whole, so
        that its activation and everything else it holds stay).
        """
        owner = _batchnorm_owner(n, self.g.modules)
        if owner is None or x.axis != 1 or not _same_channels(value, result):
            return self.barrier(n, result, "batch_norm on tensors of no single batch-norm module, or in training mode")
        if self.functional_owners().get(owner, 0) > 1 or self.calls.get(owner, 0):
            return self.barrier(n, result, f"batch_norm of '{owner}' applied more than once")
        self.g.members.append(Member(owner, "batchnorm", x.ids))
        return x

    def functional_layer(self, n: fx.Node, name: str, x: Slot, value: torch.Tensor, result: torch.Tensor) -> Slot | None:
        """``F.linear``/``F.convNd`` on one layer's own weight and bias, as that layer's module call.

        Subclasses of ``nn.Linear`` and ``nn.ConvNd`` outside torch.nn (timm's
        ``Linear``, ``Conv2dSame``, ``create_conv2d``'s layers) are traced
        through and call the function. Where the call reads the layer's own
        ``weight`` and ``bias`` and uses its stride, padding, dilation and
        groups, it computes what the layer computes on the call's input (a
        ``Conv2dSame`` pads before it, as a node of its own), so the layer
        loses channels as a plain one does; it is sliced as a copy of itself,
        keeping what the subclass adds.
        """
        owner = _layer_owner(n, name, self.g.modules)
        if owner is None:
            return self.barrier(n, result, f"{name} on tensors that are not one layer's weight and bias")
        if self.functional_owners().get(owner, 0) > 1 or self.calls.get(owner, 0):
            return self.barrier(n, result, f"{name} of '{owner}' applied more than once")
        mod = self.g.modules[owner]
        if name == "linear":
            if value.dim() >= 3:
                return self.linear_last(n.name, owner, mod, x, value, functional=True)
            if x.axis == 1 and value.dim() == 2:
                return self.linear(owner, mod, x, value, functional=True)
        elif x.axis == 1 and value.dim() == mod.weight.dim():
            return self.conv(owner, mod, x, value, functional=True)
        return self.barrier(n, result, f"{name} of '{owner}' on features along another axis")

    def functional_owners(self) -> Counter:
        """How often each module's tensors are read by a functional batch-norm, linear or convolution."""
        if not hasattr(self, "_owners"):
            owners: Counter = Counter()
            for m in self.module.graph.nodes:
                fname = ops.function_name(m.target) if m.op == "call_function" else None
                if fname == "batch_norm":
                    owners[_batchnorm_owner(m, self.g.modules)] += 1
                elif fname in _FUNCTIONAL_LAYERS:
                    owners[_layer_owner(m, fname, self.g.modules)] += 1
            self._owners = owners
        return self._owners

    def cat(self, n: fx.Node, result: object) -> Slot | None:
        tensors = n.args[0]
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        if not isinstance(result, torch.Tensor) or not isinstance(tensors, (list, tuple)):
            return self.barrier(n, result, "cat")
        slots = [self.slot_of(t) for t in tensors]
        if any(s is None for s in slots) or len({s.axis for s in slots}) != 1 \
                or dim % result.dim() != _dim(slots[0].axis, result):
            return self.barrier(n, result, f"cat along dimension {dim}")
        return Slot(np.concatenate([s.ids for s in slots]), np.concatenate([s.dep for s in slots]), slots[0].axis)

    def binary(self, n: fx.Node, result: object, is_mul: bool) -> Slot | None:
        operands = [a for a in n.args[:2]]
        values = [self.env[a] if isinstance(a, fx.Node) else a for a in operands]
        # one element computed from parameters alone (hgnet's learnable affine ``self.scale * x + self.bias``)
        # is a number
        tensors = [(a, v) for a, v in zip(operands, values, strict=True) if isinstance(v, torch.Tensor)
                   and not (v.numel() == 1 and self.from_parameters(a))]
        if not isinstance(result, torch.Tensor) or not tensors or any(k != "alpha" for k in n.kwargs):
            return self.barrier(n, result, "elementwise operation")
        if len(tensors) == 1:
            a, v = tensors[0]
            s = self.slot_of(a)
            if s is None or v.dim() != result.dim() or not _same_channels(v, result, s.axis):
                return self.barrier(n, result, "elementwise operation with a broadcast operand")
            return s
        (a, va), (b, vb) = tensors
        sa, sb = self.slot_of(a), self.slot_of(b)
        if sa is not None and sb is not None and sa.axis != sb.axis and va.dim() == vb.dim() == result.dim() \
                and va.shape[1:] == vb.shape[1:] == result.shape[1:]:
            opaque_a, opaque_b = self.opaque(sa), self.opaque(sb)
            axis = sb.axis if opaque_a and not opaque_b else sa.axis if opaque_b and not opaque_a else -1
            sa, sb = self.on_axis(sa, axis, va, n), self.on_axis(sb, axis, vb, n)
        if sa is None or sb is None or sa.axis != sb.axis or va.dim() != vb.dim() \
                or va.shape[sa.axis] != vb.shape[sa.axis] or not _same_channels(va, result, sa.axis) \
                or (sa.axis != 1 and va.shape[1:] != vb.shape[1:]):
            return self.barrier(n, result, "elementwise operation across channel counts or axes")
        self.g.uf.union_arrays(sa.ids, sb.ids)
        if is_mul:
            zero_a, zero_b = ~sa.dep & _zero_channels(va, sa.axis), ~sb.dep & _zero_channels(vb, sb.axis)
            dep = (sa.dep & ~zero_b) | (sb.dep & ~zero_a)
        else:
            dep = sa.dep | sb.dep
        return Slot(sa.ids, dep, sa.axis)


def _bound(n: fx.Node, names: tuple[str, ...]) -> dict[str, object]:
    """A function call's arguments by name: positional ones in ``names``' order, then keywords."""
    return dict(zip(names, n.args, strict=False)) | dict(n.kwargs)


def _owner_of(arg: object, attr: str) -> str | None:
    """The module whose own attribute ``attr`` the graph reads as ``arg`` (a ``get_attr`` node), or None."""
    if not isinstance(arg, fx.Node) or arg.op != "get_attr":
        return None
    owner, _, name = str(arg.target).rpartition(".")
    return owner if name == attr else None


_FUNCTIONAL_LAYERS = {"linear": nn.Linear, "conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}


def _layer_owner(n: fx.Node, name: str, modules: dict[str, nn.Module]) -> str | None:
    """The layer whose own weight and bias (and stride, padding, dilation, groups) ``F.<name>`` uses, or None."""
    bound = _bound(n, ("input", "weight", "bias") if name == "linear" else
                   ("input", "weight", "bias", "stride", "padding", "dilation", "groups"))
    owner = _owner_of(bound.get("weight"), "weight")
    mod = modules.get(owner) if owner is not None else None
    if not isinstance(mod, _FUNCTIONAL_LAYERS[name]):
        return None
    bias = bound.get("bias")
    if (mod.bias is not None or bias is not None) and _owner_of(bias, "bias") != owner:
        return None
    if name != "linear":
        dims = mod.weight.dim() - 2

        def spread(v: object, default: int) -> tuple:
            v = default if v is None else v
            return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims

        if mod.padding_mode != "zeros" or isinstance(mod.padding, str) or isinstance(bound.get("padding"), str) \
                or spread(bound.get("stride"), 1) != tuple(mod.stride) \
                or spread(bound.get("padding"), 0) != tuple(mod.padding) \
                or spread(bound.get("dilation"), 1) != tuple(mod.dilation) \
                or (bound.get("groups") or 1) != mod.groups:
            return None
    return owner


def _batchnorm_owner(n: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The batch-norm module whose running statistics (and affine parameters) an ``F.batch_norm`` call reads.

    None unless the call is in eval mode (``training`` false) and reads its
    running mean and variance, and weight and bias where given, all from one
    module's own attributes of those names.
    """
    bound = _bound(n, ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"))
    if bound.get("training", False) is not False:
        return None
    owners = {_owner_of(bound.get(f), f) for f in ("running_mean", "running_var", "weight", "bias")
              if bound.get(f) is not None or f in ("running_mean", "running_var")}
    if len(owners) != 1 or None in owners:
        return None
    owner = owners.pop()
    mod = modules.get(owner)
    if not isinstance(mod, nn.modules.batchnorm._BatchNorm) or mod.running_mean is None:
        return None
    return owner


def _reads_weights(n: fx.Node) -> bool:
    """Whether anything reads the second output (the attention weights) of node ``n``."""
    for u in n.users:
        if u.op != "call_function" or u.target is not operator.getitem:
            return True          # the tuple itself is passed on
        if u.args[1] not in (0, -2) and u.users:
            return True
    return False


def _same_channels(a: torch.Tensor, b: object, axis: int = 1) -> bool:
    """Whether ``b`` has ``a``'s batch and channels (on the last axis: ``a``'s whole shape)."""
    if axis != 1:
        return isinstance(b, torch.Tensor) and a.dim() >= 3 and a.shape == b.shape
    return isinstance(b, torch.Tensor) and a.dim() >= 2 and b.dim() >= 2 and a.shape[1] == b.shape[1] \
        and a.shape[0] == b.shape[0]


def _slot_on(ids: np.ndarray, dep: np.ndarray, dim: int, result: torch.Tensor) -> Slot | None:
    """Channels on dimension ``dim`` of ``result`` as a slot: axis 1, or the last axis; None elsewhere."""
    if dim == 1:
        return Slot(ids, dep)
    return Slot(ids, dep, -1) if dim == result.dim() - 1 else None


def _dim(axis: int, value: torch.Tensor) -> int:
    """The dimension of ``value`` that holds channels on ``axis`` (1 or -1)."""
    return 1 if axis == 1 else value.dim() - 1


def _channels_first(value: torch.Tensor, axis: int) -> torch.Tensor:
    return value if axis == 1 else value.movedim(-1, 1)


def _constant_part(value: torch.Tensor, dep: np.ndarray, axis: int = 1) -> tuple[torch.Tensor, tuple[int, ...]]:
    """What a consumer's constant contributions need of its input: the constant channels, once.

    Keeping only these (not the whole activation) keeps the plan's memory small.
    """
    index = torch.as_tensor(np.nonzero(~dep)[0], dtype=torch.long)
    return value[:1].index_select(_dim(axis, value), index).clone(), tuple(value[:1].shape)


def _flatten(x: Slot, value: torch.Tensor) -> Slot:
    per = int(value[0, 0].numel()) if value.dim() > 2 else 1
    return Slot(np.repeat(x.ids, per), np.repeat(x.dep, per))


def _zero_channels(value: torch.Tensor, axis: int = 1) -> np.ndarray:
    value = _channels_first(value, axis)
    return (value.transpose(0, 1).reshape(value.shape[1], -1) == 0).all(1).numpy()


def _check_constant(slot: Slot, value: torch.Tensor) -> Slot:
    """Channels called input-independent must agree across the two probe samples."""
    claimed = np.flatnonzero(~slot.dep)
    if value.dim() < 2 or value.shape[0] < 2 or not len(claimed):
        return slot
    value = _channels_first(value, slot.axis)
    index = torch.from_numpy(claimed)
    first, second = (value[k].detach().index_select(0, index).reshape(len(claimed), -1) for k in (0, 1))
    same = torch.eq(first, second).all(1).numpy()  # the usual case: the very same values
    if not same.all():
        rest = np.flatnonzero(~same)
        same[rest] = torch.isclose(first[rest], second[rest], rtol=1e-5, atol=1e-6).all(1).numpy()
    dep = slot.dep.copy()
    dep[claimed[~same]] = True
    return Slot(slot.ids, dep, slot.axis)
