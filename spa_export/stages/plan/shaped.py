"""Trace a submodule on the probe's real values, so that control flow on its shapes is decided.

torch.fx traces with proxies: ``x.shape`` is a proxy too, and a branch on it (``if new_h != H``
in MobileViT's blocks, ``math.ceil`` of a size in timm's ``Conv2dSame``) cannot be decided. A plan
is made for one input shape, so such a submodule can be traced as it runs on the probe:

1. one eager pass of the network on the probe records the arguments of every submodule, and how
   often each is called (:func:`record_calls`; made only when a first trace left a submodule
   opaque, and before the second: a trace patches every module's call);
2. a submodule called once is traced again with its recorded arguments attached to the argument
   proxies, and every node made inside it is evaluated on real tensors as it is made
   (:class:`ShapedTracing`): ``shape``, ``size()``, ``dim()`` and ``ndim`` of such a proxy are plain
   numbers, and its ``device`` and ``dtype`` the probe's, so Python decides its branches
   (EfficientViT's ``if v.device.type != 'meta'``).

The graph is then specialised to the probe's shapes, which is the shape the plan is made for: the
planner's interpreter runs the same probe through it and compares nothing it did not compute. A
submodule called more than once (its calls could differ in shape), or that still fails, stays one
opaque step, as before.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn


@contextlib.contextmanager
def attributes_kept(model: nn.Module) -> Iterator[None]:
    """Every module's attributes as they were, afterwards: tracing and running a network runs its
    modules' code, which may cache what it computes in the module (timm's attention-bias caches of
    LeViT, TinyViT, EfficientViT), a proxy while tracing. Dictionaries keep their identity and get
    their entries back."""
    saved = [(m, {k: (v, dict(v) if isinstance(v, dict) else None) for k, v in vars(m).items()})
             for m in model.modules()]
    try:
        yield
    finally:
        for m, state in saved:
            attrs = vars(m)
            for key in [k for k in attrs if k not in state]:
                del attrs[key]
            for key, (value, entries) in state.items():
                attrs[key] = value
                if entries is not None:   # (compared by identity, not ==: values may be tensors)
                    value.clear()
                    value.update(entries)


@dataclass
class Call:
    """The first call of a submodule in the eager pass, and how many calls there were."""

    args: tuple
    kwargs: dict
    count: int = 1


def _detached(value: object) -> object:
    return fx.node.map_aggregate(value, lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v)


def record_calls(model: nn.Module, probe: tuple) -> dict[str, Call]:
    """``{submodule name: its first call}`` from one run of ``model`` on ``probe`` (eval mode only:
    a module in training mode would update its statistics). The hooks are removed afterwards."""
    if any(m.training for m in model.modules()):
        return {}
    calls: dict[str, Call] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        name = names.get(mod)
        if name in calls:
            calls[name].count += 1
        elif name is not None:
            calls[name] = Call(_detached(args), _detached(kwargs))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in names]
    try:
        with torch.no_grad():
            model(*probe)
    except Exception:   # the network does not run eagerly on the probe: nothing is specialised
        return {}
    finally:
        for h in handles:
            h.remove()
    return calls


class ShapedProxy(fx.Proxy):
    """A proxy that may know the real value of its node; then its sizes are numbers."""

    value: object = None

    def _known(self) -> torch.Tensor | None:
        return self.value if isinstance(self.value, torch.Tensor) else None

    def _read(self, attribute: str) -> object:
        """``attribute`` of the real value where it is known (a number, a device, a dtype), else a proxy."""
        known = self._known()
        if known is not None:
            return getattr(known, attribute)
        return self.tracer.create_proxy("call_function", builtins.getattr, (self, attribute), {})

    shape = property(lambda self: self._read("shape"))
    ndim = property(lambda self: self._read("ndim"))
    device = property(lambda self: self._read("device"))
    dtype = property(lambda self: self._read("dtype"))

    def size(self, *dims: object) -> object:
        known = self._known()
        if known is not None and all(isinstance(d, int) for d in dims):
            return known.size(*dims)
        return self.tracer.create_proxy("call_method", "size", (self, *dims), {})

    def dim(self) -> object:
        known = self._known()
        if known is not None:
            return known.dim()
        return self.tracer.create_proxy("call_method", "dim", (self,), {})


class _NoValue(Exception):
    pass


def _real(arg: object) -> object:
    if isinstance(arg, fx.Proxy):
        # vars(), not getattr: a proxy's unknown attribute is a new node of the graph
        value = vars(arg).get("value") if isinstance(arg, ShapedProxy) else None
        if value is None:
            raise _NoValue
        return value
    return arg


def _evaluate(root: nn.Module, kind: str, target: object, args: tuple, kwargs: dict) -> object:
    """The value of a new node from its arguments' values; None where one of them has none."""
    try:
        args, kwargs = fx.node.map_aggregate(args, _real), fx.node.map_aggregate(kwargs, _real)
        with torch.no_grad():
            if kind == "call_function":
                return target(*args, **kwargs)
            if kind == "call_method":
                return getattr(args[0], target)(*args[1:], **kwargs)
            if kind == "call_module":
                return root.get_submodule(target)(*args, **kwargs)
            if kind == "get_attr":
                value = root
                for atom in target.split("."):
                    value = getattr(value, atom)
                return value
    except Exception:   # no value: the proxy behaves as torch.fx's own
        return None
    return None


class ShapedTracing(fx.Tracer):
    """torch.fx's tracer that can trace a failing submodule again on its recorded arguments."""

    def __init__(self, calls: dict[str, Call] | None = None, **kw: object) -> None:
        super().__init__(**kw)
        self._calls = calls   # from record_calls, made before the trace (it patches every module's call)
        self._live = False
        self.evaluating = False
        self.shaped: list[str] = []   # submodules traced on the probe's shapes

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ShapedProxy(node, self)

    def getattr(self, attr: str, attr_val: object, parameter_proxy_cache: dict) -> object:
        if self.evaluating:   # a module's own code, run on real values: its real parameters
            return attr_val
        self._param_cache = parameter_proxy_cache   # torch.fx's cache of get_attr proxies, per trace
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: object, args: tuple, kwargs: dict) -> object:
        if self.evaluating:   # a module called while a node is evaluated: run it, trace nothing
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def forget(self, erased: list[fx.Node]) -> None:
        """Drop cached parameter proxies whose nodes were erased (a retry must make them again)."""
        cache = getattr(self, "_param_cache", None) or {}
        gone = set(erased)
        for key in [k for k, p in cache.items() if getattr(p, "node", None) in gone]:
            del cache[key]

    def create_proxy(self, kind: str, target: object, args: tuple, kwargs: dict, name: str | None = None,
                     type_expr: object = None, proxy_factory_fn: object = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if self._live and isinstance(proxy, ShapedProxy):
            # the trace patches every module's call and attribute: while evaluating, they run as written
            self.evaluating = True
            try:
                proxy.value = _evaluate(self.root, kind, target, args, kwargs)
            finally:
                self.evaluating = False
        return proxy

    def trace_on_probe(self, m: nn.Module, name: str, forward: object, args: tuple, kwargs: dict,
                       undo: object) -> object | None:
        """``m`` traced again with its recorded arguments as values; None where that is not possible
        (no recorded calls, called more than once, already inside such a trace, or it fails again:
        then ``undo()`` has erased what the attempt made)."""
        if self._live or not self._calls:
            return None
        call = self._calls.get(name)
        if call is None or call.count != 1 or len(call.args) != len(args) or call.kwargs.keys() != kwargs.keys():
            return None
        for proxy, value in [*zip(args, call.args, strict=True), *((kwargs[k], call.kwargs[k]) for k in kwargs)]:
            if isinstance(proxy, ShapedProxy):
                proxy.value = value
        self._live = True
        try:
            out = fx.Tracer.call_module(self, m, forward, args, kwargs)
        except Exception:
            undo()
            return None
        finally:
            self._live = False
        self.shaped.append(name)
        return out
