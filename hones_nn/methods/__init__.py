"""Ranking methods, one module each.

Every module of this package is imported here, and each registers its methods in
``hones_nn.methods.base.METHODS`` with ``@register_method``: adding a method is adding a
file. The CLI's ``--method`` choices and ``hones-nn methods`` come from the registry.
``head_budget`` registers none: it chooses HONES's K_h (``hones-nn head-budget``).
"""

import importlib
import pkgutil

from hones_nn.methods.base import METHODS, Method, MethodResult, RunContext, get_method, register_method

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base" and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["METHODS", "Method", "MethodResult", "RunContext", "get_method", "register_method"]
