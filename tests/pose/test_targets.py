"""Dense targets: cells inside the visible mask of an object of the right size become its positives."""

from __future__ import annotations

import torch

from lightning_modules.pose.loss import focal_loss, pose_loss
from lightning_modules.pose.model import cell_grid
from lightning_modules.pose.targets import encode_targets

STRIDES = (8, 16, 32)


def square_instance(x0: int, y0: int, size: int, hw: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(hw, hw, dtype=torch.bool)
    mask[y0 : y0 + size, x0 : x0 + size] = True
    corners = torch.tensor(
        [[x0, y0], [x0 + size, y0], [x0, y0 + size], [x0 + size, y0 + size]], dtype=torch.float32
    )
    kp = torch.cat([corners, corners, torch.tensor([[x0 + size / 2, y0 + size / 2]])])
    return kp, mask


def test_positives_are_the_cells_inside_the_mask_at_the_assigned_levels() -> None:
    kp, mask = square_instance(16, 32, 40)  # size 40 px: stride 8 (<= 80) and 16 (<= 160), not 32
    targets = encode_targets(kp[None, None], torch.tensor([[1]]), mask[None, None], STRIDES, (2.0, 10.0))
    centres, strides = cell_grid((128, 128), STRIDES)
    s = strides[:, None]
    sampled = (centres - (s - 1) / 2 + s // 2).long()  # the pixel j * s + s // 2 of each cell
    inside = mask[sampled[:, 1].clamp(max=127), sampled[:, 0].clamp(max=127)]
    expected = inside & (strides < 32)
    assert torch.equal(targets.positive[0], expected)
    assert expected.sum() > 20
    assert torch.all(targets.labels[0][expected] == 1) and torch.all(targets.labels[0][~expected] == -1)
    assert torch.allclose(targets.keypoints[0][expected], kp.expand(int(expected.sum()), 9, 2))
    assert torch.allclose(targets.size[0][expected], torch.tensor(40.0))


def test_tiny_object_gets_the_cell_of_its_centre_and_padding_is_ignored() -> None:
    kp1, mask1 = square_instance(50, 60, 3)  # covers no cell centre
    kp2, mask2 = square_instance(0, 0, 0)
    targets = encode_targets(
        torch.stack([kp1, kp2])[None], torch.tensor([[0, -1]]), torch.stack([mask1, mask2])[None], STRIDES
    )
    pos = torch.nonzero(targets.positive[0])[:, 0]
    assert pos.tolist() == [(61 // 8) * 16 + 51 // 8]  # finest level, row 7, column 6
    assert targets.labels[0, pos].tolist() == [0]


def test_fully_hidden_object_gets_no_cell() -> None:
    """Its projected centre shows the occluder: labelling that cell with its class would teach a mistake."""
    kp1, mask1 = square_instance(50, 60, 24)
    kp2, _ = square_instance(10, 10, 24)
    hidden = torch.zeros_like(mask1)  # visib_fract 0: fully occluded (by clutter) or out of the frame
    targets = encode_targets(
        torch.stack([kp1, kp2])[None], torch.tensor([[0, 1]]), torch.stack([mask1, hidden])[None], STRIDES
    )
    assert targets.positive[0].any() and not (targets.labels[0] == 1).any()


def test_loss_is_zero_for_perfect_keypoints_and_grows_with_error() -> None:
    kp, mask = square_instance(30, 30, 48)
    targets = encode_targets(kp[None, None], torch.tensor([[0]]), mask[None, None], STRIDES)
    centres, strides = cell_grid((128, 128), STRIDES)
    perfect = (kp[None, None] - centres[None, :, None]) / strides[None, :, None, None]
    logits = torch.where(targets.positive[..., None], 20.0, -20.0).expand(1, -1, 2).clone()
    logits[..., 1] = -20.0
    exact = pose_loss(logits, perfect, targets, centres, strides)
    assert exact["loss"] < 1e-6
    shifted = pose_loss(logits, perfect + 0.5, targets, centres, strides)
    assert shifted["kpt_loss"] > 0.01 and shifted["cls_loss"] < 1e-6


def test_an_object_s_size_is_its_longer_side_and_the_coarsest_level_takes_any_size() -> None:
    """A 100 x 24 px object is 100 px: with scale range (1, 2) only stride 32 (from 32 px, no upper bound)
    takes it; its shorter side would have put it at stride 16."""
    mask = torch.zeros(128, 128, dtype=torch.bool)
    mask[40:64, 10:110] = True
    corners = torch.tensor([[10, 40], [110, 40], [10, 64], [110, 64]], dtype=torch.float32)
    kp = torch.cat([corners, corners, torch.tensor([[60.0, 52.0]])])
    targets = encode_targets(kp[None, None], torch.tensor([[0]]), mask[None, None], STRIDES, (1.0, 2.0))
    _, strides = cell_grid((128, 128), STRIDES)
    assert targets.positive[0].any()
    assert torch.all(strides[targets.positive[0]] == 32)
    assert torch.allclose(targets.size[0][targets.positive[0]], torch.tensor(100.0))


def test_focal_loss_by_hand() -> None:
    """alpha 0.25 on positives, 0.75 on negatives; (1 - p_t)^2 down-weights the easy ones."""
    logits = torch.tensor([0.0, 1.0, 1.0])
    targets = torch.tensor([1.0, 1.0, 0.0])
    p = torch.sigmoid(torch.tensor(1.0))
    expected = torch.stack(
        [
            0.25 * torch.log(torch.tensor(2.0)) * 0.5**2,  # p = 0.5
            0.25 * -torch.log(p) * (1 - p) ** 2,  # a positive at p = 0.73
            0.75 * -torch.log(1 - p) * p**2,  # a negative at p = 0.73
        ]
    )
    assert torch.allclose(focal_loss(logits, targets), expected)


def test_keypoint_errors_are_relative_to_the_object_size() -> None:
    """The same error as a fraction of the size costs the same for a small and a large object."""
    centres, strides = cell_grid((128, 128), STRIDES)
    losses = []
    for size in (24, 48):
        kp, mask = square_instance(30, 30, size)
        targets = encode_targets(kp[None, None], torch.tensor([[0]]), mask[None, None], STRIDES)
        perfect = (kp[None, None] - centres[None, :, None]) / strides[None, :, None, None]
        error = 0.25 * size / strides[None, :, None, None]  # a quarter of the size, in stride units
        logits = torch.where(targets.positive[..., None], 20.0, -20.0)
        losses.append(pose_loss(logits, perfect + error, targets, centres, strides)["kpt_loss"])
    assert losses[0] > 0.1
    assert torch.allclose(losses[0], losses[1])
