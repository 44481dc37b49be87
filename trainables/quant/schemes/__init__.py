"""Built-in quantization schemes; importing a module registers its scheme."""

from . import adaptive, hadamard, lsq, none, ternary

__all__ = ["adaptive", "hadamard", "lsq", "none", "ternary"]
