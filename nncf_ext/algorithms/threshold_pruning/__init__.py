from nncf_ext.algorithms.threshold_pruning.algo import (
    ThresholdPruning,
    ThresholdPruningConfig,
    threshold_mask,
)
from nncf_ext.algorithms.threshold_pruning.modules import ThresholdPruningMask

__all__ = ["ThresholdPruning", "ThresholdPruningConfig", "ThresholdPruningMask", "threshold_mask"]
