"""1:1 face verification, exactly insightface's ``arcface_torch/eval/verification.py`` protocol, in numpy.

The API (pure numpy, no sklearn/scipy/mxnet)::

    fuse_flips(original, flipped) -> np.ndarray      # raw(original) + raw(flip), L2-normalised (float64)
    verify(embeddings, issame, xnorm=None) -> VerificationResult
    evaluate_raw(original, flipped, issame) -> VerificationResult   # fuse_flips + XNorm + verify
    average_accuracy(results) -> float                # mean accuracy over eval sets (the five-set average)

``embeddings`` are the fused unit embeddings of the 2N images of an eval set in file order: pair k is
rows 2k and 2k+1. The protocol, as insightface runs it:

- distance = squared Euclidean distance of the two unit embeddings (0..4; cosine = 1 - d/2);
- 10 contiguous folds in file order (sklearn ``KFold(n_splits=10)`` without shuffle: the first
  N mod 10 folds hold one pair more);
- accuracy: thresholds ``np.arange(0, 4, 0.01)``; for each fold the FIRST threshold with the best
  accuracy on the other nine folds; a pair is "same" iff distance < threshold (strict); accuracy
  (TP + TN) / n on the held-out fold; mean and population std over the folds;
- VAL@FAR=1e-3: thresholds ``np.arange(0, 4, 0.001)``; on the other nine folds the threshold whose
  FAR is the target, interpolated linearly in (FAR, threshold); when no threshold reaches the
  target FAR the threshold is 0 (nothing accepted: VAL 0 on that fold); VAL and FAR on the held-out
  fold, mean (and std of VAL) over folds;
- XNorm: the mean L2 norm of the raw (unfused) embeddings of the images and of their flips.

Where insightface cannot run, we define the result (documented, tested):

- The FAR curve is a step function with repeated values (FAR is 0 for every threshold below the
  closest different-identity pair); insightface passes it to ``scipy.interpolate.interp1d(far,
  thresholds, kind="slinear")``, which scipy >= 1.11 refuses ("Expect x to not have duplicates").
  scipy < 1.9 (checked with 1.8.1; 1.9.3 refuses too) accepted it and evaluated a degree-1 B-spline on
  the repeated knots: the threshold is interpolated between the LAST threshold whose FAR <= target
  and the next one (whose FAR > target); in the one degenerate case (the target is the curve's
  maximum and that value repeats at the end) it returned 0. We compute exactly that, bit for bit,
  so results equal insightface's with the scipy it was written against.
- A fold with no same (or no different) pairs: insightface divides by zero; we count its VAL (FAR) as 0.

The threshold search is vectorised: each fold's distances are sorted once and ``searchsorted``
counts, for every threshold at once, the pairs with distance < threshold. Accuracy ties are
compared on integer counts, so "the first best threshold" is the one insightface's ``argmax`` picks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from facesynth.errors import FacesynthError, UserInputError

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
FAR_TARGET = 1e-3
FOLDS = 10
# The field's table (FIELD-NOTES 3): these five sets, in this order, and their mean.
FIVE_SETS = ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")


@dataclass(frozen=True)
class VerificationResult:
    """What insightface's ``test()`` reports for one eval set, plus the thresholds it used."""

    pairs: int
    accuracy: float  # mean over the folds, 0..1
    accuracy_std: float  # population std (np.std) over the folds
    threshold: float  # mean over the folds of the chosen squared-distance threshold
    threshold_cosine: float  # the same threshold as a cosine similarity: 1 - threshold / 2
    val: float  # VAL (true accept rate) at FAR = far_target, mean over folds
    val_std: float
    far: float  # the FAR actually reached on the held-out folds, mean
    xnorm: float | None  # mean norm of the raw embeddings (None when only fused ones were given)
    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]
    far_target: float = FAR_TARGET
    # The ROC of insightface's calculate_roc: per-threshold TPR/FPR on the held-out folds, mean over folds.
    tpr: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))
    fpr: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict:
        """JSON-ready numbers (the ROC arrays left out)."""
        out = asdict(self)
        del out["tpr"], out["fpr"]
        out["fold_accuracies"] = list(self.fold_accuracies)
        out["fold_thresholds"] = list(self.fold_thresholds)
        return out


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm in float64, as ``sklearn.preprocessing.normalize`` (zero rows kept)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    return x / norms[:, None]


def fuse_flips(original: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """raw(image) + raw(horizontal flip), then L2-normalised: insightface's "Accuracy-Flip" embeddings."""
    return l2_normalize(np.asarray(original, np.float64) + np.asarray(flipped, np.float64))


def xnorm(*raw: np.ndarray) -> float:
    """Mean L2 norm of all rows of the raw embeddings (insightface's XNorm over images and flips)."""
    norms = [np.sqrt(np.einsum("ij,ij->i", r, r, dtype=np.float64)) for r in (np.asarray(x) for x in raw)]
    return float(np.concatenate(norms).mean())


def fold_bounds(n: int, folds: int = FOLDS) -> list[tuple[int, int]]:
    """[start, stop) of each contiguous fold, as sklearn ``KFold(folds, shuffle=False)`` splits n pairs."""
    if n < folds:
        raise UserInputError(
            f"an eval set needs at least {folds} pairs for {folds}-fold verification, got {n}"
        )
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for stop, size in zip(stops, sizes, strict=True)]


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of pairs (rows 2k, 2k+1), float64, computed as insightface does."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    return np.sum(np.square(np.subtract(embeddings[0::2], embeddings[1::2])), 1)


def _counts_below(dist: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many distances are strictly below it."""
    return np.searchsorted(np.sort(dist), thresholds, side="left")


def _interpolate_threshold(far: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """Threshold at FAR = target on a non-decreasing FAR curve: ``interp1d(far, thresholds, "slinear")``
    as scipy < 1.9 evaluated it (a degree-1 B-spline on knots [far0, far..., far_last]), also on
    repeated FAR values (see the module docstring)."""
    # scipy's interval search: the last knot <= target, but never past the second-to-last point.
    j = min(int(np.searchsorted(far, target, side="right")) - 1, len(far) - 2)
    x0, x1 = far[j], far[j + 1]
    if x1 == x0:  # a zero-length last interval (the target is the curve's repeated maximum): scipy gave 0
        return 0.0
    # de Boor's recurrence for degree 1, in scipy's order of operations (bit-identical thresholds)
    w = 1.0 / (x1 - x0)
    return float(0.0 + thresholds[j] * (w * (x1 - target)) + thresholds[j + 1] * (w * (target - x0)))


def verify(
    embeddings: np.ndarray,
    issame: Sequence[bool] | np.ndarray,
    xnorm: float | None = None,
    folds: int = FOLDS,
    far_target: float = FAR_TARGET,
) -> VerificationResult:
    """Run the protocol on fused unit embeddings [2N, d] of N pairs (pair k = rows 2k, 2k+1)."""
    issame = np.asarray(issame, dtype=bool).reshape(-1)
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != 2 * len(issame):
        raise UserInputError(
            f"verification needs 2N embeddings for N pairs, got {embeddings.shape} for {len(issame)} pairs"
        )
    if not np.isfinite(embeddings).all():
        raise FacesynthError("the model produced non-finite embeddings (NaN or inf); cannot verify")
    dist = pair_distances(embeddings)
    n = len(dist)
    bounds = fold_bounds(n, folds)

    # Per fold, per threshold: same / different pairs with dist < threshold (the fold's "accepted").
    def per_fold(thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        same = np.stack([_counts_below(dist[a:b][issame[a:b]], thresholds) for a, b in bounds])
        diff = np.stack([_counts_below(dist[a:b][~issame[a:b]], thresholds) for a, b in bounds])
        n_same = np.array([np.count_nonzero(issame[a:b]) for a, b in bounds])
        n_diff = np.array([b - a for a, b in bounds]) - n_same
        return same, diff, n_same, n_diff

    # --- accuracy (calculate_roc) ---
    thresholds = ACCURACY_THRESHOLDS
    same, diff, n_same, n_diff = per_fold(thresholds)
    # correct = TP + TN; on the training folds = totals minus the held-out fold
    train_correct = (same.sum(0) - same) + ((n_diff.sum() - n_diff)[:, None] - (diff.sum(0) - diff))
    best = np.argmax(train_correct, axis=1)  # first best, as np.argmax over insightface's accuracies
    rows = np.arange(folds)
    sizes = n_same + n_diff
    test_correct = same[rows, best] + n_diff - diff[rows, best]
    fold_acc = np.array([float(c) / float(s) for c, s in zip(test_correct, sizes, strict=True)])
    with np.errstate(divide="ignore", invalid="ignore"):
        tprs = np.where(n_same[:, None] > 0, same / np.maximum(n_same, 1)[:, None], 0.0)
        fprs = np.where(n_diff[:, None] > 0, diff / np.maximum(n_diff, 1)[:, None], 0.0)
    fold_thr = thresholds[best]

    # --- VAL @ FAR (calculate_val) ---
    thresholds = VAL_THRESHOLDS
    _, diff_v, n_same_v, n_diff_v = per_fold(thresholds)
    vals, fars = np.zeros(folds), np.zeros(folds)
    for f, (a, b) in enumerate(bounds):
        n_diff_train = n_diff_v.sum() - n_diff_v[f]
        far_train = (
            (diff_v.sum(0) - diff_v[f]) / float(n_diff_train) if n_diff_train else np.zeros(len(thresholds))
        )
        thr = (
            _interpolate_threshold(far_train, thresholds, far_target)
            if far_train.max() >= far_target
            else 0.0
        )
        accepted = dist[a:b] < thr
        held_same = issame[a:b]
        true_accept = np.count_nonzero(accepted & held_same)
        false_accept = np.count_nonzero(accepted & ~held_same)
        vals[f] = float(true_accept) / float(n_same_v[f]) if n_same_v[f] else 0.0
        fars[f] = float(false_accept) / float(n_diff_v[f]) if n_diff_v[f] else 0.0

    threshold = float(np.mean(fold_thr))
    return VerificationResult(
        pairs=n,
        accuracy=float(np.mean(fold_acc)),
        accuracy_std=float(np.std(fold_acc)),
        threshold=threshold,
        threshold_cosine=1.0 - threshold / 2.0,
        val=float(np.mean(vals)),
        val_std=float(np.std(vals)),
        far=float(np.mean(fars)),
        xnorm=xnorm,
        fold_accuracies=tuple(float(a) for a in fold_acc),
        fold_thresholds=tuple(float(t) for t in fold_thr),
        far_target=far_target,
        tpr=np.mean(tprs, 0),
        fpr=np.mean(fprs, 0),
    )


def evaluate_raw(
    original: np.ndarray, flipped: np.ndarray, issame: Sequence[bool] | np.ndarray, folds: int = FOLDS
) -> VerificationResult:
    """The whole of insightface's ``test()`` after the forward passes: XNorm, flip fusion, ``verify``."""
    return verify(fuse_flips(original, flipped), issame, xnorm=xnorm(original, flipped), folds=folds)


def average_accuracy(results: Mapping[str, VerificationResult]) -> float:
    """Mean accuracy over the given eval sets (over FIVE_SETS: the field's five-set average)."""
    if not results:
        raise UserInputError("no eval sets to average")
    return float(np.mean([r.accuracy for r in results.values()]))
