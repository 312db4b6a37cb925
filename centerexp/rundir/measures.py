"""The feature columns of a metrics row, computed from test features (the trainer's evaluation, and
compare for runs of an older format that kept their features in features.pt)."""

import torch


def compactness(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor | None) -> dict:
    """How tight and how separated the classes of the test features are, measured against their own
    class means: what the features are, whatever the learned centers do. The centers lag behind the
    features (and do not move at all with lamda = 0), so their distance to the class means is a
    column of its own, ``center_lag`` (NaN for a loss without centers). Full feature dimension."""
    classes = labels.unique()  # sorted; a tiny test subset may lack a digit
    means = torch.stack([features[labels == c].mean(0) for c in classes])
    intra = (features - means[torch.searchsorted(classes, labels)]).norm(dim=1).mean().item()
    k = len(classes)
    inter = (torch.cdist(means, means).sum() / (k * (k - 1))).item() if k > 1 else float("nan")
    lag = float("nan") if centers is None else (centers[classes] - means).norm(dim=1).mean().item()
    ratio = intra / inter if inter > 0 else float("nan")
    return {"intra_class": intra, "inter_class": inter, "compactness_ratio": ratio, "center_lag": lag}
