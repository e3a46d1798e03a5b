"""Dynamic zoom-in: crop geometry, projected sizes, and PoseModule's second pass with the crop's intrinsics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_modules.pose.keypoints import bbox_keypoints, project, rotation_about
from lightning_modules.pose.model import cell_grid
from lightning_modules.pose.module import PoseModule
from lightning_modules.pose.zoom import projected_extent, zoom_crops, zoom_factors, zoom_matrices

K = np.array([[150.0, 0.0, 63.5], [0.0, 150.0, 63.5], [0.0, 0.0, 1.0]])
BOX = np.array([[x, y, z] for x in (-40, 40) for y in (-28, 28) for z in (-20, 20)], dtype=float)
KP3D = bbox_keypoints(BOX)
R_GT = rotation_about(np.array([0.3, -1.0, 0.4]), 0.9)


def ramp_images(count: int, size: int = 128) -> torch.Tensor:
    """Channel 0 = x / (size - 1), channel 1 = y / (size - 1), channel 2 = the image's index / 10."""
    ramp = torch.arange(size, dtype=torch.float64) / (size - 1)
    images = torch.empty(count, 3, size, size, dtype=torch.float64)
    images[:, 0] = ramp[None, None, :]
    images[:, 1] = ramp[None, :, None]
    images[:, 2] = (torch.arange(count, dtype=torch.float64) / 10)[:, None, None]
    return images


def test_crop_pixels_come_from_the_mapped_image_pixels() -> None:
    centres = np.array([[70.0, 50.0], [20.0, 100.0]])
    zooms = np.array([2.0, 1.5])
    A = zoom_matrices(centres, zooms, (128, 128))
    np.testing.assert_allclose(A[:, :2, :2] @ centres[..., None] + A[:, :2, 2:], np.full((2, 2, 1), 63.5))
    crops = zoom_crops(ramp_images(2), A)
    inv = np.linalg.inv(A)
    for i in range(2):
        for u, v in ((10, 20), (33, 103), (100, 5), (64, 64)):
            x, y, _ = inv[i] @ np.array([u, v, 1.0])
            if 0 <= x <= 127 and 0 <= y <= 127:
                assert float(crops[i, 0, v, u]) == pytest.approx(x / 127, abs=1e-9)
                assert float(crops[i, 1, v, u]) == pytest.approx(y / 127, abs=1e-9)
    # the second crop reaches past the left border (centre x = 20, 1.5x): outside pixels take the mean colour
    mean = ramp_images(2)[1].mean(dim=(1, 2))
    torch.testing.assert_close(crops[1, :, 64, 0], mean)


def test_projected_extent_and_zoom_factors() -> None:
    t = np.array([[10.0, -5.0, 300.0], [0.0, 0.0, 600.0]])
    R = np.stack([R_GT, np.eye(3)])
    sizes, centres = projected_extent(np.stack([KP3D, KP3D]), R, t, np.stack([K, K]))
    for i in range(2):
        uv = project(KP3D, K, R[i], t[i])
        assert sizes[i] == pytest.approx(float((uv.max(0) - uv.min(0)).max()))
        np.testing.assert_allclose(centres[i], (uv.max(0) + uv.min(0)) / 2)
    assert sizes[1] == pytest.approx(150 * 80 / 580)  # the box's front face is at z = 580
    np.testing.assert_allclose(zoom_factors(np.array([10.0, 40.0, 80.0]), 56.0, 2.0), [2.0, 1.4, 1.0])


class RampOracle(nn.Module):
    """Stands in for PoseNet on ``ramp_images``: reads from the ramps which image pixel each crop pixel
    shows, and makes every cell vote for the true keypoints of that image (given in image pixels)."""

    strides = (8, 16, 32)

    def __init__(self, keypoints_2d: np.ndarray) -> None:
        super().__init__()
        self.keypoints_2d = torch.from_numpy(keypoints_2d)
        self.batch_sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.batch_sizes.append(len(images))
        b, _, h, w = images.shape
        centres, strides = cell_grid((h, w), self.strides)
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        crop_xy = torch.stack([xs.flatten(), ys.flatten(), torch.ones(h * w)], 1).double()
        offsets = []
        for image in images.double():
            index = round(float(image[2, 0, 0]) * 10)
            image_xy = torch.stack([image[0].flatten() * (w - 1), image[1].flatten() * (h - 1)], 1)
            to_image = torch.linalg.lstsq(crop_xy, image_xy).solution  # (3, 2): crop -> image pixels
            M, c = to_image[:2].T, to_image[2]
            kp_crop = torch.linalg.solve(M, (self.keypoints_2d[index] - c).T).T  # (9, 2)
            offsets.append((kp_crop[None] - centres[:, None].double()) / strides[:, None, None].double())
        logits = torch.full((b, len(centres), 1), 5.0)
        logits[images[:, 2, 0, 0] > 0.15] = -10.0  # image 2 shows no object
        return logits, torch.stack(offsets).float()


def test_small_objects_are_decoded_again_from_a_zoomed_crop_with_its_intrinsics() -> None:
    """An exact oracle gives the exact pose in both passes only if the crop's intrinsics are A @ K; the
    second pass runs only for the object smaller than ``zoom_size``."""
    t_gt = np.array([[3.0, -2.0, 550.0], [-4.0, 2.0, 250.0], [0.0, 0.0, 500.0]])  # ~24 px, ~53 px, none
    kp2d = np.stack([project(KP3D, K, R_GT, t) for t in t_gt])
    module = PoseModule([KP3D.tolist()], zoom_size=40.0, aggregation="mean")
    oracle = RampOracle(kp2d)
    module.model = oracle  # type: ignore[assignment]
    labels, Ks = torch.zeros(3, dtype=torch.long), torch.from_numpy(np.stack([K, K, K]))
    est = module.predict_poses(ramp_images(3).float(), labels, Ks)
    assert oracle.batch_sizes == [3, 1]
    assert est.detected.tolist() == [True, True, False]
    for i in range(2):
        np.testing.assert_allclose(est.R[i], R_GT, atol=1e-3)
        np.testing.assert_allclose(est.t[i], t_gt[i], rtol=1e-3)
    oracle.batch_sizes.clear()
    module.hparams["zoom_size"] = None
    module.predict_poses(ramp_images(3).float(), labels, Ks)
    assert oracle.batch_sizes == [3]
    for bad in ({"zoom_size": 0.0}, {"max_zoom": 0.5}):
        with pytest.raises(ValueError, match="zoom"):
            PoseModule([KP3D.tolist()], **bad)  # type: ignore[arg-type]
