"""DFormer / DFormerv2 model zoo for Jittor."""
from utils import runtime as _runtime  # noqa: F401  (must run before jittor is imported)
