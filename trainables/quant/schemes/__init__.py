"""Built-in quantization schemes; importing a module registers its scheme."""

from . import hadamard, none, ternary

__all__ = ["hadamard", "none", "ternary"]
