"""Explanations (pytorch-grad-cam CAMs, captum Integrated Gradients), overlays and scoring against lesions."""

from lungnet.explain.base import Explainer, ExplainError, LogitTarget
from lungnet.explain.cams import explain, list_methods, make_explainer
from lungnet.explain.overlay import overlay

__all__ = ["ExplainError", "Explainer", "LogitTarget", "explain", "list_methods", "make_explainer", "overlay"]
