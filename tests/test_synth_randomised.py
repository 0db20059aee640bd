"""The randomised synthetic profile: the parameter sampler's ranges and variety (no
rendering), the heavy-tailed load, reproducibility, lesion contrast in a rendered subject,
lesion placement that never reads the WMH prior, and the cohort's own synth version."""

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from wmh.config import SynthConfig
from wmh.synth import PROFILES, synthesize_cohort
from wmh.synth import cohort as cohort_module
from wmh.synth import randomised as rz
from wmh.synth.anatomy import get_anatomy
from wmh.synth.pathology import Overlay
from wmh.synth.subject import generate_subject, randomised_contrast

CACHE = str(Path(__file__).resolve().parents[1] / "data_cache")
DRAWS = 400


@pytest.fixture(scope="module")
def anatomy():
    return get_anatomy(CACHE)


@pytest.fixture(scope="module")
def draws():
    rng = np.random.default_rng(7)
    return [rz.draw_randomisation(rng) for _ in range(DRAWS)]


def _inside(value, limits):
    return limits[0] - 1e-6 <= value <= limits[1] + 1e-6


def test_drawn_parameters_stay_in_their_ranges(draws):
    for r in draws:
        a = r.acquisition
        inplane = rz.INPLANE_3D_MM if a.three_d else rz.INPLANE_2D_MM
        thickness = rz.THICKNESS_3D_MM if a.three_d else rz.THICKNESS_2D_MM
        assert all(_inside(s, inplane) for s in a.inplane_mm), a
        assert _inside(a.thickness_mm, thickness) and 1.0 <= a.thickness_mm <= 8.0
        assert 0 <= a.gap_mm <= rz.GAP_FRACTION[1] * a.thickness_mm + 1e-6
        assert max(a.matrix) <= rz.MAX_MATRIX
        assert np.prod(a.flair_shape) <= rz.MAX_VOXELS
        assert _inside(a.oblique_degrees, rz.OBLIQUE_DEGREES)
        for name, limits in rz.FLAIR_LEVELS.items():
            assert _inside(r.flair[name], limits), name
        assert r.flair["wm"] == 1.0
        assert _inside(r.gamma, rz.GAMMA) and _inside(r.lesion_contrast, rz.LESION_CONTRAST)
        assert _inside(r.snr, rz.SNR) and _inside(r.bias_amplitude, rz.BIAS_AMPLITUDE)
        assert _inside(r.head_scale, rz.HEAD_SCALE) and _inside(r.atrophy, rz.ATROPHY)
        assert _inside(r.warp_amplitude_mm, rz.WARP_AMPLITUDE_MM)
        assert _inside(r.sulcal_widening, rz.SULCAL_WIDENING)
        assert _inside(r.load_ml, rz.LOAD_RANGE_ML)
        assert abs(sum(r.shares.values()) - 1) < 1e-9
        assert r.lesion_flair ** r.gamma == pytest.approx(r.lesion_contrast)
    # the ranges are used, not just respected
    contrast = [r.lesion_contrast for r in draws]
    assert min(contrast) < 1.15 and max(contrast) > 2.3
    # weighted towards subtle lesions (version 6): the excess over WM is log-uniform, so
    # ln(5) / ln(16) = 58 % lie below x1.5 (a log-uniform contrast would put 36 % there)
    assert 0.5 < np.mean(np.array(contrast) < 1.5) < 0.66
    spacing = [min(r.acquisition.inplane_mm) for r in draws]
    assert min(spacing) < 0.5 and max(spacing) > 1.2
    thickness = [r.acquisition.thickness_mm for r in draws]
    assert min(thickness) < 1.2 and max(thickness) > 7.5
    snr = [r.snr for r in draws]
    assert min(snr) < 7 and max(snr) > 45
    assert max(r.head_scale for r in draws) > 1.12 and min(r.head_scale for r in draws) < 0.88
    assert any(r.acquisition.gap_mm > 0 for r in draws)
    assert any(r.acquisition.gap_mm == 0 for r in draws if not r.acquisition.three_d)


def test_orientation_plane_and_skull_vary(draws):
    acquisitions = [r.acquisition for r in draws]
    assert {a.plane for a in acquisitions} == {"axial", "coronal", "sagittal"}
    assert {a.slice_axis for a in acquisitions} == {0, 1, 2}
    assert {a.three_d for a in acquisitions} == {True, False}
    assert {a.neck for a in acquisitions} == {True, False}
    assert {r.skull for r in draws} == set(rz.SKULL_STATES)
    assert {r.pattern for r in draws} == set(rz.PATTERNS)
    orientations = {a.orientation for a in acquisitions}
    assert len(orientations) >= 30
    for codes in orientations:  # every code is a valid axis code set
        assert sorted(set(codes) & set("LR")) and sorted(set(codes) & set("PA"))
        assert sorted(set(codes) & set("IS"))


def test_load_is_heavy_tailed_from_zero_to_150_ml():
    rng = np.random.default_rng(3)
    loads = np.array([rz.draw_load_ml(rng) for _ in range(5000)])
    assert loads.min() == 0.0 and loads.max() <= 150.0
    assert 0.03 < (loads == 0).mean() < 0.12
    positive = loads[loads > 0]
    median = np.median(positive)
    assert np.percentile(positive, 99) / median > 15  # heavy right tail
    assert positive.mean() > 1.8 * median
    assert (loads >= 50).mean() > 0.02 and (loads >= 149.9).sum() >= 1


def test_sampler_is_reproducible_per_seed():
    first = rz.draw_randomisation(np.random.default_rng(11))
    again = rz.draw_randomisation(np.random.default_rng(11))
    other = rz.draw_randomisation(np.random.default_rng(12))
    assert first == again and first != other


def test_voxel_cap_coarsens_large_grids():
    rng = np.random.default_rng(0)
    capped = []
    for _ in range(100):
        a, was_capped = rz.draw_acquisition(rng, max_voxels=300_000)
        assert np.prod(a.flair_shape) <= 300_000
        assert max(a.inplane_mm) <= rz.INPLANE_2D_MM[1] + 1e-6
        capped.append(was_capped)
    assert all(capped)
    a, was_capped = rz.draw_acquisition(np.random.default_rng(0), max_voxels=10 ** 9)
    assert not was_capped


def _small(randomisation, **changes):
    """The randomisation on the coarse test grid (fast), with ``changes``."""
    grid = dataclasses.replace(PROFILES["test"], name=rz.RANDOMISED,
                               orientation=randomisation.acquisition.orientation)
    return dataclasses.replace(randomisation, acquisition=grid, **changes)


def test_rendered_subject_is_reproducible(anatomy):
    r = _small(rz.draw_randomisation(np.random.default_rng(5)), load_ml=8.0)
    first = generate_subject("s000", 21, r.acquisition, anatomy, flair_only=True,
                             randomisation=r)
    again = generate_subject("s000", 21, r.acquisition, anatomy, flair_only=True,
                             randomisation=r)
    for name in ("flair", "observer1", "observer2", "hard_negatives"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    # the hard negatives and the second observer are kept
    assert first.hard_negatives.sum() > 0
    assert (first.observer1 == 1).sum() > 0
    assert not np.array_equal(first.observer1, first.observer2)


def _lesion_and_white_matter(anatomy, contrast: float, gamma: float, snr: float):
    """A mixed-pattern 25 mL subject on the test grid without bias: its FLAIR, its
    observer-1 lesion voxels and white matter away from lesions and hard negatives."""
    base = rz.draw_randomisation(np.random.default_rng(9))
    r = _small(base, load_ml=25.0, pattern="mixed", shares=rz._shares(
        np.random.default_rng(1), "mixed"), lesion_contrast=contrast, gamma=gamma, snr=snr,
               bias_amplitude=0.0, skull="present")
    result = generate_subject("s000", 4, r.acquisition, anatomy, flair_only=True,
                              randomisation=r)
    lesion = result.observer1 == 1
    assert lesion.sum() > 100
    voxel = np.moveaxis(result.mni_coordinates, -1, 0) - anatomy.affine[:3, 3].reshape(3, 1, 1, 1)
    wm = ndi.map_coordinates(anatomy.wm, voxel, order=1) > 0.95
    wm &= ~ndi.binary_dilation(lesion | result.hard_negatives, iterations=2)
    return result.flair, lesion, wm


@pytest.mark.parametrize("contrast", [1.12, 2.0])
def test_labelled_voxels_are_hyperintense(anatomy, contrast):
    flair, lesion, wm = _lesion_and_white_matter(anatomy, contrast, gamma=1.0, snr=60.0)
    ratio = flair[lesion].mean() / flair[wm].mean()
    assert ratio > 1.0
    if contrast > 1.5:
        assert ratio > 1.3


def test_subtle_lesions_are_hyperintense_voxel_by_voxel(anatomy):
    """Version 5: at the subtlest contrast and the strongest gamma, labelled voxels are
    brighter than white matter but for partial-volume edges (version 4 scaled the level
    itself, so part of each lesion was WM-dark yet labelled)."""
    flair, lesion, wm = _lesion_and_white_matter(anatomy, rz.LESION_CONTRAST[0],
                                                 gamma=rz.GAMMA[1], snr=rz.SNR[1])
    brighter = flair[lesion] > np.median(flair[wm])
    assert brighter.mean() > 0.83  # version 4 on this subject: 0.785


def test_lesion_level_keeps_the_excess_positive():
    contrast = rz.Contrast(wmh_flair=1.05, wmh_t1=0.8, csf_flair=0.1, csf_t1=0.3)
    levels = rz.lesion_level(contrast, np.array([-1.0, 0.0, 0.75, 1.15]))
    assert np.all(levels > 1.0)
    assert levels[2] == pytest.approx(1.0375) and levels[3] == pytest.approx(1.0575)


def test_a_share_of_subjects_gets_a_heavy_confluent_load_on_top(draws):
    heavy = np.array([r.heavy_confluent_ml for r in draws])
    drawn = heavy[heavy > 0]
    assert 0.08 < drawn.size / len(draws) < 0.23  # HEAVY_CONFLUENT_P = 0.15
    assert drawn.min() >= rz.HEAVY_CONFLUENT_ML[0] - 1e-6
    assert drawn.max() <= rz.HEAVY_CONFLUENT_ML[1] + 1e-6
    assert np.median(drawn) < 70  # log-uniform: more towards the low end
    # the extra draw comes last: every other parameter is the one version 6 drew
    rng = np.random.default_rng(7)
    first = rz.draw_randomisation(rng)
    assert first.load_ml == draws[0].load_ml and first.shares == draws[0].shares


def test_heavy_confluent_load_is_one_large_periventricular_lesion(anatomy):
    from scipy import ndimage

    rng = np.random.default_rng(5)
    r = dataclasses.replace(rz.draw_randomisation(rng), load_ml=2.0, pattern="ms",
                            shares=rz._shares(rng, "ms"), heavy_confluent_ml=60.0)
    overlay = Overlay.empty(anatomy.shape)
    summary = rz.place_randomised_wmh(rng, anatomy, overlay, r,
                                      randomised_contrast(rng, r).lesion)
    lesion = overlay.wmh >= 0.5
    assert 40.0 < summary["heavy_confluent_ml"] < 80.0, summary
    assert summary["target_ml"] == pytest.approx(62.0)
    components, count = ndimage.label(lesion)
    largest = np.bincount(components.ravel())[1:].max() / 1000  # mL at 1 mm
    assert largest > 15.0, (largest, count)
    near = lesion & (anatomy.d_ventricles <= 12)
    assert near.sum() > 0.6 * lesion.sum()


def test_placement_never_reads_the_wmh_prior(anatomy, monkeypatch):
    from wmh import location

    def forbidden(*args, **kwargs):
        raise AssertionError("the WMH prior was read")

    class Forbidden:
        def __getattr__(self, name):
            forbidden()

        def __array__(self, *args, **kwargs):
            forbidden()

        def __getitem__(self, key):
            forbidden()

    monkeypatch.setattr(location, "load_prior", forbidden)
    monkeypatch.setattr(location, "_load_prior_file", forbidden)
    blind = dataclasses.replace(anatomy, prior=Forbidden())
    rng = np.random.default_rng(2)
    for pattern in rz.PATTERNS:
        r = dataclasses.replace(rz.draw_randomisation(rng), load_ml=20.0, pattern=pattern,
                                shares=rz._shares(rng, pattern), heavy_confluent_ml=0.0)
        overlay = Overlay.empty(anatomy.shape)
        summary = rz.place_randomised_wmh(rng, blind, overlay, r,
                                          randomised_contrast(rng, r).lesion)
        placed = (overlay.wmh >= 0.5).sum() / 1000
        assert 8.0 < placed < 60.0, (pattern, placed, summary)
        assert summary["pattern"] == pattern


def test_ms_pattern_places_infratentorial_and_juxtacortical_lesions(anatomy):
    rng = np.random.default_rng(4)
    r = dataclasses.replace(rz.draw_randomisation(rng), load_ml=30.0, pattern="ms",
                            shares=rz._shares(rng, "ms"), heavy_confluent_ml=0.0)
    overlay = Overlay.empty(anatomy.shape)
    rz.place_randomised_wmh(rng, anatomy, overlay, r, randomised_contrast(rng, r).lesion)
    lesion = overlay.wmh >= 0.5
    assert (lesion & rz.infratentorial_region(anatomy)).sum() > 50
    assert (lesion & rz.juxtacortical_region(anatomy)).sum() > 200
    assert "confluent_ml" not in r.shares or r.shares["confluent"] == 0


def test_randomised_cohort_records_its_own_version(tmp_path, monkeypatch):
    monkeypatch.setattr(cohort_module, "draw_randomisation",
                        lambda rng: rz.draw_randomisation(rng, max_voxels=150_000))
    out = synthesize_cohort(tmp_path / "c", SynthConfig(subjects=2, seed=3, profile="randomised",
                                                       flair_only=True), cache_dir=CACHE)
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort["synth_version"] == rz.RANDOMISED_SYNTH_VERSION
    assert cohort["arguments"]["synth_version"] == rz.RANDOMISED_SYNTH_VERSION
    assert cohort_module.synth_version("default") == cohort_module.SYNTH_VERSION
    assert rz.RANDOMISED_SYNTH_VERSION != cohort_module.SYNTH_VERSION
    ranges = cohort["generator"]["profile"]["randomised"]
    assert ranges["snr"] == list(rz.SNR) and ranges["max_voxels"] == rz.MAX_VOXELS
    for record in cohort["subjects"]:
        assert record["site"] == "synth-randomised"
        drawn = record["randomisation"]
        assert set(drawn) >= {"gamma", "snr", "skull", "load_ml", "lesion_contrast"}
        image = nib.load(str(out / record["files"]["flair"]))
        assert "".join(nib.aff2axcodes(image.affine)) == record["acquisition"]["orientation"]


def test_coverage_summarises_draws():
    summary = rz.sampler_coverage(300, seed=1)
    assert summary["subjects"] == 300
    assert sum(summary["thickness_mm"]["histogram"]["counts"]) == 300
    assert sum(summary["load_ml"]["histogram"]["counts"]) == 300
    heavy = summary["heavy_confluent_ml"]["histogram"]["counts"]
    assert sum(heavy) == 300 and 0.08 < sum(heavy[1:]) / 300 < 0.23  # 15 % get one
    assert set(summary["plane"]) == {"axial", "coronal", "sagittal"}
    assert abs(sum(summary["skull"].values()) - 1) < 0.01
    assert 0.15 < summary["three_d_fraction"] < 0.45 and 0.2 < summary["neck_fraction"] < 0.5
    assert summary["snr"]["min"] >= rz.SNR[0] and summary["snr"]["max"] <= rz.SNR[1]
    assert summary["distinct_orientations"] >= 30
