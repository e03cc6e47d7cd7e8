"""Giving one module instance another forward, without tying the instance into a reference cycle.

`module.forward = types.MethodType(f, module)` stores in the module a bound method that holds the module:
a cycle, so a model dropped by its last user (the server evicting a fine-tune) keeps its memory, GPU memory
included, until Python's cyclic collector happens to run. The replacement here holds the module weakly.
"""

from __future__ import annotations

import copy
import weakref
from typing import Callable


def replace_forward(module, forward: Callable) -> None:
    """Make `module(...)` call `forward(module, ...)`, keeping only a weak reference to the module."""
    module.forward = _WeakForward(module, forward)


class _WeakForward:
    __slots__ = ("module", "function")

    def __init__(self, module, function: Callable):
        self.module, self.function = weakref.ref(module), function

    def __call__(self, *args, **kwargs):
        return self.function(self.module(), *args, **kwargs)

    def __deepcopy__(self, memo):
        # A copied model's forward calls the copy: the module is already in `memo` while its attributes are
        # being copied.
        return _WeakForward(copy.deepcopy(self.module(), memo), self.function)
