import math

import pytest
import torch

from centerexp.losses import CenterLoss

FEATURES = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 0.0], [2.0, 2.0], [-1.0, 4.0]])
LABELS = torch.tensor([0, 1, 0, 2, 0])
CENTERS = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
# By hand: squared distances to own center: [1, 2, 2, 5, 13]; class counts n = [3, 1, 1] -> per sample [3, 1, 3, 1, 3].
SQ = [1.0, 2.0, 2.0, 5.0, 13.0]
N = [3.0, 1.0, 3.0, 1.0, 3.0]


def make(distance, normalized, lamda=1.0):
    loss = CenterLoss(3, 2, distance=distance, lamda=lamda, count_normalized=normalized)
    with torch.no_grad():
        loss.centers.copy_(CENTERS)
    return loss


@pytest.mark.parametrize("distance", ["squared", "sqrt"])
@pytest.mark.parametrize("normalized", [True, False])
def test_value_matches_hand_computation(distance, normalized):
    d = SQ if distance == "squared" else [math.sqrt(v) for v in SQ]
    per = [di / ni for di, ni in zip(d, N)] if normalized else d
    expected = 0.7 / 2 * sum(per) / len(per)
    got = make(distance, normalized, lamda=0.7)(FEATURES, LABELS)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("distance", ["squared", "sqrt"])
@pytest.mark.parametrize("normalized", [True, False])
def test_gradients_match_hand_computation(distance, normalized):
    loss = make(distance, normalized)
    x = FEATURES.clone().requires_grad_(True)
    loss(x, LABELS).backward()
    diff = FEATURES - CENTERS[LABELS]
    norm = diff.norm(dim=1, keepdim=True)
    # d/dx of 1/2 ||x - c||^2 is (x - c); of 1/2 ||x - c|| it is (x - c) / (2 ||x - c||).
    per_sample = diff if distance == "squared" else diff / (2 * norm)
    weight = torch.tensor(N).unsqueeze(1) if normalized else torch.ones(5, 1)
    expected_x = per_sample / weight / 5
    torch.testing.assert_close(x.grad, expected_x)
    expected_c = torch.zeros(3, 2).index_add_(0, LABELS, -expected_x)  # the center gets minus the pull
    torch.testing.assert_close(loss.centers.grad, expected_c)


def test_sqrt_gradient_is_finite_where_feature_equals_center():
    loss = make("sqrt", True)
    x = CENTERS[LABELS].clone().requires_grad_(True)  # every feature sits on its center
    value = loss(x, LABELS)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss.centers.grad).all()
    assert (x.grad == 0).all()


def test_ema_update_matches_wen_et_al_eq4():
    loss = make("squared", False)
    alpha = 0.3
    expected = CENTERS.clone()
    for j in range(3):
        mask = j == LABELS
        delta = (CENTERS[j] - FEATURES[mask]).sum(0) / (1 + mask.sum())
        expected[j] = CENTERS[j] - alpha * delta
    loss.update_centers(FEATURES, LABELS, alpha)
    torch.testing.assert_close(loss.centers.data, expected)


def test_ema_leaves_classes_absent_from_the_batch_alone():
    loss = CenterLoss(4, 2)
    before = loss.centers.detach().clone()
    loss.update_centers(FEATURES, LABELS, 0.5)  # no label 3 in the batch
    torch.testing.assert_close(loss.centers.data[3], before[3])
    assert not torch.equal(loss.centers.data[:3], before[:3])


def test_centers_are_seeded_and_shaped():
    a = CenterLoss(10, 2, generator=torch.Generator().manual_seed(5))
    b = CenterLoss(10, 2, generator=torch.Generator().manual_seed(5))
    assert a.centers.shape == (10, 2)
    assert torch.equal(a.centers, b.centers)


def test_center_loss_is_fp32_under_bf16_autocast():
    loss = make("squared", True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(FEATURES.bfloat16(), LABELS)
    assert value.dtype == torch.float32


def test_unknown_distance_is_rejected():
    with pytest.raises(ValueError, match="distance"):
        CenterLoss(10, 2, distance="cosine")
