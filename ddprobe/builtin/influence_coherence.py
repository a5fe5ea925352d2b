"""Are a distilled image's most-influenced real test images coherent? (paper Fig. 10, A.9; issue 14 finding g)

Two statistics per initialization, each averaged over the set's distilled images, with the top-k of each image's
row of that initialization's exact leave-one-out influence matrix (most helped test images):

* **label**: the share of the top-k carrying the image's label minus the share expected by chance (the label's
  frequency among the test images). Only images whose class has at least two images in the set count: removing
  the only image of a class removes the class, so its top-k are that class's test images trivially.
* **features**: the mean pairwise cosine similarity of the top-k test images in a real-trained model's penultimate
  feature space (centred on the test set's mean feature) minus the same similarity expected for random test images
  with the same labels (computed exactly from per-class feature sums, no sampling). Positive: the images an image
  helps most are alike beyond their label (the paper saw shared colour, background and pose).

Under the null (top-k unrelated to the images beyond their labels) both are 0 in expectation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..findings import Finding, FindingSpec

if TYPE_CHECKING:
    import torch

LABEL = FindingSpec(
    id="influence_label",
    claim="a distilled image's most-influenced real test images share its label more often than chance",
    statistic="share of the top-k most helped test images with the image's label minus that label's test "
              "frequency, averaged over images whose class keeps another image when it is removed",
    unit_of_n="initializations", threshold=0.0, direction="greater", paper="Fig. 10 (A.9)")
FEATURES = FindingSpec(
    id="influence_features",
    claim="a distilled image's most-influenced real test images are alike beyond their label",
    statistic="mean pairwise cosine similarity of the top-k most helped test images in a real-trained model's "
              "feature space minus that of random test images with the same labels, averaged over images",
    unit_of_n="initializations", threshold=0.0, direction="greater", paper="Fig. 10 (A.9)")


def unit_features(feats: torch.Tensor) -> torch.Tensor:
    """Features centred on their mean and scaled to unit length (rows of zero length stay zero)."""
    f = feats.double() - feats.double().mean(0, keepdim=True)
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def class_pair_similarity(units: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C[c, d]``: the mean cosine similarity of two distinct test images drawn from classes c and d."""
    import torch

    onehot = torch.nn.functional.one_hot(labels, num_classes).double()  # [m, K]
    sums = onehot.T @ units  # [K, d]
    counts = onehot.sum(0)
    sq = onehot.T @ units.pow(2).sum(1)  # per class: sum of squared norms
    pair = sums @ sums.T  # sum over all (a, b) pairs, a == b included on the diagonal
    denom = counts[:, None] * counts[None, :]
    diag = counts * (counts - 1)
    pair = pair.clone()
    pair.diagonal().sub_(sq)
    denom.diagonal().copy_(diag)
    return torch.where(denom > 0, pair / denom.clamp_min(1), torch.full_like(pair, float("nan")))


def coherence(influence: torch.Tensor, k: int, set_labels: torch.Tensor, test_labels: torch.Tensor,
              units: torch.Tensor | None, num_classes: int) -> dict[str, Any]:
    """Both statistics for one influence matrix ``[set images, test images]`` (positive: the image helps); the
    feature one needs the test images' :func:`unit_features` (``units``) and k >= 2."""
    import torch

    k = min(k, influence.shape[1])
    top = influence.topk(k, dim=1).indices  # [n, k]
    freq = torch.bincount(test_labels, minlength=num_classes).double() / len(test_labels)
    per_class = torch.bincount(set_labels, minlength=num_classes)
    keeps = per_class[set_labels] >= 2  # removing the image leaves its class in the set
    share = (test_labels[top] == set_labels[:, None]).double().mean(1)
    label = float((share - freq[set_labels])[keeps].mean()) if bool(keeps.any()) else None
    features = None
    if k >= 2 and units is not None:
        sim_c = class_pair_similarity(units, test_labels, num_classes)
        u = units[top]  # [n, k, d]
        gram = u @ u.transpose(1, 2)
        off = ~torch.eye(k, dtype=torch.bool)
        within = gram[:, off].mean(1)
        lab = test_labels[top]
        expected = sim_c[lab[:, :, None], lab[:, None, :]][:, off].mean(1)
        features = float((within - expected).mean())
    return {"label": label, "label_share": float(share.mean()), "label_chance": float(freq[set_labels].mean()),
            "label_images": int(keeps.sum()), "features": features}


def judge(set_name: str, probe: str, per_init: list[dict[str, Any]], k: int, *, control: bool = False,
          no_features: str | None = None) -> list[Finding]:
    """The two findings of one set from its per-initialization :func:`coherence` results; ``no_features`` says
    why there is no feature space, when there is none."""
    findings = []
    labels = [c["label"] for c in per_init if c["label"] is not None]
    reason = None
    if per_init and not labels:
        reason = ("every class has one image in the set: removing an image removes its class, so its top-k share "
                  "its label trivially; see influence_features")
    findings.append(LABEL.judge_runs(set_name, probe, labels, reason=reason, control=control, details={
        "k": k, "share": _mean([c["label_share"] for c in per_init]),
        "chance": _mean([c["label_chance"] for c in per_init]),
        "images": per_init[0]["label_images"] if per_init else 0}))
    feats = [c["features"] for c in per_init if c["features"] is not None]
    reason = no_features
    if per_init and not feats and reason is None:
        reason = "k = 1: one most-influenced image has no pairs to compare"
    findings.append(FEATURES.judge_runs(set_name, probe, feats, reason=reason, control=control,
                                        details={"k": k, "feature_space": "real-trained model, penultimate layer"}))
    return findings


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
