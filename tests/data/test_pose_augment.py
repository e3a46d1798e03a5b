"""The training warp moves keypoints and masks with the image content."""

from __future__ import annotations

import numpy as np

from lightning_modules.data.pose_augment import PoseAugment


def blob_sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = np.zeros((64, 96, 3), dtype=np.uint8)
    rgb[19:22, 39:42] = 255
    masks = np.zeros((1, 64, 96), dtype=bool)
    masks[0, 19:22, 39:42] = True
    keypoints = np.tile(np.array([40.0, 20.0], dtype=np.float32), (1, 9, 1))
    return rgb, keypoints, masks


def test_keypoints_and_masks_follow_the_warped_image() -> None:
    rgb, keypoints, masks = blob_sample()
    aug = PoseAugment(max_rotation=40.0, scale_range=(0.8, 1.25), max_shift=0.1, colour=0.0)
    for seed in range(5):
        out, kp, msk = aug(rgb, keypoints, masks, np.random.default_rng(seed))
        assert out.shape == rgb.shape and msk.shape == masks.shape and kp.shape == keypoints.shape
        bright = np.argwhere(out[..., 0] > 128)  # (row, col)
        centre = bright.mean(0)[::-1]  # (x, y)
        assert np.abs(centre - kp[0, 0]).max() < 1.0
        col, row = np.rint(kp[0, 0]).astype(int)
        assert msk[0, row, col]
        assert not np.allclose(kp, keypoints)  # it did move


def test_no_op_settings_return_the_input() -> None:
    rgb, keypoints, masks = blob_sample()
    aug = PoseAugment(max_rotation=0.0, scale_range=(1.0, 1.0), max_shift=0.0, colour=0.0)
    out, kp, msk = aug(rgb, keypoints, masks, np.random.default_rng(0))
    np.testing.assert_array_equal(out, rgb)
    np.testing.assert_allclose(kp, keypoints, atol=1e-5)
    np.testing.assert_array_equal(msk, masks)
