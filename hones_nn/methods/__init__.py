"""Ranking methods. Each module registers its methods in ``hones_nn.methods.base.METHODS``."""

from hones_nn.methods import hones, vseam  # noqa: F401  (registration)
from hones_nn.methods.base import METHODS, Method, MethodResult, RunContext, get_method, register_method

__all__ = ["METHODS", "Method", "MethodResult", "RunContext", "get_method", "register_method"]
