"""Calibration of P(WMH): prior shift, Platt scaling, ECE, and the contract round trip."""

import dataclasses
import json

import numpy as np
import pytest

from wmh import calibration
from wmh.contract import ModelContract


def simulated_voxels(count=200_000, prevalence=0.02, seed=0):
    """Scores whose true P(WMH | score) is known: labels drawn with P = sigmoid(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(np.log(prevalence / (1 - prevalence)) - 1.0, 2.0, count)
    truth = calibration.sigmoid(z)
    labels = (rng.random(count) < truth).astype(np.uint8)
    return truth, labels


def test_prior_shift_matches_the_closed_form():
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    prevalence, share = 0.02, 0.5
    weight = calibration.prior_weight(prevalence, share)
    assert weight == pytest.approx((0.02 / 0.98) / (0.5 / 0.5))
    # Bayes: P'(1|x) = p pi/pi_s / (p pi/pi_s + (1-p)(1-pi)/(1-pi_s))
    expected = (p * prevalence / share) / (p * prevalence / share
                                           + (1 - p) * (1 - prevalence) / (1 - share))
    np.testing.assert_allclose(calibration.prior_shift(p, weight), expected, rtol=1e-12)
    shifted = calibration.Calibration("prior", {"weight": weight}).apply(p)
    assert shifted.dtype == np.float32 and shifted[0] == 0.0 and shifted[-1] == 1.0
    assert shifted[2] == pytest.approx(weight / (weight + 1), rel=1e-6)
    with pytest.raises(ValueError, match="prevalence must lie in"):
        calibration.prior_weight(0.0, 0.5)


def test_platt_recovers_known_parameters():
    truth, labels = simulated_voxels(count=300_000, seed=1)
    # A model whose log-odds are 2 x the truth's + 3: Platt must find slope 1/2, -3/2.
    model = calibration.sigmoid(2.0 * calibration.logit(truth) + 3.0)
    slope, intercept = calibration.fit_platt(model, labels)
    assert slope == pytest.approx(0.5, abs=0.03)
    assert intercept == pytest.approx(-1.5, abs=0.1)
    # The subsampled, reweighted fit of fit_calibration finds the same.
    fitted = calibration.fit_calibration("platt", model, labels, max_voxels=60_000)
    assert fitted.parameters["slope"] == pytest.approx(0.5, abs=0.05)
    assert fitted.parameters["intercept"] == pytest.approx(-1.5, abs=0.15)
    with pytest.raises(ValueError, match="both WMH and normal"):
        calibration.fit_platt(model[:10], np.zeros(10))


def test_ece_small_when_calibrated_large_when_balanced_and_corrected():
    truth, labels = simulated_voxels(seed=2)
    assert calibration.expected_calibration_error(truth, labels) < 0.01
    # Trained on balanced samples (share 0.5) the odds inflate by (1/1) / (pi / (1 - pi)).
    prevalence = labels.mean()
    balanced = calibration.prior_shift(truth, 1 / calibration.prior_weight(prevalence, 0.5))
    before = calibration.expected_calibration_error(balanced, labels)
    assert before > 0.1
    for method in ("prior", "platt"):
        fitted = calibration.fit_calibration(method, balanced, labels,
                                             sample_positive_share=0.5)
        assert fitted.validation_ece_before == pytest.approx(before)
        assert fitted.validation_ece_after < 0.01
        assert fitted.validation_prevalence == pytest.approx(prevalence)
    none = calibration.fit_calibration("none", balanced, labels)
    assert none.method == "none" and none.validation_ece_after == pytest.approx(before)


def test_reliability_bins_and_label_two_left_out():
    p = np.array([0.0, 0.05, 0.95, 1.0, 0.5])
    labels = np.array([0, 0, 1, 1, 2])
    curve = calibration.reliability(p, labels, bins=10)
    assert curve.counts.sum() == 4 and curve.counts[0] == 2 and curve.counts[9] == 2
    assert curve.observed[0] == 0.0 and curve.observed[9] == 1.0
    assert np.isnan(curve.mean_probability[5])  # the label-2 voxel's bin stays empty
    assert curve.ece() == pytest.approx((0.025 + 0.025) / 2)


def test_apply_is_safe_at_zero_and_one_and_keeps_the_brain():
    platt = calibration.Calibration("platt", {"slope": 0.7, "intercept": -2.0})
    p = np.array([[0.0, 1e-30, 1.0], [0.5, 1.0 - 1e-12, 0.3]], np.float32)
    out = platt.apply(p)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert out[0, 0] == 0.0 and 0.0 <= out.min() and out.max() <= 1.0
    assert np.all(np.diff(platt.apply(np.linspace(0.01, 1, 50))) >= 0)  # monotone
    brain = np.array([[True, True, True], [False, True, True]])
    assert platt.apply(p, brain)[1, 0] == 0.0
    assert calibration.Calibration().apply(p).tolist() == p.tolist()  # none: unchanged


def test_calibration_round_trips_through_the_contract():
    from wmh.config import ModelConfig

    fitted = calibration.Calibration("platt", {"slope": 0.61, "intercept": -3.2},
                                     validation_prevalence=0.013, sample_positive_share=0.5,
                                     validation_ece_before=0.2, validation_ece_after=0.004)
    contract = ModelContract(model=ModelConfig(), channels=("FLAIR",),
                                   inplane_spacing_mm=1.0, threshold=0.41,
                                   calibration=fitted.to_dict(), uncalibrated_threshold=0.985)
    loaded = ModelContract.from_json(contract.to_json(), "wmh_model.json")
    assert loaded == contract and loaded.calibrator() == fitted
    assert loaded.threshold_for(calibrated=False) == 0.985
    assert loaded.threshold_for(calibrated=True) == 0.41


def test_old_contract_without_calibration_loads_as_none():
    from wmh.config import ModelConfig

    values = json.loads(ModelContract(model=ModelConfig(), channels=("FLAIR",),
                                            inplane_spacing_mm=1.0, threshold=0.975).to_json())
    for key in ("calibration", "uncalibrated_threshold"):
        values.pop(key)
    contract = ModelContract.from_json(json.dumps(values), "old/wmh_model.json")
    assert contract.calibrator().method == "none"
    assert contract.threshold_for(calibrated=True) == contract.threshold_for(False) == 0.975
    p = np.array([0.0, 0.3, 0.99], np.float32)
    assert contract.calibrator().apply(p).tolist() == p.tolist()


def test_bad_calibration_in_a_contract_is_one_line():
    from wmh.errors import WMHError

    values = {"model": {}, "channels": ["FLAIR"], "inplane_spacing_mm": 1.0,
              "threshold": 0.5, "calibration": {"method": "isotonic", "parameters": {}}}
    with pytest.raises(WMHError, match=r"^m/wmh_model.json: not a valid wmh_model.json "
                                       r"\(calibration method 'isotonic' is not one of"):
        ModelContract.from_json(json.dumps(values), "m/wmh_model.json")


def test_config_rejects_an_unknown_method():
    from wmh.config import load_config
    from wmh.errors import WMHError

    assert load_config(None, []).train.calibration == "platt"
    assert load_config(None, ["train.calibration=none"]).train.calibration == "none"
    with pytest.raises(WMHError, match="config key 'train.calibration': 'isotonic' is not "
                                       "one of 'platt', 'prior', 'none'"):
        load_config(None, ["train.calibration=isotonic"])


def scan_voxels(prevalence, count=400_000, seed=0):
    """A scan's scores from known class densities (WMH ~ N(2, 1), normal ~ N(-1, 1)) and
    its labels at ``prevalence``; ``posterior(pi)`` is the exact P(WMH | score) at prior pi."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(count) < prevalence).astype(np.uint8)
    score = np.where(labels == 1, rng.normal(2.0, 1.0, count), rng.normal(-1.0, 1.0, count))
    log_ratio = -0.5 * (score - 2.0) ** 2 + 0.5 * (score + 1.0) ** 2

    def posterior(pi):
        return calibration.sigmoid(log_ratio + np.log(pi / (1 - pi)))
    return labels, posterior


@pytest.mark.parametrize("prevalence", [0.002, 0.05])
def test_prevalence_adaptation_finds_each_scans_own_prevalence(prevalence):
    source = 0.01  # the model is calibrated at the validation subjects' prevalence
    labels, posterior = scan_voxels(prevalence, seed=4)
    calibrated = posterior(source)
    adapted, estimate = calibration.adapt_prevalence(calibrated, source)
    assert estimate == pytest.approx(labels.mean(), rel=0.1)
    np.testing.assert_allclose(adapted, posterior(estimate), atol=1e-6)  # Bayes at pi
    before = calibration.expected_calibration_error(calibrated, labels)
    after = calibration.expected_calibration_error(adapted, labels)
    assert after < 0.004 < before
    # Within the scan the order of the voxels is kept: its ROC does not change.
    order = np.argsort(calibrated, kind="stable")
    assert np.all(np.diff(adapted[order]) >= 0)


def test_prevalence_adaptation_of_a_scan_without_wmh_and_of_no_voxel():
    labels, posterior = scan_voxels(0.0, seed=5)
    adapted, estimate = calibration.adapt_prevalence(posterior(0.01), 0.01)
    assert labels.sum() == 0 and estimate < 2e-4 and adapted.max() < posterior(0.01).max()
    empty, estimate = calibration.adapt_prevalence(np.zeros(0), 0.01)
    assert empty.size == 0 and estimate == 0.01
    with pytest.raises(ValueError, match="source prevalence must lie in"):
        calibration.adapt_prevalence(np.ones(3) / 2, 0.0)


def test_adaptation_applies_over_the_brain_mask_only_and_round_trips():
    labels, posterior = scan_voxels(0.05, count=20_000, seed=6)
    volume = np.zeros((2, 20_000), np.float32)
    volume[0] = posterior(0.01)
    brain = np.zeros(volume.shape, bool)
    brain[0] = True
    plain = calibration.Calibration("platt", {"slope": 1.0, "intercept": 0.0},
                                    validation_prevalence=0.01)
    adapted = dataclasses.replace(plain, adaptation="prevalence")
    assert plain.label() == "platt" and adapted.label() == "platt+prevalence"
    # Without the scan's brain mask nothing is adapted (as for each Monte Carlo pass).
    np.testing.assert_array_equal(adapted.apply(volume), plain.apply(volume))
    result = adapted.apply(volume, brain)
    _, estimate = calibration.adapt_prevalence(volume[0], 0.01)
    np.testing.assert_allclose(result[0], posterior(estimate), atol=1e-5)
    assert estimate == pytest.approx(labels.mean(), rel=0.15)
    assert not result[1].any()  # outside the brain: 0
    assert calibration.Calibration.from_dict(adapted.to_dict()) == adapted
    with pytest.raises(ValueError, match="adaptation 'prevalence' needs a "
                                         "validation_prevalence in \\(0, 1\\), got None"):
        calibration.Calibration("none", adaptation="prevalence")
    with pytest.raises(ValueError, match="adaptation 'scanner' is not one of none, prevalence"):
        calibration.Calibration("none", adaptation="scanner")


def test_config_adapt_prevalence_is_a_boolean_off_by_default():
    from wmh.config import load_config
    from wmh.errors import WMHError

    assert load_config(None, []).train.adapt_prevalence is False
    assert load_config(None, ["train.adapt_prevalence=true"]).train.adapt_prevalence is True
    with pytest.raises(WMHError, match="train.adapt_prevalence"):
        load_config(None, ["train.adapt_prevalence=often"])
