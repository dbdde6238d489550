"""Code that runs around ``import jittor``, wherever the first import happens.

:func:`wrap` registers ``wrapper(run, module)``, called in place of the execution of
Jittor's module (``run(module)`` executes it); set-up that must see Jittor right after
its import, or must handle how the import ends, goes through here.
"""
import importlib.abc
import importlib.util
import sys


def wrap(wrapper, key):
    """Have ``wrapper`` run around the coming ``import jittor`` (once per ``key``).

    Does nothing when Jittor is already imported or ``key`` is registered.
    """
    if "jittor" in sys.modules:
        return
    if any(isinstance(f, _Hook) and f.key == key for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Hook(wrapper, key))


class _Hook(importlib.abc.MetaPathFinder):
    """Finds ``jittor`` as the other finders do and wraps its loader's ``exec_module``."""

    def __init__(self, wrapper, key):
        self.wrapper, self.key = wrapper, key

    def find_spec(self, name, path=None, target=None):
        if name != "jittor":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        spec.loader.exec_module = lambda module: self.wrapper(run, module)
        return spec
