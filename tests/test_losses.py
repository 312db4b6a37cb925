import math

import pytest
import torch

from centerexp.training.losses import CenterLoss

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


# --- dtype: the loss computes in its parameters' dtype; only half precisions are upcast ----------


@pytest.mark.parametrize("distance", ["squared", "sqrt"])
def test_float64_loss_and_gradcheck(distance):
    loss = make(distance, True).double()
    x = (FEATURES.double() + 0.25).requires_grad_(True)  # away from the centers: sqrt is smooth there
    value = loss(x, LABELS)
    assert value.dtype == torch.float64
    assert torch.autograd.gradcheck(
        lambda f, c: _with_centers(loss, c)(f, LABELS), (x, loss.centers.detach().clone().requires_grad_(True))
    )


def _with_centers(loss, centers):
    """The loss as a function of features and centers (gradcheck needs both as inputs)."""

    def f(features, labels):
        saved = loss.centers
        loss._parameters["centers"] = centers
        try:
            return loss(features, labels)
        finally:
            loss._parameters["centers"] = saved

    return f


def test_half_precision_features_are_upcast_to_fp32():
    loss = make("squared", True)
    value = loss(FEATURES.bfloat16(), LABELS)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(FEATURES, LABELS).item(), rel=1e-2)


# --- the auxiliary-loss seam: the trainer needs nothing center-specific -------------------------


def test_a_new_auxiliary_loss_is_a_class_and_a_config_choice(tmp_path, monkeypatch):
    """A test double without centers or trainable parameters trains end to end, with plots, and the
    trainer calls its after_step hook once per optimizer step with that step's features and labels."""
    from centerexp import config
    from centerexp.rundir.records import read_metrics
    from centerexp.training import losses
    from centerexp.training.train import start_run

    from .conftest import write_config

    made = []

    class FeatureNorm(losses.AuxiliaryLoss):  # pulls every feature towards the origin
        def __init__(self, cfg, num_classes, feat_dim):
            super().__init__()
            self.lamda, self.after_step_calls = cfg.lamda, []
            made.append(self)

        def forward(self, features, labels):
            return self.lamda * features.float().pow(2).sum(1).mean()

        def after_step(self, features, labels):
            self.after_step_calls.append((tuple(features.shape), tuple(labels.shape), features.requires_grad))

    monkeypatch.setitem(losses.AUX_LOSSES, "feature_norm", FeatureNorm)
    monkeypatch.setitem(config.CHOICES, "loss.kind", ("center", "feature_norm"))
    cfg = write_config(
        tmp_path / "fn.yaml",
        loss={"kind": "feature_norm", "lamda": 0.01},
        train={"epochs": 2, "batch_size": 64, "precision": "fp32"},
        data={"train_subset": 256, "test_subset": 128},
        plot={"gif": False},
    )
    run, summary = start_run(cfg, [], tmp_path / "runs", progress=False)
    rows = read_metrics(run / "metrics.csv")
    assert summary["status"] == "completed" and len(rows) == 2
    assert float(rows[0]["train_center"]) > 0 and rows[0]["center_lag"] == "nan"  # no centers to trail
    assert float(rows[0]["compactness_ratio"]) > 0  # measured against class means, centers or not
    assert (run / "plots" / "features.png").is_file()
    # after_step once per step (2 epochs x 4 batches of 64), with the step's detached features
    # (64 x feat_dim 2) and labels
    assert int(rows[-1]["step"]) == 8
    assert [call for loss in made for call in loss.after_step_calls] == [((64, 2), (64,), False)] * 8


# --- compactness (rundir/measures.py): the feature columns of a metrics row -----------------------


def test_compactness_matches_hand_computation():
    """Three classes, labelled 0, 1 and 5 (a tiny test subset may lack digits), in 2-D:
    class 0 at (-1, 0), (1, 0): mean (0, 0), distances 1, 1;
    class 1 at (3, 1), (3, -1): mean (3, 0), distances 1, 1;
    class 5 at (0, 6), (0, 2), (0, 4): mean (0, 4), distances 2, 2, 0.
    intra = mean distance to the own class mean = 8 / 7. The means form a 3-4-5 triangle: inter =
    mean distance between two different class means = (3 + 4 + 5) / 3 = 4. ratio = (8 / 7) / 4 = 2 / 7.
    Centers at (3, 4), (3, 0), (0, 2) for digits 0, 1, 5 lie 5, 0 and 2 from the means: center_lag = 7 / 3."""
    from centerexp.rundir.measures import compactness

    features = torch.tensor([[3.0, 1.0], [-1.0, 0.0], [0.0, 6.0], [3.0, -1.0], [0.0, 2.0], [1.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([1, 0, 5, 1, 5, 0, 5])
    centers = torch.full((10, 2), 99.0)  # digits that are absent must not count
    centers[0], centers[1], centers[5] = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0]), torch.tensor([0.0, 2.0])
    got = compactness(features, labels, centers)
    expected = {"intra_class": 8 / 7, "inter_class": 4.0, "compactness_ratio": 2 / 7, "center_lag": 7 / 3}
    assert got == pytest.approx(expected, rel=1e-6)
    assert math.isnan(compactness(features, labels, None)["center_lag"])  # a loss without centers
    one_class = compactness(features[labels == 5], labels[labels == 5], None)
    assert one_class["intra_class"] == pytest.approx(4 / 3)
    assert math.isnan(one_class["inter_class"]) and math.isnan(one_class["compactness_ratio"])
