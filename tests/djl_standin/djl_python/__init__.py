"""A stand-in for ``djl_python`` (it ships only inside the LMI image), following its documented
Input/Output API (see CONTRACTS.md section 1). Only what the handler may call is here."""

from .inputs import Input
from .outputs import Output

__all__ = ["Input", "Output"]
