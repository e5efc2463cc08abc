"""Loaded versions and how traffic reaches them."""

from inferlane.rollout.registry import ModelRegistry
from inferlane.rollout.router import Outcome, Route, Router

__all__ = ["ModelRegistry", "Outcome", "Route", "Router"]
