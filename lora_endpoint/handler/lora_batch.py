"""Batched multi-LoRA: every row of a batch through its own adapter (or none), one delta per layer.

peft's ``adapter_names`` path loops over the adapters in every LoRA layer (an index, a sub-batch, two
small matmuls and a scatter each). Here, for the duration of ``routing``, every peft ``lora.Linear`` gets a
forward that runs its base layer once and adds one LoRA delta for all rows (the S-LoRA / Punica idea in
plain torch); peft still loads and validates the adapters, and its forwards are put back after.

The delta, per layer, for ``x`` of ``[rows, q, in]`` (q = 1 decode, q > 1 prefill): the layer's
adapters are concatenated once, ``A = [A_1; ...; A_n]`` (``[sum r_i, in]``) and
``B = [s_1 B_1, ..., s_n B_n]`` (each adapter's per-layer peft scaling folded in, so mixed ranks,
``rank_pattern`` and ``alpha_pattern`` need no padding). A step computes ``h = x A^T`` for every row,
zeroes in each row the columns of the adapters that are not its own (all of them for a base row), and
adds ``h B^T``: two dense GEMMs and a fill per layer. On a CPU both GEMMs run on oneDNN-packed copies of
``A`` and ``B`` (lora_endpoint/handler/prepack.py), as the base layers do. Why not gather each row's factors
(``A[idx]`` as ``[rows, r, in]``, then ``bmm``): on CPU the gather copies ``rows * r * in`` values per
layer and batched tiny matmuls are slower than one GEMM (decode, 16 rows x 512 wide, 4 adapters, r=16,
per layer: 111 us dense, 144 us gathered, 198 us peft's loop, 122 us one adapter); on a GPU decode is
bound by memory reads, and the dense form reads each adapter present once where the gather reads it once
per row. The price is compute on the other adapters' columns (``n_present`` times one adapter's LoRA
flops, small next to the base layer); prefill stays ahead too (16 rows x 16 tokens, whole 20M model: 76
ms dense, 83 ms per-adapter sub-batches, 73 ms one adapter on peft's plain path). Base rows go through
the GEMMs with every column zeroed, so their delta is exactly 0: selecting the adapter rows and
scattering their delta back (``index_select`` / ``index_add``) cost more on a CPU than the rows saved (16
rows on the 166M model, 4 adapters and base rows: 253 vs 183 tok/s). A layer none of whose
adapters is in the batch runs its base layer alone.

Imports torch / peft lazily. Not thread-safe: callers hold the model lock.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import prepack

log = logging.getLogger("lora_endpoint.handler")

_SUBSETS = 8  # subsets of a layer's adapters whose factors are kept

# Adapter config fields that make a forward pass something other than base(x) + B A x * scaling.
_UNSUPPORTED_FIELDS = {
    "use_dora": "DoRA",
    "modules_to_save": "modules_to_save",
    "trainable_token_indices": "trainable tokens",
    "lora_bias": "a LoRA bias",
    "target_parameters": "LoRA on parameters",
    "use_qalora": "QALoRA",
    "alora_invocation_tokens": "aLoRA",
}


@dataclass
class _Stack:
    """One peft ``lora.Linear``: its adapters' factors, concatenated (see the module docstring)."""

    layer: Any
    names: tuple[str, ...]  # the routed adapters this layer has, in routing order
    ranks: tuple[int, ...]
    a: Any  # [sum r, in]
    b: Any  # [out, sum r], scaling folded in
    a_packed: Any = None  # prepack.pack(a), pack(b): None where packing does not apply
    b_packed: Any = None
    # What the copy was made from: peft's factor weights with their version counters (an in-place write,
    # e.g. loading new values into a loaded adapter, bumps them) and the scalings.
    sources: tuple[tuple[Any, int], ...] = ()
    scales: tuple[float, ...] = ()
    broken: str | None = None  # an adapter whose factors hold NaN or infinity
    # The factors of subsets of ``names`` (the adapters of a batch), a few of them: the engine alternates
    # between its decode batch's set and the sets of the prompts it prefills.
    subsets: dict[tuple[str, ...], _Factors] = field(default_factory=dict)

    def stale(self) -> bool:
        return any(w._version != v for w, v in self.sources) or self.scales != tuple(
            self.layer.scaling[n] for n in self.names
        )

    def factors(self, present: tuple[str, ...]) -> _Factors:
        if present == self.names:
            return _Factors(self.a, self.b, self.a_packed, self.b_packed)
        found = self.subsets.get(present)
        if found is None:
            import torch

            starts = dict(zip(self.names, itertools.accumulate(self.ranks, initial=0), strict=False))
            spans = [(starts[n], starts[n] + self.ranks[self.names.index(n)]) for n in present]
            a = torch.cat([self.a[lo:hi] for lo, hi in spans])
            b = torch.cat([self.b[:, lo:hi] for lo, hi in spans], dim=1).contiguous()
            found = _Factors(a, b, prepack.pack(a), prepack.pack(b))
            if len(self.subsets) >= _SUBSETS:
                del self.subsets[next(iter(self.subsets))]  # the oldest
            self.subsets[present] = found
        return found


@dataclass(frozen=True)
class _Factors:
    """The A and B a batch multiplies by, with their oneDNN-packed copies (None: plain GEMMs)."""

    a: Any
    b: Any
    a_packed: Any
    b_packed: Any


@dataclass
class _Plan:
    """What the layers sharing one set of present adapters (and ranks, device) need for one batch."""

    off: Any  # [rows, sum r], True on the columns not of the row's adapter; None when every row has the one adapter
    count: int  # rows of the batch (a forward with another batch size is a caller's error)


class BatchedLora:
    """Built from a loaded ``PeftModel``; ``rebuild()`` after adapters are added, removed or reloaded.

    The factors are copied; a copy whose source weights were written in place (their version counter moved)
    or whose scaling changed is made again at the next ``routing``.
    """

    def __init__(self, peft_model: Any, names: Sequence[str]) -> None:
        self._model = peft_model
        self._names = tuple(names)
        self._layers: list[Any] = []  # every peft tuner layer of the model
        self._stacks: list[_Stack] | None = None
        self._reason: str | None = None
        self.rebuild()

    def rebuild(self) -> None:
        """Check the adapters again and drop the stacked factors (built again on the next ``routing``)."""
        self._stacks = None
        self._layers, self._reason = _scan(self._model, self._names)

    @property
    def reason(self) -> str | None:
        """Why this path cannot serve the adapters now, or None."""
        reason = self.layout_reason
        if reason is not None:
            return reason
        # A NaN factor would reach every row of the layer (0 * NaN in the shared product); peft's path keeps
        # it to the rows of its adapter. Loading refuses such weights: this is for in-place writes.
        broken = next((s.broken for s in self._fresh_stacks() if s.broken), None)
        return f"adapter {broken!r} has non-finite LoRA weights" if broken else None

    @property
    def layout_reason(self) -> str | None:
        """``reason`` without looking at the factors' values (so without stacking them first)."""
        if self._reason is not None:
            return self._reason
        if getattr(self._model, "training", False):
            return "the model is in training mode (this path applies no dropout)"
        if any(layer.merged for layer in self._layers):
            return "an adapter is merged into the base weights"
        return None

    @property
    def supported(self) -> bool:
        """False when an adapter needs what this path cannot do: callers use peft's ``adapter_names``."""
        return self.reason is None

    @contextlib.contextmanager
    def routing(self, adapters: Sequence[str | None]) -> Iterator[None]:
        """Per-row adapter (None = base) for the forward passes run inside; peft's layers are back after."""
        if not self.supported:
            raise RuntimeError(f"batched LoRA cannot serve these adapters: {self.reason}")
        unknown = sorted({a for a in adapters if a is not None} - set(self._names))
        if unknown or not adapters:
            raise ValueError(f"routing needs one adapter (or None) per row from {list(self._names)}, got {unknown}")
        installed: list[tuple[Any, Any]] = []
        try:
            # An instance attribute shadows the class's forward; nn.Module.__call__ looks it up each call.
            for layer, forward in _forwards(self._fresh_stacks(), self._layers, list(adapters)):
                installed.append((layer, layer.__dict__.get("forward")))
                layer.forward = forward
            yield
        finally:
            for layer, own in reversed(installed):
                if own is None:
                    del layer.forward
                else:
                    layer.forward = own

    def stack_steps(self, warm: Sequence[Sequence[str]] = ()) -> Iterator[None]:
        """Stack the factors one layer per step (the caller spreads the steps over engine iterations, so
        that no iteration waits for all of them); the stacks are in place once the iterator is exhausted.
        ``warm``: adapter sets whose sub-stacks are made too (the set the running batch uses), so that the
        first batch after the switch does not make them all at once."""
        if self._stacks is not None and not any(stack.stale() for stack in self._stacks):
            return
        stacks: list[_Stack] = []
        for layer in self._layers:
            for stack in _build_stacks([layer], self._names):
                stacks.append(stack)
                for subset in warm:
                    here = tuple(n for n in stack.names if n in subset)
                    if here and here != stack.names:
                        stack.factors(here)
            yield
        self._stacks = stacks

    def _fresh_stacks(self) -> list[_Stack]:
        if self._stacks is None or any(stack.stale() for stack in self._stacks):
            self._stacks = _build_stacks(self._layers, self._names)
        return self._stacks


def _scan(model: Any, names: tuple[str, ...]) -> tuple[list[Any], str | None]:
    """The model's peft tuner layers, and why ``names`` cannot go through this path (None: they can)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return [], "the model is not a peft model"
    reasons = [_config_reason(name, configs.get(name)) for name in names]
    layers: list[Any] = []
    for path, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            layers.append(module)
        reasons.append(_layer_reason(path, module, names))
    return layers, next((r for r in reasons if r), None)


def _config_reason(name: str, config: Any) -> str | None:
    if config is None:
        return f"adapter {name!r} is not loaded"
    if getattr(getattr(config, "peft_type", None), "value", None) != "LORA":
        return f"adapter {name!r} is not a LoRA adapter"
    labels = [label for key, label in _UNSUPPORTED_FIELDS.items() if getattr(config, key, None)]
    return f"adapter {name!r} uses {labels[0]}" if labels else None


def _layer_reason(path: str, module: Any, names: tuple[str, ...]) -> str | None:
    """Why ``module`` holds one of ``names`` in a way this path does not compute, or None."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer
    from torch.nn import ModuleDict

    if not isinstance(module, BaseTunerLayer):
        saved = getattr(module, "modules_to_save", None)  # a PeftModel has the attribute too (a list or None)
        if isinstance(saved, ModuleDict) and any(n in saved for n in names):
            return f"{path}: an adapter replaces the whole module (modules_to_save)"
        return None
    layer: Any = module
    held = [n for n in names if any(n in getattr(layer, attr, {}) for attr in layer.adapter_layer_names)]
    if held and (type(layer) is not LoraLinear or any(n not in layer.lora_A for n in held)):
        return f"{path} is a {type(layer).__name__} LoRA layer (only Linear layers are batched)"
    for n in held:
        if layer.use_dora.get(n) or n in getattr(layer, "lora_variant", {}):
            return f"{path}: adapter {n!r} is a LoRA variant"
        if layer.lora_B[n].bias is not None:
            return f"{path}: adapter {n!r} has a LoRA bias"
    return None


def _build_stacks(layers: list[Any], names: tuple[str, ...]) -> list[_Stack]:
    """Concatenate every LoRA layer's factors (a copy, on the layer's device, in peft's LoRA dtype)."""
    import torch

    stacks: list[_Stack] = []
    # Plain tensors even when the first routing runs under inference mode (they outlive it).
    with torch.inference_mode(False), torch.no_grad():
        for layer in layers:
            held = tuple(n for n in names if n in getattr(layer, "lora_A", {}))
            if not held:
                continue
            weights = [(layer.lora_A[n].weight, layer.lora_B[n].weight) for n in held]
            a_parts = [a for a, _ in weights]
            b_parts = [b * layer.scaling[n] for n, (_, b) in zip(held, weights, strict=True)]
            dtype = a_parts[0].dtype
            for part in a_parts[1:]:
                dtype = torch.promote_types(dtype, part.dtype)
            stacks.append(
                _Stack(
                    layer=layer,
                    names=held,
                    ranks=tuple(int(p.shape[0]) for p in a_parts),
                    a=(a := torch.cat([p.to(dtype) for p in a_parts]).contiguous()),
                    b=(b := torch.cat([p.to(dtype) for p in b_parts], dim=1).contiguous()),
                    a_packed=prepack.pack(a),
                    b_packed=prepack.pack(b),
                    sources=tuple((w, w._version) for pair in weights for w in pair),
                    scales=tuple(layer.scaling[n] for n in held),
                    broken=next((n for n, pair in zip(held, weights, strict=True) if not all(
                        bool(torch.isfinite(w).all()) for w in pair)), None),
                )
            )
    return stacks


def _forwards(
    stacks: list[_Stack], layers: list[Any], adapters: list[str | None]
) -> Iterator[tuple[Any, Callable[..., Any]]]:
    """A forward for every tuner layer for this batch: base + batched delta where a row's adapter is, else
    the base layer alone (never peft's own forward, which would apply whatever adapter is active)."""
    present = {a for a in adapters if a is not None}
    plans: dict[tuple[Any, ...], _Plan | None] = {}
    stacked = {id(stack.layer) for stack in stacks}
    for stack in stacks:
        here = tuple(n for n in stack.names if n in present)
        ranks = tuple(stack.ranks[stack.names.index(n)] for n in here)
        key = (here, ranks, stack.a.device, stack.a.dtype)  # layers with the same key share one plan
        if key not in plans:
            plans[key] = _plan(here, ranks, adapters, stack.a) if here else None
        plan = plans[key]
        if plan is None:
            yield stack.layer, _base_forward(stack.layer.base_layer)
        else:
            yield stack.layer, _lora_forward(stack.layer.base_layer, stack.factors(here), plan)
    for layer in layers:
        if id(layer) not in stacked:
            yield layer, _base_forward(layer.base_layer)


def _plan(here: tuple[str, ...], ranks: tuple[int, ...], adapters: list[str | None], like: Any) -> _Plan:
    import torch

    off = None
    if len(here) > 1 or any(a not in here for a in adapters):
        owner_of_column = torch.repeat_interleave(torch.arange(len(here)), torch.tensor(ranks))
        # -1 for a row whose adapter is not in this layer (the base, or one this layer does not adapt)
        owner_of_row = torch.tensor([here.index(a) if a in here else -1 for a in adapters])
        off = (owner_of_row[:, None] != owner_of_column[None, :]).to(like.device)
    return _Plan(off=off, count=len(adapters))


def _base_forward(base: Any) -> Callable[..., Any]:
    # A function, not the module itself: nn.Module.__setattr__ would register a module as a child.
    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        return base(x, *args, **kwargs)

    return forward


def _lora_forward(base: Any, factors: _Factors, plan: _Plan) -> Callable[..., Any]:
    off, count = plan.off, plan.count
    a, b = factors.a, factors.b

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        result = base(x, *args, **kwargs)
        if x.shape[0] != count:
            raise ValueError(f"batched LoRA was routed {count} rows but the forward pass has {x.shape[0]}")
        h = prepack.linear(x.to(a.dtype), a, factors.a_packed)
        if off is not None:
            # A fill, not a 0/1 product: an overflow in another adapter's column (float16) must not
            # become 0 * inf = NaN in this row.
            h.masked_fill_(off.view(off.shape[0], *([1] * (h.dim() - 2)), off.shape[1]), 0)
        # Out of place, as peft's plain path: the base layer's output is not ours to write into.
        return result + prepack.linear(h, b, factors.b_packed).to(result.dtype)

    return forward


# Where ``for_model`` keeps a model's instances: on the model itself, so they go when the model goes (a
# weak-keyed dict would keep the model alive through the values' references to it).
_ATTRIBUTE = "_lora_endpoint_batched_lora"
_KEPT = 2  # adapter sets kept per model: the one served, and the next one while it is being built
_CACHE_LOCK = threading.Lock()


def for_model(peft_model: Any, names: Sequence[str]) -> BatchedLora:
    """The model's ``BatchedLora`` for ``names``, made again when one of their configs changed."""
    configs = getattr(peft_model, "peft_config", {})
    key = tuple(names)
    identity = [configs.get(n) for n in key]  # the config objects: a reloaded adapter has a new one
    with _CACHE_LOCK:
        cache: dict[tuple[str, ...], tuple[list[Any], BatchedLora]] = vars(peft_model).setdefault(_ATTRIBUTE, {})
        cached = cache.get(key)
    if cached is not None and all(c is d for c, d in zip(cached[0], identity, strict=True)):
        return cached[1]
    batched = BatchedLora(peft_model, key)
    with _CACHE_LOCK:
        cache.pop(key, None)
        cache[key] = (identity, batched)
        while len(cache) > _KEPT:
            del cache[next(iter(cache))]  # the oldest
    if batched.layout_reason is not None:  # not ``reason``: that would stack the factors here and now
        log.info("mixed-adapter batches use peft's adapter_names: %s", batched.layout_reason)
    return batched


def prebuild(peft_model: Any, names: Sequence[str]) -> bool:
    """Build (and stack the factors of) the ``BatchedLora`` for ``names`` ahead of its first batch, e.g. on
    another thread while the engine serves the current set; True when the batched path can serve them."""
    batched = for_model(peft_model, names)
    if batched.supported:
        batched._fresh_stacks()
    return batched.supported
