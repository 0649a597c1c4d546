"""oneDNN-prepacked weights for the model's linear layers on a CPU.

Why: on a CPU a decode step is a chain of small-batch matrix products bound by memory bandwidth, and
oneDNN reads a weight in its own blocked layout much faster than torch's default GEMM reads the plain
one (about 1.8x for one row, 1.25x for 16, on the 2-core benchmark machine; vLLM's CPU backend packs its
weights the same way). The packed copy is made once, at load, after any merge. The plain weight stays:
peft merges into it and state dicts read it, so the linear layers' weights take twice the memory;
``LORA_CPU_PREPACK=false`` turns packing off.

A packed forward runs only where it gives the plain forward's answer: no autograd, input and weight both
float32 on the CPU, a non-empty input, and the weight unchanged since it was packed (same storage, same
version counter; a changed weight is packed again on its next call). Code that writes a weight in place
through ``.data`` (which bypasses the version counter) calls ``repack``. A torch without the oneDNN ops,
or one whose packed result differs from ``F.linear`` on a probe, gets no packing (logged).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger("lora_endpoint.handler")

# peft's LoRA factors are small and change when adapters change: they stay plain.
_SKIP = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")


class _PackedForward:
    """The instance's ``forward``: oneDNN on the packed weight where exact, else the class's forward."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.packed: Any = None
        self.key: tuple[int, int] = (0, 0)
        self.pack()

    def __deepcopy__(self, memo: dict[int, Any]) -> _PackedForward:
        # peft copies whole modules (modules_to_save): the copy packs its own weight (a packed tensor
        # cannot be deep-copied, and must not point back at the original module).
        import copy

        return _PackedForward(copy.deepcopy(self.module, memo))

    def pack(self) -> None:
        weight = self.module.weight
        self.packed = pack(weight)
        self.key = (weight.data_ptr(), weight._version)

    def __call__(self, x: Any) -> Any:
        module = self.module
        weight = module.weight
        if (weight.data_ptr(), weight._version) != self.key:
            self.pack()
        return linear(x, weight, self.packed, module.bias)


def _reorder(weight: Any) -> Any:
    import torch

    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def pack(weight: Any) -> Any | None:
    """A packed copy of a ``[out, in]`` weight for ``linear``, or None where packing does not apply."""
    import torch

    if weight.dtype is not torch.float32 or weight.device.type != "cpu" or weight.dim() != 2 or not available():
        return None
    return _reorder(weight)


def linear(x: Any, weight: Any, packed: Any | None, bias: Any = None) -> Any:
    """``F.linear(x, weight, bias)``, on ``packed`` (``pack(weight)``, made from the weight as it is now)
    where that gives the same answer: no autograd, float32 input on the CPU, not empty."""
    import torch

    if (packed is None or x.dtype is not torch.float32 or x.device.type != "cpu" or x.numel() == 0
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return torch.nn.functional.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether this torch packs and multiplies exactly enough (a probe against ``F.linear``, run once)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(48, 32, generator=generator)
        x = torch.randn(3, 5, 32, generator=generator)
        bias = torch.randn(48, generator=generator)
        with torch.inference_mode():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
            got = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
            want = torch.nn.functional.linear(x, weight, bias)
    except (AttributeError, RuntimeError, TypeError) as err:
        log.info("no oneDNN weight packing in this torch: %s", err)
        return False
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        log.warning("oneDNN packed linear disagrees with F.linear on a probe: not packing")
        return False
    return True


def prepack(model: Any) -> int:
    """Pack every float32 CPU ``nn.Linear`` of ``model`` (peft's LoRA factors excepted); the count packed."""
    import torch

    candidates = [
        m for name, m in model.named_modules()
        if type(m) is torch.nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype is torch.float32
        and not any(part in f".{name}." for part in _SKIP)
    ]
    if not candidates or not available():
        return 0
    for module in candidates:
        if not isinstance(vars(module).get("forward"), _PackedForward):
            # An instance attribute, not a subclass or a new module: peft, hooks and state dicts still see
            # the same nn.Linear with the same parameters.
            vars(module)["forward"] = _PackedForward(module)
    return len(candidates)


def repack(model: Any) -> None:
    """Pack again every packed layer of ``model`` (after its weights were written through ``.data``)."""
    for module in model.modules():
        forward = vars(module).get("forward")
        if isinstance(forward, _PackedForward):
            forward.pack()


def unpack(model: Any) -> int:
    """Give every packed layer its plain forward back (and the packed copy's memory); the count."""
    count = 0
    for module in model.modules():
        if isinstance(vars(module).get("forward"), _PackedForward):
            del vars(module)["forward"]
            count += 1
    return count
