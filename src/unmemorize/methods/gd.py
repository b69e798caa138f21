"""Gradient difference: gradient ascent on the forget set plus gradient descent (NLL) on a
retain set, weighted by ``--retain-weight`` (Liu et al. 2022; the GD baseline of TOFU):

loss = −NLL_forget + λ·NLL_retain, each a weighted mean over the optimizer step.

It is ``ga`` with the retain set required."""

from __future__ import annotations

from dataclasses import dataclass

from .base import register
from .ga import GradientAscent


@register
@dataclass
class GradientDifference(GradientAscent):
    name = "gd"
    requires_retain = True
