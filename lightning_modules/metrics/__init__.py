"""torchmetrics metrics of the tasks: a stateful ``Metric`` per task and its pure functional forms."""

from lightning_modules.metrics.pose import (
    PoseAccuracy,
    add_error,
    adds_error,
    depth_bins,
    match_poses,
    pose_accuracy,
    pose_errors,
)

__all__ = [
    "PoseAccuracy",
    "add_error",
    "adds_error",
    "depth_bins",
    "match_poses",
    "pose_accuracy",
    "pose_errors",
]
