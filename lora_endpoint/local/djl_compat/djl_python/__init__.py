"""A ``djl_python`` compatibility module for running the handler outside the LMI image.

The real ``djl_python`` ships only inside the DJL Serving / LMI image. This one follows its documented
Input/Output API (see CONTRACTS.md section 1): the local endpoint (``lora_endpoint/commands/serve.py``) puts
this folder on ``sys.path`` only when a real ``djl_python`` is not importable, and the tests use it
to drive ``handle()``. Only what the handler may call is here."""

from .inputs import Input
from .outputs import Output

__all__ = ["Input", "Output"]
