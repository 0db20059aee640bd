"""The QC image: exact threshold in the title, true aspect, radiological labels, slices
evenly spaced through the brain, the probability row and the periventricular outline."""

import numpy as np
import pytest

from wmh.segment import QCVolumes, qc_figure, qc_slices
from wmh.segment.measures import ventricle_distance
from wmh.segment.subject import qc_title


def _volumes(spacing=(1.0, 2.0, 5.0)):
    shape = (30, 20, 40)
    brain = np.zeros(shape, bool)
    brain[5:25, 3:17, 10:31] = True  # z extent 10..30
    ventricles = np.zeros(shape, np.uint8)
    ventricles[14:16, 8:12, 15:25] = 1
    rng = np.random.default_rng(0)
    flair = np.where(brain, 0.5 + 0.1 * rng.random(shape), 0).astype(np.float32)
    probability = np.where(brain, rng.random(shape), 0).astype(np.float32)
    return QCVolumes(flair=flair, mask=probability >= 0.9, probability=probability,
                     brain=brain, spacing=np.array(spacing),
                     ventricle_distance=ventricle_distance(ventricles, spacing),
                     periventricular_mm=4.0)


def test_slices_are_evenly_spaced_through_the_brain():
    brain = np.zeros((8, 8, 60), bool)
    brain[2:6, 2:6, 12:43] = True  # extent 12..42
    chosen = qc_slices(brain, 5)
    np.testing.assert_array_equal(chosen, [17, 22, 27, 32, 37])
    assert np.all(np.diff(chosen) == 5)
    assert len(qc_slices(np.zeros((4, 4, 9), bool), 3)) == 3  # empty mask: whole volume


def test_title_has_the_exact_threshold():
    report = {"subject_id": "s002", "threshold": np.float64(0.995), "total_ml": 1.234,
              "periventricular_ml": 1.0, "deep_ml": 0.234, "lesion_count": 3,
              "brain_ml": 1100.4}
    title = qc_title(report)
    assert "threshold 0.995 " in title and "0.99 " not in title
    assert title.startswith("s002: ") and "1.23 mL" in title and "3 lesions" in title
    report["threshold"] = 0.98765432
    assert "threshold 0.98765432 " in qc_title(report)


def test_figure_aspect_labels_rows_and_outline():
    volumes = _volumes(spacing=(1.0, 2.0, 5.0))
    figure = qc_figure(volumes, "s1: threshold 0.995", n_slices=4)
    images = [axis for axis in figure.axes if axis.images]
    assert len(images) == 8  # two rows of four slices
    for axis in images:
        assert axis.get_aspect() == pytest.approx(2.0)  # pixel height (y 2 mm) / width (x 1)
        texts = {text.get_text(): text.get_position()[0] for text in axis.texts}
        assert texts["R"] < 0.5 < texts["L"]  # radiological: patient's right on the left
    assert figure._suptitle.get_text() == "s1: threshold 0.995"
    top, bottom = images[:4], images[4:]
    assert [axis.get_title() for axis in top] == [f"z={z}" for z in qc_slices(volumes.brain, 4)]
    assert all(axis.images[0].get_cmap().name == "magma" for axis in bottom)
    assert all(axis.collections for axis in bottom[1:3])  # the band outline (contour)
    assert len(figure.axes) == 9  # the colour bar
    # Radiological orientation of the pixels: high x (the patient's right) on the left.
    z = qc_slices(volumes.brain, 4)[0]
    shown = top[0].images[0].get_array()
    np.testing.assert_array_equal(shown[-1, 0], volumes.flair[-1, 0, z])  # x max, y min
