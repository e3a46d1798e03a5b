"""6D object pose task: PoseNet (backbone / fpn / head, WDR-style dense keypoints), decoding with PnP,
and the Lightning module that trains it and reports ADD(-S) accuracy per depth bin."""

from lightning_modules.pose.decode import PoseEstimates, decode_poses, solve_pose
from lightning_modules.pose.instances import Detection, decode_instances, group_cells
from lightning_modules.pose.keypoints import Symmetries, bbox_keypoints, canonical_pose, project
from lightning_modules.pose.model import PoseNet, cell_grid
from lightning_modules.pose.module import PoseModule

__all__ = [
    "Detection",
    "PoseEstimates",
    "PoseModule",
    "PoseNet",
    "Symmetries",
    "bbox_keypoints",
    "canonical_pose",
    "cell_grid",
    "decode_instances",
    "decode_poses",
    "group_cells",
    "project",
    "solve_pose",
]
