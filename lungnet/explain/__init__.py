"""Explanations (pytorch-grad-cam CAMs, captum Integrated Gradients), overlays and scoring against lesions.

The names below load on first use (PEP 562), so ``python -m lungnet.explain --help`` and a refused command line do
not import torch through this package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lungnet.explain.base import Explainer, ExplainError, LogitTarget
    from lungnet.explain.cams import explain, list_methods, make_explainer
    from lungnet.explain.overlay import overlay

_HOMES = {
    "ExplainError": "base",
    "Explainer": "base",
    "LogitTarget": "base",
    "explain": "cams",
    "list_methods": "cams",
    "make_explainer": "cams",
    "overlay": "overlay",
}

__all__ = ["ExplainError", "Explainer", "LogitTarget", "explain", "list_methods", "make_explainer", "overlay"]


def __getattr__(name: str) -> Any:
    """The public name `name`, imported from its submodule on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"lungnet.explain.{_HOMES[name]}"), name)
