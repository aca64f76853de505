"""The verification protocol (facesynth.recognition.verification) on embeddings with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from verification_cases import CASES, case_digest, make_case

from facesynth.errors import UserInputError
from facesynth.recognition import verification as v

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "eval" / "insightface_protocol.json").read_text())


def pairs_at(distances: list[float]) -> np.ndarray:
    """Unit 2-D embeddings whose pairs have exactly these squared distances (d = 2 - 2 cos)."""
    rows = []
    for d in distances:
        angle = np.arccos(1.0 - d / 2.0)
        rows += [[1.0, 0.0], [np.cos(angle), np.sin(angle)]]
    return np.array(rows)


def test_fold_layout_is_kfold_without_shuffle() -> None:
    assert v.fold_bounds(20) == [(2 * i, 2 * i + 2) for i in range(10)]
    bounds = v.fold_bounds(1237)  # 1237 = 10 * 123 + 7: the first 7 folds hold 124 pairs
    assert [b - a for a, b in bounds] == [124] * 7 + [123] * 3
    assert bounds[0][0] == 0 and bounds[-1][1] == 1237
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(9))
    with pytest.raises(UserInputError, match="at least 10 pairs"):
        v.fold_bounds(9)


def test_perfect_separation_gives_100_percent() -> None:
    rng = np.random.default_rng(0)
    issame = np.tile([True, False], 50)
    # every fold holds same pairs at both 0.2 and 0.4, so every training max is the same
    distances = np.where(issame, np.tile([0.2, 0.2, 0.4, 0.4], 25), rng.uniform(1.5, 3.5, 100))
    embeddings = pairs_at(list(distances))
    distances = v.pair_distances(embeddings)  # as computed (0.4 comes back as 0.39999...)
    result = v.verify(embeddings, issame)
    assert result.accuracy == 1.0 and result.accuracy_std == 0.0
    # the first threshold separating both groups on the training folds: just above the largest same distance
    for fold, (a, b) in enumerate(v.fold_bounds(100)):
        train = np.r_[distances[:a], distances[b:]][np.r_[issame[:a], issame[b:]]]
        first_best = v.ACCURACY_THRESHOLDS[train.max() < v.ACCURACY_THRESHOLDS][0]
        assert result.fold_thresholds[fold] == first_best
    assert (
        result.val == 1.0
    )  # (FAR may exceed the target: the threshold is interpolated towards the next FAR step)
    assert result.threshold_cosine == pytest.approx(1 - result.threshold / 2)


def test_same_is_strictly_below_the_threshold() -> None:
    # Every same pair at exactly a grid threshold t: "dist < t" rejects it, so the first best
    # threshold is the NEXT grid value, not t itself (with "<=" it would be t).
    t = v.ACCURACY_THRESHOLDS[100]  # 1.0 exactly
    issame = np.tile([True, False], 10)
    result = v.verify(pairs_at([t if s else 3.0 for s in issame]), issame)
    assert result.accuracy == 1.0
    assert set(result.fold_thresholds) == {v.ACCURACY_THRESHOLDS[101]}


def test_first_best_threshold_wins_ties() -> None:
    # Same pairs at 0.5, different pairs at 2.0: every threshold in (0.5, 2.0] is perfect on the
    # training folds; insightface's argmax takes the first of them (0.51).
    issame = np.tile([True, False], 15)
    result = v.verify(pairs_at([0.5 if s else 2.0 for s in issame]), issame)
    assert set(result.fold_thresholds) == {v.ACCURACY_THRESHOLDS[51]}
    # A fold whose best training threshold is a compromise: one different pair among the same ones.
    distances = [0.5 if s else 2.0 for s in issame]
    distances[1] = 0.3  # a different pair closer than every same pair: no threshold is perfect
    result = v.verify(pairs_at(distances), issame)
    # fold 0 (pairs 0-2) holds that pair; the others still pick 0.51 and misclassify it there
    assert result.fold_thresholds[1:] == (v.ACCURACY_THRESHOLDS[51],) * 9
    assert result.fold_accuracies[0] == pytest.approx(2 / 3)


def test_val_is_zero_when_the_far_target_is_never_reached() -> None:
    # All different pairs at distance 4 (opposite vectors): FAR stays 0 below threshold 4, so insightface
    # sets the threshold to 0 and nothing is accepted on the held-out fold.
    issame = np.tile([True, False], 10)
    result = v.verify(pairs_at([0.2 if s else 4.0 for s in issame]), issame)
    assert result.val == 0.0 and result.far == 0.0
    assert result.accuracy == 1.0


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_insightface_on_the_parity_fixture(name: str) -> None:
    expected = FIXTURE["cases"][name]
    assert case_digest(name) == expected["sha256"], "the generated case differs from what the reference saw"
    original, flipped, issame = make_case(name)
    result = v.evaluate_raw(original, flipped, issame)
    assert result.fold_accuracies == tuple(expected["fold_acc"])
    assert result.accuracy == expected["acc"]
    assert result.accuracy_std == expected["std"]
    assert result.val == expected["val"]
    assert result.val_std == expected["val_std"]
    assert result.far == expected["far"]
    assert result.xnorm == pytest.approx(expected["xnorm"], rel=1e-12)
    assert result.tpr.sum() == pytest.approx(expected["tpr_sum"], abs=1e-9)
    assert result.fpr.sum() == pytest.approx(expected["fpr_sum"], abs=1e-9)


def test_far_interpolation_equals_old_scipy_on_repeated_fars() -> None:
    for case in FIXTURE["interp1d_slinear"]:
        far = np.array(case["far"], dtype=np.float64)
        thresholds = np.arange(len(far)) * 0.001
        assert v._interpolate_threshold(far, thresholds, case["target"]) == case["threshold"], case


def test_fusion_xnorm_and_average() -> None:
    original = np.array([[3.0, 0.0], [0.0, 2.0]])
    flipped = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert np.allclose(v.fuse_flips(original, flipped), [[1, 0], [0, 1]])
    assert v.xnorm(original, flipped) == pytest.approx((3 + 2 + 1 + 0) / 4)
    results = {
        name: v.verify(
            pairs_at([0.2 if s else 3.0 for s in np.tile([True, False], 10)]), np.tile([True, False], 10)
        )
        for name in v.FIVE_SETS
    }
    assert v.average_accuracy(results) == 1.0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(UserInputError, match="2N embeddings"):
        v.verify(np.zeros((30, 4)), [True] * 20)
