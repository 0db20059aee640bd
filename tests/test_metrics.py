"""Metrics against hand-computed answers on hand-made masks, and the files API."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from wmh.evaluation import metrics
from wmh.evaluation.bootstrap import (bootstrap_dice_ci, bootstrap_dice_curve_ci,
                                      bootstrap_indices, paired_bootstrap_pvalue, pvalue_matrix)
from wmh.evaluation.cases import (MASK_FILE_NAMES, PROBABILITY_FILE_NAMES, evaluate_cases,
                                  find_cases, to_json)
from wmh.errors import WMHError

ANISOTROPIC = np.diag([0.47, 0.47, 8.0, 1.0])  # typical 2D FLAIR voxels (mm)


def oblique_affine() -> np.ndarray:
    """30 degrees about z and 20 about x, voxels 0.5 x 2 x 3 mm, off-origin."""
    a, b = np.deg2rad(30), np.deg2rad(20)
    rotation_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rotation_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation_z @ rotation_x @ np.diag([0.5, 2.0, 3.0])
    affine[:3, 3] = [-90.0, 12.5, 40.0]
    return affine


# ------------------------------------------------------------------------ Dice, AVD

def test_dice_and_avd_on_hand_made_masks():
    truth = np.zeros((6, 6, 3), np.uint8)
    truth[1, 1:5, 1] = 1  # 4 WMH voxels
    prediction = np.zeros_like(truth)
    prediction[1, 3:5, 1] = 1  # 2 true positives
    prediction[4, 4, 1] = 1  # 1 false positive
    # TP 2, FP 1, FN 2: Dice = 4 / 7; volumes 3 vs 4 -> 25 %
    assert metrics.dice(prediction, truth) == pytest.approx(4 / 7)
    assert metrics.absolute_volume_difference(prediction, truth) == pytest.approx(25.0)
    result = metrics.challenge_metrics(prediction, truth, ANISOTROPIC)
    assert (result["tp"], result["fp"], result["fn"]) == (2, 1, 2)
    voxel_ml = 0.47 * 0.47 * 8.0 / 1000
    assert result["truth_volume_ml"] == pytest.approx(4 * voxel_ml)
    assert result["predicted_volume_ml"] == pytest.approx(3 * voxel_ml)


def test_label_2_is_removed_from_the_prediction_and_not_truth():
    truth = np.zeros((5, 5, 3), np.uint8)
    truth[1, 1, 1] = truth[1, 2, 1] = 1
    truth[3, 3, 1] = truth[3, 4, 1] = 2  # other pathology
    prediction = np.zeros_like(truth)
    prediction[1, 1, 1] = 1
    prediction[3, 3, 1] = prediction[3, 4, 1] = 1  # on label 2: ignored
    result = metrics.challenge_metrics(prediction, truth, np.eye(4))
    assert (result["tp"], result["fp"], result["fn"]) == (1, 0, 1)
    assert result["dice"] == pytest.approx(2 / 3)
    assert result["avd"] == pytest.approx(50.0)
    assert result["predicted_lesions"] == 1  # the label-2 blob is not a component
    assert result["lesion_f1"] == pytest.approx(1.0)


def test_binarization_follows_the_challenge_script():
    probabilities = np.array([0.0, 0.49, 0.5, 0.9])
    assert metrics.binarize_prediction(probabilities).tolist() == [False, False, True, True]
    assert metrics.binarize_prediction(probabilities, 0.95).tolist() == [False] * 4
    labels = np.array([0, 1, 2, 7], np.int16)
    assert metrics.binarize_prediction(labels).tolist() == [False, True, True, True]


def test_truth_values_outside_labels_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        metrics.dice(np.zeros(4), np.array([0, 1, 3, 0]))


# ------------------------------------------------------------------------ empty cases

def _empty_case(truth_voxels: bool, predicted_voxels: bool) -> dict:
    truth = np.zeros((7, 7, 3), np.uint8)
    prediction = np.zeros_like(truth)
    if truth_voxels:
        truth[2:4, 2:4, 1] = 1
    if predicted_voxels:
        prediction[5, 5, 1] = 1
    return metrics.challenge_metrics(prediction, truth, ANISOTROPIC)


def test_empty_truth_with_a_prediction():
    result = _empty_case(truth_voxels=False, predicted_voxels=True)
    assert result["dice"] == 0.0
    assert math.isnan(result["hd95"]) and math.isnan(result["avd"])
    assert result["lesion_recall"] == 1.0 and result["lesion_precision"] == 0.0
    assert result["lesion_f1"] == 0.0


def test_empty_prediction_with_a_truth():
    result = _empty_case(truth_voxels=True, predicted_voxels=False)
    assert result["dice"] == 0.0
    assert math.isnan(result["hd95"])
    assert result["avd"] == 100.0
    assert result["lesion_recall"] == 0.0 and result["lesion_precision"] == 1.0
    assert result["lesion_f1"] == 0.0


def test_both_empty():
    result = _empty_case(truth_voxels=False, predicted_voxels=False)
    assert result["dice"] == 1.0 and result["avd"] == 0.0
    assert math.isnan(result["hd95"])
    assert (result["lesion_recall"], result["lesion_precision"], result["lesion_f1"]) == \
        (1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- HD95

def test_hd95_single_voxels_anisotropic_through_slice():
    truth = np.zeros((5, 5, 4), np.uint8)
    prediction = np.zeros_like(truth)
    truth[2, 2, 1] = 1
    prediction[2, 2, 2] = 1  # one slice up: 8 mm
    assert metrics.hausdorff95(prediction, truth, ANISOTROPIC) == pytest.approx(8.0)
    prediction[:] = 0
    prediction[2, 4, 1] = 1  # two voxels in-plane: 0.94 mm
    assert metrics.hausdorff95(prediction, truth, ANISOTROPIC) == pytest.approx(0.94)


def test_hd95_oblique_affine_uses_world_distances():
    truth = np.zeros((5, 5, 5), np.uint8)
    prediction = np.zeros_like(truth)
    truth[2, 2, 2] = 1
    prediction[3, 3, 2] = 1
    # rotation keeps lengths: |(0.5, 2.0, 0)| = sqrt(4.25)
    assert metrics.hausdorff95(prediction, truth, oblique_affine()) == \
        pytest.approx(math.sqrt(4.25))
    sheared = np.eye(4)
    sheared[0, 1] = 1.0  # voxel step (0, 1, 0) -> world (1, 1, 0)
    prediction[:] = 0
    prediction[2, 3, 2] = 1
    assert metrics.hausdorff95(prediction, truth, sheared) == pytest.approx(math.sqrt(2))


def test_hd95_in_plane_boundary_and_percentile_interpolation():
    """A 3x3 square in one slice; the prediction adds one voxel a slice above its centre.

    In-plane erosion keeps the square's centre out of the truth boundary, so the extra
    voxel's nearest truth boundary voxel is an edge midpoint: sqrt(8^2 + 0.47^2) mm.
    Prediction -> truth distances: 8 zeros and that one value; the 95th percentile of 9
    values interpolates at index 7.6: 0.6 * d. Truth -> prediction: all 0.
    """
    truth = np.zeros((7, 7, 4), np.uint8)
    truth[2:5, 2:5, 1] = 1
    prediction = truth.copy()
    prediction[3, 3, 2] = 1
    expected = 0.6 * math.sqrt(8.0 ** 2 + 0.47 ** 2)
    assert metrics.hausdorff95(prediction, truth, ANISOTROPIC) == pytest.approx(expected)


def test_hd95_image_edge_counts_as_foreground_like_itk():
    """A 3x3 square in the image corner: outside the image counts as foreground.

    The truth boundary is then only the 5 voxels on the inner rows (x = 2 or y = 2), not
    the corner voxel. The prediction adds one voxel a slice above the corner: its nearest
    truth boundary voxel is 2 voxels away in-plane, d = sqrt(8^2 + 0.94^2). Prediction ->
    truth: 5 zeros and d; index 0.95 * 5 = 4.75 -> 0.75 * d.
    """
    truth = np.zeros((6, 6, 3), np.uint8)
    truth[0:3, 0:3, 1] = 1
    prediction = truth.copy()
    prediction[0, 0, 2] = 1
    expected = 0.75 * math.sqrt(8.0 ** 2 + 0.94 ** 2)
    assert metrics.hausdorff95(prediction, truth, ANISOTROPIC) == pytest.approx(expected)


def test_hd95_percentile_over_many_distances():
    # 20 isolated truth voxels 2 mm apart; the prediction is the first one.
    truth = np.zeros((45, 5, 3), np.uint8)
    truth[2:42:2, 2, 1] = 1
    prediction = np.zeros_like(truth)
    prediction[2, 2, 1] = 1
    # distances 0, 2, ..., 38: index 0.95 * 19 = 18.05 -> 36 + 0.05 * 2
    assert metrics.hausdorff95(prediction, truth, np.eye(4)) == pytest.approx(36.1)


def test_hd95_of_label_2_only_prediction_is_undefined():
    truth = np.zeros((5, 5, 3), np.uint8)
    truth[1, 1, 1] = 1
    truth[3, 3, 1] = 2
    prediction = (truth == 2).astype(np.uint8)
    assert math.isnan(metrics.hausdorff95(prediction, truth, np.eye(4)))


# --------------------------------------------------------------------------- lesions

def test_lesion_detection_with_26_connected_corner_touching_components():
    truth = np.zeros((9, 9, 9), np.uint8)
    truth[1, 1, 1] = truth[2, 2, 2] = 1  # corner-touching: one lesion (A)
    truth[6, 6, 6] = 1  # lesion B, missed
    truth[6, 1, 6] = 1  # lesion C, hit
    truth[8, 8, 8] = 2  # other pathology
    prediction = np.zeros_like(truth)
    prediction[2, 2, 2] = prediction[3, 3, 3] = 1  # one component, touches A
    prediction[6, 6, 4] = 1  # near B, no overlap: a false component
    prediction[1, 6, 1] = 1  # false component
    prediction[6, 1, 6] = 1  # hits C
    prediction[8, 8, 8] = 1  # on label 2: removed
    result = metrics.lesion_detection(prediction, truth)
    # 26-connectivity: 3 truth lesions, 2 detected; 4 predicted components, 2 touching.
    assert result["truth_lesions"] == 3 and result["predicted_lesions"] == 4
    assert result["lesion_recall"] == pytest.approx(2 / 3)
    assert result["lesion_precision"] == pytest.approx(1 / 2)
    assert result["lesion_f1"] == pytest.approx(4 / 7)


def test_lesion_f1_is_zero_when_nothing_overlaps():
    truth = np.zeros((5, 5, 5), np.uint8)
    truth[1, 1, 1] = 1
    prediction = np.zeros_like(truth)
    prediction[3, 3, 3] = 1
    result = metrics.lesion_detection(prediction, truth)
    assert (result["lesion_recall"], result["lesion_precision"], result["lesion_f1"]) == \
        (0.0, 0.0, 0.0)


# ------------------------------------------------ cross-check with the challenge script

def _challenge_script_reference(prediction: np.ndarray, truth: np.ndarray,
                                affine: np.ndarray) -> dict:
    """The MICCAI WMH 2017 evaluation script's algorithm, written with SimpleITK."""
    import SimpleITK as sitk
    from scipy.spatial import KDTree

    def image(array):
        result = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        result.SetSpacing(spacing.tolist())
        result.SetDirection((affine[:3, :3] / spacing).ravel().tolist())
        result.SetOrigin(affine[:3, 3].tolist())
        return result

    test = image(truth.astype(np.float32))  # challenge truths are float images
    result = sitk.Mask(image(prediction.astype(np.uint8)),
                       sitk.BinaryThreshold(test, 1.5, 2.5, 0, 1))
    result = sitk.BinaryThreshold(result, 1, 1000, 1, 0)
    test = sitk.BinaryThreshold(test, 0.5, 1.5, 1, 0)
    test_array, result_array = (sitk.GetArrayFromImage(i).ravel().astype(np.float64)
                                for i in (test, result))
    dice = 2 * np.sum(test_array * result_array) / (test_array.sum() + result_array.sum())

    def coordinates(mask):
        boundary = sitk.GetArrayFromImage(sitk.Subtract(mask, sitk.BinaryErode(mask, (1, 1, 0))))
        return [test.TransformIndexToPhysicalPoint([int(v) for v in index])
                for index in np.transpose(np.flipud(np.nonzero(boundary)))]

    test_points, result_points = coordinates(test), coordinates(result)
    hd95 = max(np.percentile(KDTree(test_points).query(result_points)[0], 95),
               np.percentile(KDTree(result_points).query(test_points)[0], 95))
    components = sitk.ConnectedComponentImageFilter()
    components.SetFullyConnected(True)
    test_components = components.Execute(test)
    hit = sitk.GetArrayFromImage(sitk.Multiply(test_components, sitk.Cast(result, sitk.sitkUInt32)))
    recall = (len(np.unique(hit)) - 1) / (len(np.unique(sitk.GetArrayFromImage(test_components))) - 1)
    result_components = components.Execute(result)
    touching = sitk.GetArrayFromImage(sitk.Multiply(result_components, sitk.Cast(test, sitk.sitkUInt32)))
    precision = (len(np.unique(touching)) - 1) / (
        len(np.unique(sitk.GetArrayFromImage(result_components))) - 1)
    f1 = 2 * precision * recall / (precision + recall)
    avd = abs(test_array.sum() - result_array.sum()) / test_array.sum() * 100
    return {"dice": dice, "hd95": hd95, "avd": avd, "lesion_recall": recall, "lesion_f1": f1}


@pytest.mark.parametrize("affine", [ANISOTROPIC, oblique_affine()], ids=["aniso", "oblique"])
def test_matches_the_challenge_script_on_random_masks(affine):
    from scipy import ndimage

    rng = np.random.default_rng(7)
    shape = (24, 20, 6)
    truth = (ndimage.gaussian_filter(rng.random(shape), 1.2) > 0.53).astype(np.uint8)
    truth[(rng.random(shape) < 0.03) & (truth == 0)] = 2
    truth[0, :, 2] = 1  # a lesion on the image edge: ITK treats outside as foreground
    prediction = ((ndimage.gaussian_filter(rng.random(shape), 1.2) > 0.52)
                  | (truth == 2)).astype(np.uint8)
    ours = metrics.challenge_metrics(prediction, truth, affine)
    reference = _challenge_script_reference(prediction, truth, affine)
    for name in metrics.CHALLENGE_METRICS:
        assert ours[name] == pytest.approx(reference[name], rel=1e-9, abs=1e-9), name


# -------------------------------------------------------------------- ROC, curves

def test_roc_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    labels = rng.random(5000) < 0.2
    scores = np.round(rng.random(5000) * 0.6 + 0.3 * labels, 2)  # many ties
    assert metrics.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores),
                                                            abs=1e-12)
    assert math.isnan(metrics.roc_auc(scores, np.zeros(5000, bool)))


def _random_cases(seed: int, count: int = 4):
    rng = np.random.default_rng(seed)
    grid = metrics.DEFAULT_THRESHOLDS
    probabilities, truths, masks = [], [], []
    for _ in range(count):
        shape = (12, 10, 3)
        truth = (rng.random(shape) < 0.15).astype(np.uint8)
        truth[rng.random(shape) < 0.05] = 2
        score = np.clip(rng.random(shape) * 0.7 + 0.3 * (truth == 1), 0, 1)
        score[rng.random(shape) < 0.3] = rng.choice(grid, size=1)  # ties on the grid
        probabilities.append(score)
        truths.append(truth)
        masks.append(rng.random(shape) < 0.9)
    return probabilities, truths, masks


def test_threshold_counts_match_a_direct_computation():
    probabilities, truths, masks = _random_cases(2, count=1)
    counts = metrics.threshold_counts(probabilities[0], truths[0],
                                      metrics.DEFAULT_THRESHOLDS, masks[0])
    region = masks[0] & (truths[0] != 2)
    wmh = truths[0] == 1
    for index, threshold in enumerate(metrics.DEFAULT_THRESHOLDS):
        predicted = probabilities[0] >= threshold
        expected = [np.sum(predicted & wmh & region), np.sum(predicted & ~wmh & region),
                    np.sum(~predicted & wmh & region), np.sum(~predicted & ~wmh & region)]
        assert counts[index].tolist() == expected


def test_dice_curve_and_best_threshold_match_a_direct_computation():
    probabilities, truths, masks = _random_cases(3)
    thresholds = np.linspace(0, 1, 21)
    curve = metrics.dice_threshold_curve(probabilities, truths, thresholds, masks)
    pooled, per_case = [], []
    for threshold in thresholds:
        totals = np.zeros(3)
        dices = []
        for score, truth, mask in zip(probabilities, truths, masks):
            predicted = (score >= threshold) & mask & (truth != 2)
            wmh = (truth == 1) & mask
            counts = np.array([np.sum(predicted & wmh), np.sum(predicted & ~wmh),
                               np.sum(~predicted & wmh)])
            totals += counts
            dices.append(2 * counts[0] / (2 * counts[0] + counts[1] + counts[2]))
        pooled.append(2 * totals[0] / (2 * totals[0] + totals[1] + totals[2]))
        per_case.append(np.mean(dices))
    np.testing.assert_allclose(curve.pooled_dice, pooled)
    np.testing.assert_allclose(curve.mean_dice, per_case)
    threshold, best = metrics.best_threshold(curve)
    assert threshold == thresholds[int(np.argmax(pooled))]
    assert best == pytest.approx(max(pooled))


def test_curve_auc_equals_exact_auc_for_scores_on_the_grid():
    rng = np.random.default_rng(4)
    thresholds = np.linspace(0, 1, 51)
    truth = (rng.random((30, 30, 2)) < 0.2).astype(np.uint8)
    scores = rng.choice(thresholds, size=truth.shape) * 0.7 + 0.3 * (truth == 1)
    scores = thresholds[np.abs(scores[..., None] - thresholds).argmin(-1)]  # snap to grid
    curve = metrics.dice_threshold_curve([scores], [truth], thresholds)
    assert curve.auc() == pytest.approx(metrics.roc_auc(scores, truth == 1), abs=1e-12)
    fpr, tpr = curve.roc()
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_threshold_counts_rejects_bad_thresholds():
    with pytest.raises(ValueError, match="increasing"):
        metrics.threshold_counts(np.zeros(3), np.zeros(3, np.uint8), [0.5, 0.2])


# ------------------------------------------------------------------------- bootstrap

def _counts(seed: int, cases: int = 12, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tp = rng.integers(20, 100, cases) + shift
    return np.stack([tp, rng.integers(5, 40, cases), rng.integers(5, 40, cases)], axis=1)


def test_bootstrap_is_identical_for_a_seed_and_differs_between_seeds():
    probabilities, truths, masks = _random_cases(5, count=6)
    curve = metrics.dice_threshold_curve(probabilities, truths, masks_per_case=masks)
    first = bootstrap_dice_curve_ci(curve, num_resamples=200, seed=11)
    again = bootstrap_dice_curve_ci(curve, num_resamples=200, seed=11)
    other = bootstrap_dice_curve_ci(curve, num_resamples=200, seed=12)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    assert np.all(first[0] <= curve.pooled_dice + 1e-12)
    assert np.all(curve.pooled_dice <= first[1] + 1e-12)
    a, b = _counts(1), _counts(2)
    assert paired_bootstrap_pvalue(a, b, 100, seed=3) == \
        paired_bootstrap_pvalue(a, b, 100, seed=3)
    values = {paired_bootstrap_pvalue(a, b, 100, seed=s) for s in range(6)}
    assert len(values) > 1


def test_bootstrap_curve_band_matches_an_explicit_loop():
    probabilities, truths, masks = _random_cases(6, count=5)
    curve = metrics.dice_threshold_curve(probabilities, truths, np.linspace(0, 1, 11), masks)
    low, high = bootstrap_dice_curve_ci(curve, num_resamples=50, seed=9)
    resampled = []
    for indices in bootstrap_indices(5, 50, seed=9):
        totals = curve.counts[indices].sum(axis=0)
        resampled.append(2 * totals[:, 0] / (2 * totals[:, 0] + totals[:, 1] + totals[:, 2]))
    expected_low, expected_high = np.quantile(resampled, [0.025, 0.975], axis=0)
    np.testing.assert_allclose(low, expected_low)
    np.testing.assert_allclose(high, expected_high)


def test_paired_pvalue_matches_an_explicit_loop_for_both_statistics():
    a, b = _counts(7), _counts(8, shift=5)
    indices = bootstrap_indices(12, 100, seed=0)

    def pooled(counts):
        tp, fp, fn = counts.sum(axis=0)
        return 2 * tp / (2 * tp + fp + fn)

    def per_case(counts):
        return np.mean(2 * counts[:, 0] / (2 * counts[:, 0] + counts[:, 1] + counts[:, 2]))

    for statistic, function in (("pooled", pooled), ("mean", per_case)):
        expected = np.mean([function(b[rows]) > function(a[rows]) for rows in indices])
        assert paired_bootstrap_pvalue(a, b, 100, 0, statistic) == expected
    case_dice = 2 * a[:, 0] / (2 * a[:, 0] + a[:, 1] + a[:, 2])
    assert paired_bootstrap_pvalue(case_dice, case_dice + 0.1, 100, 0, "mean") == 1.0


def test_pvalues_of_clearly_different_methods_and_the_table_4_layout():
    weak, strong = _counts(9), _counts(9) * np.array([3, 1, 1])  # strong: 3x the TP
    assert paired_bootstrap_pvalue(strong, weak) == 0.0  # "< 0.01"
    assert paired_bootstrap_pvalue(weak, strong) == 1.0
    matrix = pvalue_matrix([weak, strong])
    # [i, j]: share where method i beats method j
    assert matrix[0, 1] == 0.0 and matrix[1, 0] == 1.0
    assert np.isnan(matrix[0, 0])


def test_pooled_statistic_needs_counts():
    with pytest.raises(ValueError, match="counts"):
        paired_bootstrap_pvalue(np.ones(5), np.ones(5))


def test_bootstrap_dice_ci_brackets_the_estimate():
    counts = _counts(10, cases=30)
    low, high = bootstrap_dice_ci(counts, 500, seed=1)
    tp, fp, fn = counts.sum(axis=0)
    assert low < 2 * tp / (2 * tp + fp + fn) < high


# ------------------------------------------------------------------ files and the API

def _save(path, array, affine=ANISOTROPIC, dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), affine), str(path))
    return path


def _cohort(root):
    """Two cases; case a: TP 2, FP 1, FN 2 (Dice 4/7); case b: perfect (Dice 1)."""
    truth_a = np.zeros((6, 6, 3), np.uint8)
    truth_a[1, 1:5, 1] = 1
    truth_a[4, 0, 0] = 2
    prediction_a = np.zeros((6, 6, 3), np.float32)
    prediction_a[1, 3:5, 1] = 0.9
    prediction_a[4, 4, 1] = 0.6
    prediction_a[1, 1, 1] = 0.3  # below 0.5
    prediction_a[4, 0, 0] = 0.99  # on label 2
    truth_b = np.zeros((6, 6, 3), np.uint8)
    truth_b[2:4, 2:4, 2] = 1
    prediction_b = (truth_b == 1).astype(np.float32) * 0.8
    _save(root / "truth" / "a" / "wmh.nii.gz", truth_a)  # challenge layout
    _save(root / "truth" / "b" / "wmh.nii.gz", truth_b)
    _save(root / "pred" / "a.nii.gz", prediction_a, dtype=np.float32)
    _save(root / "pred" / "b.nii.gz", prediction_b, dtype=np.float32)
    brain = np.ones((6, 6, 3), np.uint8)
    brain[4, 4, 1] = 0  # the false positive lies outside the brain
    _save(root / "brain" / "a.nii.gz", brain)
    _save(root / "brain" / "b.nii.gz", np.ones((6, 6, 3)))
    return root


def test_evaluate_cases_on_folders(tmp_path):
    _cohort(tmp_path)
    result = evaluate_cases(tmp_path / "pred", tmp_path / "truth",
                                    brain_mask=tmp_path / "brain")
    cases = {case["id"]: case for case in result["cases"]}
    assert set(cases) == {"a", "b"}
    assert cases["a"]["dice"] == pytest.approx(4 / 7)
    assert cases["a"]["avd"] == pytest.approx(25.0)
    assert cases["a"]["dice_brain"] == pytest.approx(4 / 6)  # FP outside the brain
    assert cases["b"]["dice"] == 1.0 and cases["b"]["hd95"] == 0.0
    assert 0.5 < cases["a"]["auc"] <= 1.0
    summary = result["summary"]
    assert summary["mean"]["dice"] == pytest.approx((4 / 7 + 1) / 2)
    assert summary["pooled_dice"] == pytest.approx(2 * 6 / (2 * 6 + 1 + 2))
    assert summary["num_cases"] == 2 and result["unmatched_predictions"] == []


def test_evaluate_cases_single_files_and_null_in_json(tmp_path):
    truth = np.zeros((5, 5, 3), np.uint8)
    truth[2, 2, 1] = 1
    _save(tmp_path / "t.nii.gz", truth, oblique_affine())
    _save(tmp_path / "p.nii", np.zeros((5, 5, 3)), oblique_affine())
    result = evaluate_cases(tmp_path / "p.nii", tmp_path / "t.nii.gz")
    parsed = json.loads(to_json(result))
    assert parsed["cases"][0]["id"] == "t"
    assert parsed["cases"][0]["hd95"] is None and parsed["cases"][0]["dice"] == 0.0
    assert parsed["summary"]["undefined"]["hd95"] == 1


def test_mismatched_grid_missing_case_and_bad_labels_are_user_errors(tmp_path):
    _cohort(tmp_path)
    _save(tmp_path / "shifted" / "a.nii.gz", np.zeros((6, 6, 3)), np.diag([1, 1, 2, 1]))
    _save(tmp_path / "shifted" / "b.nii.gz", np.zeros((6, 6, 3)))
    with pytest.raises(WMHError, match="a.nii.gz: affine differs"):
        evaluate_cases(tmp_path / "shifted", tmp_path / "truth")
    _save(tmp_path / "small" / "a.nii.gz", np.zeros((6, 6, 2)))
    _save(tmp_path / "small" / "b.nii.gz", np.zeros((6, 6, 3)))
    with pytest.raises(WMHError, match="grid"):
        evaluate_cases(tmp_path / "small", tmp_path / "truth")
    (tmp_path / "pred" / "b.nii.gz").unlink()
    with pytest.raises(WMHError, match="no prediction for 1 truth case"):
        evaluate_cases(tmp_path / "pred", tmp_path / "truth")
    _save(tmp_path / "bad.nii.gz", np.full((6, 6, 3), 5))
    with pytest.raises(WMHError, match="outside"):
        evaluate_cases(tmp_path / "pred" / "a.nii.gz", tmp_path / "bad.nii.gz")
    with pytest.raises(WMHError, match="--pred"):
        evaluate_cases(tmp_path / "nowhere", tmp_path / "truth")
    with pytest.raises(WMHError, match="give a folder like --truth"):
        evaluate_cases(tmp_path / "pred" / "a.nii.gz", tmp_path / "truth")


def test_case_ids_from_file_and_folder_names(tmp_path):
    _cohort(tmp_path)
    assert list(find_cases(tmp_path / "truth" / "a" / "wmh.nii.gz", "--truth")) == ["a"]
    assert list(find_cases(tmp_path / "pred" / "a.nii.gz", "--pred")) == ["a"]
    assert find_cases(tmp_path / "truth", "--truth") == {
        "a": tmp_path / "truth" / "a" / "wmh.nii.gz", "b": tmp_path / "truth" / "b" / "wmh.nii.gz"}
    segment = tmp_path / "segment"  # `wmh segment` output folders
    for name in ("wmh_probability", "wmh_mask", "wmh_uncertainty"):
        _save(segment / "a" / f"{name}.nii.gz", np.zeros((6, 6, 3)))
    (segment / ".b.staging").mkdir()  # an interrupted run's leftovers are skipped
    _save(segment / ".b.staging" / "wmh_mask.nii.gz", np.zeros((6, 6, 3)))
    assert find_cases(segment, "--pred", MASK_FILE_NAMES) == {
        "a": segment / "a" / "wmh_mask.nii.gz"}
    assert find_cases(segment, "--pred", PROBABILITY_FILE_NAMES) == {
        "a": segment / "a" / "wmh_probability.nii.gz"}
    _save(tmp_path / "pred" / "c" / "x.nii.gz", np.zeros((6, 6, 3)))
    _save(tmp_path / "pred" / "c" / "y.nii.gz", np.zeros((6, 6, 3)))
    with pytest.raises(WMHError, match="several NIfTI files"):
        find_cases(tmp_path / "pred", "--pred")
    _save(tmp_path / "dup" / "a.nii.gz", np.zeros((6, 6, 3)))
    _save(tmp_path / "dup" / "a" / "wmh.nii.gz", np.zeros((6, 6, 3)))
    with pytest.raises(WMHError, match="found twice"):
        find_cases(tmp_path / "dup", "--truth")


def test_metrics_module_does_not_import_tensorflow():
    code = ("import sys, wmh.evaluation.cases, wmh.evaluation.report; "
            "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_metric_maths_imports_no_file_tracking_or_plotting_library():
    """The pure layer stays pure: importing it loads neither nibabel nor wmh.io (files),
    MLflow nor matplotlib."""
    code = ("import sys, wmh.evaluation.metrics, wmh.evaluation.bootstrap; "
            "print(sorted(m for m in ('nibabel', 'wmh.io', 'mlflow', 'matplotlib', "
            "'tensorflow') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_a_challenge_cohort_as_truth_evaluates_the_segmented_cases(tmp_path):
    truth = np.zeros((6, 6, 3), np.uint8)
    truth[1:3, 1:3, 1] = 1
    prediction = np.zeros_like(truth)
    prediction[1:3, 1:2, 1] = 1  # half of the lesion: Dice 2*2/(4+2) = 2/3
    for subject_id in ("7", "9"):
        folder = tmp_path / "cohort" / "SiteA" / subject_id
        (folder / "pre").mkdir(parents=True)
        flair = np.random.default_rng(0).random(truth.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(flair, np.eye(4)), folder / "pre" / "FLAIR.nii.gz")
        nib.save(nib.Nifti1Image(truth, np.eye(4)), folder / "wmh.nii.gz")
    (tmp_path / "pred" / "9").mkdir(parents=True)
    nib.save(nib.Nifti1Image(prediction, np.eye(4)), tmp_path / "pred" / "9" / "wmh_mask.nii.gz")
    result = evaluate_cases(tmp_path / "pred", tmp_path / "cohort")
    assert [case["id"] for case in result["cases"]] == ["9"]
    assert result["cases"][0]["dice"] == pytest.approx(2 / 3)
