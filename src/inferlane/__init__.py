"""inferlane: one trained model, served through every inference pattern.

    from inferlane import ModelRegistry, OnlineLane, Metrics
"""

from __future__ import annotations

__version__ = "0.1.0"

from inferlane.core.batcher import DynamicBatcher, Prediction
from inferlane.core.clock import FakeClock, MonotonicClock
from inferlane.core.errors import (
    BatchSizeMismatch,
    ConfigError,
    DeadlineExceeded,
    InferlaneError,
    InvalidInput,
    ModelError,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    QueueFull,
    Unavailable,
)
from inferlane.core.metrics import Metrics
from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_repository
from inferlane.core.spec import BatchingPolicy, Limits, ModelConfig, TensorSpec
from inferlane.lanes.online import OnlineLane
from inferlane.rollout.registry import ModelRegistry

__all__ = [
    "BatchSizeMismatch",
    "BatchingPolicy",
    "ConfigError",
    "DeadlineExceeded",
    "DynamicBatcher",
    "FakeClock",
    "InferlaneError",
    "InvalidInput",
    "Limits",
    "Metrics",
    "ModelConfig",
    "ModelError",
    "ModelNotFound",
    "ModelNotReady",
    "ModelRegistry",
    "ModelVersion",
    "MonotonicClock",
    "OnlineLane",
    "PayloadTooLarge",
    "Prediction",
    "QueueFull",
    "TensorSpec",
    "Unavailable",
    "__version__",
    "scan_repository",
]
