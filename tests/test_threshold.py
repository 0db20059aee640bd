"""The validation threshold: exact over the probabilities, on the native grid (as scored)."""

import dataclasses

import nibabel as nib
import numpy as np
import pytest

from cohorts import tiny_prepared_subject


def test_exact_threshold_matches_brute_force_and_ignores_label_two():
    from wmh.evaluation import metrics

    rng = np.random.default_rng(3)
    probabilities = [rng.random((9, 8, 3)).astype(np.float32) for _ in range(2)]
    truths = [(p + rng.normal(0, 0.3, p.shape) > 0.8).astype(np.uint8) for p in probabilities]
    truths[0][0, 0, :] = 2
    masks = [np.ones(p.shape, bool) for p in probabilities]
    masks[1][:, :2] = False
    threshold, dice = metrics.exact_best_threshold(probabilities, truths, masks)

    def pooled(t):
        tp = fp = fn = 0
        for p, truth, mask in zip(probabilities, truths, masks):
            keep = truth != 2
            predicted = (p >= np.float32(t)) & mask & keep
            wmh = (truth == 1) & keep
            tp += np.sum(predicted & wmh)
            fp += np.sum(predicted & ~wmh)
            fn += np.sum(~predicted & wmh)
        return 2 * tp / (2 * tp + fp + fn)

    candidates = np.unique(np.concatenate([p.ravel() for p in probabilities]))
    assert dice == pytest.approx(max(pooled(t) for t in candidates))
    assert pooled(threshold) == pytest.approx(dice)
    assert metrics.exact_best_threshold([np.zeros(4)], [np.zeros(4, np.uint8)])[0] == 1.0


def native_subject(tmp_path):
    """A tiny subject whose native FLAIR grid is twice as fine in-plane as its working
    grid, its labels file on that native grid."""
    working = tiny_prepared_subject("val-0", shape=(24, 24, 3), seed=1)
    native_shape = (48, 48, 3)
    affine = np.diag([0.5, 0.5, 1.0, 1.0])
    affine[:2, 3] = -0.25  # native voxel centres around the working ones
    header = nib.Nifti1Header()
    header.set_data_shape(native_shape)
    header.set_sform(affine, code=1)
    labels = np.repeat(np.repeat(working.labels, 2, 0), 2, 1)
    labels_file = tmp_path / "val-0_labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine, header), labels_file)
    return dataclasses.replace(
        working, native_shape=native_shape, native_affine=affine,
        native_header=header.binaryblock,
        provenance={"inputs": {"labels": {"path": str(labels_file)}}})


def test_native_search_beats_the_coarse_working_grid(tmp_path):
    """Probabilities crowded in 0.980-0.990 (as the demo's are): the 201-point grid on
    working labels cannot separate them; the exact native search can."""
    from wmh.evaluation import metrics
    from wmh.threshold import VALIDATION_THRESHOLDS, choose_threshold, native_validation

    subject = native_subject(tmp_path)
    assert not subject.is_identity_mapping()
    rng = np.random.default_rng(0)
    lesion = subject.labels == 1
    probability = np.where(lesion, rng.uniform(0.9887, 0.9895, lesion.shape),
                           rng.uniform(0.980, 0.9884, lesion.shape))
    probability = (probability * subject.brain_mask).astype(np.float32)

    old_curve = metrics.dice_threshold_curve([probability], [subject.labels],
                                             VALIDATION_THRESHOLDS, [subject.brain_mask])
    old_threshold, _ = metrics.best_threshold(old_curve)
    threshold, dice, curve = choose_threshold([subject], [probability], ["val-0"])

    native, truth, brain = native_validation(subject, probability)
    assert native.shape == truth.shape == brain.shape == (48, 48, 3)

    def native_dice(t):  # as `wmh segment` scores the test
        return metrics.dice((native >= t) & brain, truth)

    assert dice == pytest.approx(native_dice(threshold))
    assert 0.980 < threshold < 0.9895  # the edges of native lesions interpolate lower
    assert native_dice(threshold) > native_dice(old_threshold) + 0.2
    assert threshold in curve.thresholds
    assert 0.85 < curve.auc() <= 1.0  # native: lesion edges interpolate into background


def test_threshold_rejects_non_finite_probabilities(tmp_path):
    from wmh.errors import WMHError
    from wmh.threshold import choose_threshold

    subject = native_subject(tmp_path)
    probability = np.full(subject.shape, np.nan, np.float32)
    with pytest.raises(WMHError, match="validation subject val-0: the model's probabilities "
                                       "are not finite"):
        choose_threshold([subject], [probability], ["val-0"])


def test_adaptation_without_validation_wmh_is_skipped_with_a_warning(tmp_path, capsys):
    from wmh.threshold import calibrated_threshold

    subject = native_subject(tmp_path)
    subject = dataclasses.replace(subject, labels=np.zeros_like(subject.labels))
    nib.save(nib.Nifti1Image(np.zeros(subject.native_shape, np.uint8), subject.native_affine),
             subject.provenance["inputs"]["labels"]["path"])
    probability = np.where(subject.brain_mask, 0.3, 0.0).astype(np.float32)
    choice = calibrated_threshold([subject], [probability], ["val-0"], "platt",
                                  adaptation="prevalence")
    assert choice.calibration.adaptation == "none" and choice.calibration.method == "none"
    assert capsys.readouterr().err.strip() == (
        "warning: train.adapt_prevalence: the validation subjects' WMH prevalence is 0.0, "
        "so scans are not adapted")


def test_mean_objective_maximises_the_mean_subject_dice_without_empty_subjects():
    """A heavy subject whose lesion scores 0.3-0.5 and a light one whose lesion scores
    0.6-0.7 among normal voxels up to 0.5: the pooled Dice prefers the low threshold that
    takes the heavy load, the mean of the subjects' Dice the one that keeps the light
    subject clean; a subject without WMH (Dice 0 or 1 by one voxel) does not count."""
    from wmh.evaluation import metrics
    from wmh.threshold import mean_dice_threshold

    rng = np.random.default_rng(0)

    def subject(lesion, low, high, normal_high):
        truth = np.zeros(4000, np.uint8)
        truth[:lesion] = 1
        score = rng.uniform(0, normal_high, 4000).astype(np.float32)
        score[:lesion] = rng.uniform(low, high, lesion)
        return score, truth

    heavy, light, empty = subject(1500, 0.3, 0.5, 0.45), subject(20, 0.6, 0.7, 0.5), \
        subject(0, 0, 0, 0.9)
    scores, truths = [heavy[0], light[0], empty[0]], [heavy[1], light[1], empty[1]]
    brains = [None] * 3
    pooled, _ = metrics.exact_best_threshold(scores, truths, brains)
    threshold, mean = mean_dice_threshold(scores, truths, brains, ["h", "l", "e"])
    grid = np.round(np.linspace(0, 1, 1001), 6)
    curve = metrics.dice_threshold_curve(scores[:2], truths[:2], grid, brains[:2])
    assert mean == pytest.approx(curve.mean_dice.max())
    assert threshold == pytest.approx(grid[np.flatnonzero(
        curve.mean_dice == curve.mean_dice.max())[-1]])
    assert pooled < 0.45 < threshold  # the objectives disagree here
    with_empty = metrics.dice_threshold_curve(scores, truths, grid, brains)
    assert with_empty.mean_dice.max() != pytest.approx(mean)  # the empty one was left out
    # no subject with WMH: the pooled optimum
    assert mean_dice_threshold([empty[0]], [empty[1]], [None], ["e"]) == \
        metrics.exact_best_threshold([empty[0]], [empty[1]], [None])
