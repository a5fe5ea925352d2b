"""Which input space an imported set's images are in, and bringing them into the study's space.

Three spaces are told apart: ``pixels`` ([0, 1]-scale), ``normalized`` (per-channel mean/std of the study's
data) and ``zca`` (normalized, then ZCA-whitened). A file rarely says which one it holds, and using a set in the
wrong one is the field's most common evaluation bug, so every imported set is compared with the real training
data in each space (:func:`guess_space`).

The heuristic. Pixel and normalized images differ by a per-channel affine map, ZCA images also by their
spatial structure. Distilled images legitimately leave the real range (the analysis paper: pixels outside
[0, 1]; ddprobe's MTT on digits spreads 4.5 times wider than the real data), but they keep roughly the real
data's per-channel mean and their neighbouring pixels stay as correlated as the space makes them. For the set
and for the real training data in each space ``k`` the check measures, per channel ``c``, the mean ``m_c`` and
standard deviation ``s_c``, and the correlation ``rho`` of horizontally and vertically adjacent pixels. The
set's distance to space ``k`` is::

    d_k = mean_c |m_c - mu_kc| / sigma_kc  +  mean_c spread(s_c / sigma_kc)  +  2 |rho - rho_k|

(offset of the mean in real standard deviations; spread ratio on a log scale, ``ln(1/r)`` when narrower and
``0.35 ln r`` when wider, since distillation commonly adds contrast; structure). The space with the
smallest distance is the one the set "looks like". Against the space it is assumed to be in (``d_assumed``):

- ``refuse`` when another space is closer by at least ``REFUSE_MARGIN`` (1.0) and ``d_assumed`` is at least
  ``REFUSE_MIN`` (1.0): the set is clearly elsewhere;
- ``warn`` when another space is closer by at least ``WARN_MARGIN`` (0.6);
- ``ok`` otherwise.

Calibration (docs/importing.md has the table): every set the built-in distillers make on digits (one and ten
images per class, normalized and ZCA studies) is taken as what it is, without a warning; the same sets converted
into another space are refused when they spread about as widely as the real data, warned about when somewhat
wider, and a set several times wider (MTT's) is as plausible in either space and passes: the rule prefers
silence to a false refusal. The ZCA candidate of a study without ZCA comes from a ZCA fitted on at most 2000
training images, only for images of at most 1024 values (digits, MNIST): fitting one for CIFAR-size images
takes about 40 s on one core, so there a ZCA-space set in a study without ZCA is caught by its files (MTT
``--zca`` runs) and not by its statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DataMismatchError

if TYPE_CHECKING:
    import torch

    from .data import DistilledSet, RealData

SPACES = ("pixels", "normalized", "zca")
DECLARED = ("pixels", "normalized", "zca")  # values of [distilled.NAME] input_space that declare a space
GROW_WEIGHT = 0.35
RHO_WEIGHT = 2.0
REFUSE_MARGIN = 1.0
REFUSE_MIN = 1.0
WARN_MARGIN = 0.6
MAX_REAL = 2000  # real training images the reference statistics use
ZCA_FIT_IMAGES = 2000
ZCA_MAX_DIM = 1024  # fitting one for CIFAR-size images (3072 values) takes ~40 s on a core


@dataclass
class Stats:
    mean: list[float]
    std: list[float]
    rho: float

    def distance(self, ref: Stats) -> float:
        n = len(self.mean)
        offset = sum(abs(m - r) / max(s, 1e-8) for m, r, s in zip(self.mean, ref.mean, ref.std, strict=True)) / n
        logs = [math.log(max(s, 1e-12) / max(r, 1e-12)) for s, r in zip(self.std, ref.std, strict=True)]
        spread = sum(GROW_WEIGHT * v if v > 0 else -v for v in logs) / n
        return offset + spread + RHO_WEIGHT * abs(self.rho - ref.rho)


def stats(images: torch.Tensor) -> Stats:
    """Per-channel mean and std, and the correlation of adjacent pixels (channels pooled)."""
    x = images.detach().float()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)) if x.numel() > x.shape[1] else x.new_zeros(x.shape[1])
    xc = x - mean.view(1, -1, 1, 1)
    var = xc.pow(2).mean()
    pairs = []
    if x.shape[3] > 1:
        pairs.append((xc[..., :, 1:] * xc[..., :, :-1]).mean())
    if x.shape[2] > 1:
        pairs.append((xc[..., 1:, :] * xc[..., :-1, :]).mean())
    rho = float(sum(pairs) / len(pairs) / var) if pairs and float(var) > 0 else 0.0
    return Stats([float(v) for v in mean], [float(v) for v in std], rho)


def study_kind(real: RealData) -> str:
    return "zca" if real.space.zca else "normalized"


def reference_stats(real: RealData) -> dict[str, Stats]:
    """Statistics of (a subsample of) the real training images in each space; cached on ``real.meta``."""
    import torch

    cached = real.meta.get("space_stats")
    if cached is not None:
        return cached
    x = real.train.images
    if len(x) > MAX_REAL:
        x = x[torch.linspace(0, len(x) - 1, MAX_REAL).long()]
    x = x.float().cpu()
    pixels = real.to_pixels(x)
    mean = torch.tensor(real.space.mean).view(1, -1, 1, 1)
    std = torch.tensor(real.space.std).view(1, -1, 1, 1)
    normalized = (pixels - mean) / std
    out = {"pixels": stats(pixels), "normalized": stats(normalized)}
    if real.space.zca:
        out["zca"] = stats(x)
    elif normalized[0].numel() <= ZCA_MAX_DIM:
        from .zca import ZCA

        fit = normalized[torch.linspace(0, len(normalized) - 1, min(len(normalized), ZCA_FIT_IMAGES)).long()]
        out["zca"] = stats(ZCA.fit(fit).whiten(normalized))
    real.meta["space_stats"] = out
    return out


@dataclass
class SpaceGuess:
    """What :func:`guess_space` concludes about a set assumed to be in ``assumed``."""

    assumed: str
    looks_like: str
    distances: dict[str, float]
    verdict: str  # ok | warn | refuse
    margin: float = 0.0  # d_assumed - d_closest
    stats: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.distances.items(), key=lambda kv: kv[1]))
        return f"distance to each space's real data: {shown}"


def guess_space(images: torch.Tensor, real: RealData, assumed: str | None = None) -> SpaceGuess:
    """Compare ``images`` with the real data in each space; ``assumed`` defaults to the study's space."""
    assumed = assumed or study_kind(real)
    refs = reference_stats(real)
    own = stats(images)
    distances = {k: own.distance(ref) for k, ref in refs.items() if len(ref.mean) == len(own.mean)}
    if not distances or min(own.std) <= 1e-6 or not all(math.isfinite(d) for d in distances.values()):
        return SpaceGuess(assumed, assumed, distances, "ok")  # constant or non-finite images: nothing to tell
    looks = min(distances, key=distances.__getitem__)
    d_assumed = distances.get(assumed, float("inf"))
    margin = d_assumed - distances[looks]
    if looks != assumed and margin >= REFUSE_MARGIN and d_assumed >= REFUSE_MIN:
        verdict = "refuse"
    elif looks != assumed and margin >= WARN_MARGIN:
        verdict = "warn"
    else:
        verdict = "ok"
    return SpaceGuess(assumed, looks, distances, verdict, margin,
                      {"mean": own.mean, "std": own.std, "rho": own.rho})


# -- bringing an imported set into the study's space --------------------------------------------------------------

def _declare_hint(name: str, space: str) -> str:
    return f'input_space = "{space}" in [distilled.{name}]'


def convert(images: torch.Tensor, space: str, real: RealData, where: str) -> torch.Tensor:
    """Map images held in ``space`` into the study's space."""
    kind = study_kind(real)
    if space == kind:
        return images
    if space == "pixels":
        return real.from_pixels(images)
    if space == "normalized":  # the study is ZCA: whiten with its transform
        return real.meta["whiten"](images)
    raise DataMismatchError(
        f"{where}: its images are ZCA-whitened but the study's data is not (zca = false in [data]); a ZCA-space "
        "set can only be used in a study with zca = true, or from pixels (input_space = \"pixels\")")


def adopt(ds: DistilledSet, real: RealData, name: str, declared: str = "study", where: str = "") -> list[str]:
    """Check and bring an imported set into the study's space; return warnings. Raises DataMismatchError when the
    set is clearly in another space than the one it is taken to be in.

    ``declared`` is the spec's ``input_space``: ``study`` (not declared: the file is taken to be in the study's
    space, or in the space its format says, ``manifest.file_space``) or a declared space (pixels, normalized,
    zca), which is trusted and only warned about.
    """
    m = ds.manifest
    where = where or repr(name)
    kind = study_kind(real)
    warnings: list[str] = []
    known = m.file_space
    if declared in DECLARED and known and known != declared:
        raise DataMismatchError(
            f"distilled set {where}: declared {_declare_hint(name, declared)} but {m.importer or 'its importer'} "
            f"reads {m.source_file} as {known}-space images{_why_known(ds)}")
    space = declared if declared in DECLARED else (known or kind)
    trained = m.distilled_space
    if declared not in DECLARED and trained and trained in ("normalized", "zca") and trained != kind:
        raise DataMismatchError(
            f"distilled set {where}: it was distilled in {trained} space{_why_known(ds)}, but the study's data is "
            f"{kind} (zca = {str(real.space.zca).lower()} in [data]). Set zca = {str(trained == 'zca').lower()} "
            f"in [data] to evaluate it in the space it was made for"
            + (f", or declare {_declare_hint(name, space)} to use it in the study's space anyway"
               if space != trained else ""))
    guess = guess_space(ds.images, real, assumed=space)
    m.space_check = {"assumed": space, "declared": declared in DECLARED, "looks_like": guess.looks_like,
                     "verdict": guess.verdict,
                     "distances": {k: round(v, 3) for k, v in guess.distances.items()}}
    if guess.verdict != "ok":
        if declared in DECLARED:
            source = f"declared {_declare_hint(name, declared)}"
        elif known:
            source = f"{known} by its format{_why_known(ds)}"
        else:
            source = f"assumed to be in the study's {kind} space (no input_space declared)"
        text = (f"distilled set {where} looks like {guess.looks_like}-space images, not {space} ({source}); "
                f"{guess.describe()}")
        if guess.verdict == "refuse" and declared not in DECLARED and not known:
            other = ("set zca = true in [data] (a ZCA-space set needs a ZCA study)"
                     if guess.looks_like == "zca" and kind != "zca" else
                     f"declare {_declare_hint(name, guess.looks_like)}")
            raise DataMismatchError(
                f"{text}. If it really is in {space} space, declare {_declare_hint(name, space)}; if it holds "
                f"{guess.looks_like} images, {other}")
        warnings.append(text + ("" if declared in DECLARED or known else
                                f"; declare {_declare_hint(name, guess.looks_like)} if that is what it holds, "
                                f"or {_declare_hint(name, space)} to silence this"))
    if space == "zca" and kind == "zca" and m.importer == "mtt":
        warnings.append(f"distilled set {where}: MTT's ZCA (kornia, on [0, 1] pixels) is not the study's ZCA "
                        "(on normalized pixels) and no images_zca_<it>.pt reconstruction was found for this "
                        "iteration; the set is used as it is")
    ds.images = convert(ds.images, space, real, f"distilled set {where}")
    if space != kind:
        m.sha256 = None
        m.input_space = None  # converted: the study stamps its own space
        ds.__post_init__()
    m.file_space = kind  # what the images are in now
    _map_class_folders(ds, real)
    return warnings


def _why_known(ds: DistilledSet) -> str:
    m = ds.manifest
    if m.importer == "mtt" and (m.distilled_space == "zca" or m.file_space):
        return " (an mtt-distillation run made with --zca: images_zca_*.pt are in its folder)"
    if m.importer == "class-folders":
        return " (image files hold [0, 1] pixels)"
    if m.importer == "ddprobe":
        return " (its ddprobe manifest says so)"
    return ""


def _map_class_folders(ds: DistilledSet, real: RealData) -> None:
    """Class folders named like the dataset's classes take the dataset's class indices."""
    folders = getattr(ds.manifest, "class_folders", None)
    if not folders or ds.soft or not set(folders) <= set(real.classes) or list(folders) == real.classes:
        return
    import torch

    index = torch.tensor([real.classes.index(f) for f in folders])
    ds.labels = index[ds.labels]
    ds.manifest.sha256 = None
    ds.__post_init__()
