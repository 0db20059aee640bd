"""Acquisition profiles: how a synthetic scanner samples the FLAIR and the T1.

A profile fixes the FLAIR grid (in-plane spacing, slice thickness and gap, matrix, number
of slices, stored orientation, obliquity, 2D slice profile or 3D) and the T1 grid. The
``mixed`` profile draws one of the scanner profiles per subject, with jittered spacing,
so a model can be trained to generalise across scanners.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class AcquisitionProfile:
    """One synthetic scanner protocol (all lengths in mm).

    Attributes:
        name: profile name (the site folder is ``synth-<name>``).
        inplane_mm: FLAIR voxel size along working x (left-right) and y (anterior-posterior).
        matrix: FLAIR in-plane matrix (x, y).
        thickness_mm: FLAIR slice thickness (the slice profile's width).
        gap_mm: gap between slices; slice spacing = thickness + gap.
        slices: number of FLAIR slices.
        orientation: stored voxel axis codes of the FLAIR file, e.g. 'RAS', 'LPS'.
        oblique_degrees: tilt of the slices about the left-right axis (AC-PC angulation).
        three_d: True for a 3D FLAIR (no slice profile blur; thickness = spacing).
        t1_mm: T1 voxel size (isotropic).
        t1_matrix: T1 matrix (x, y, z).
        t1_orientation: stored voxel axis codes of the T1 file.
        snr: (low, high) range of the FLAIR white-matter signal-to-noise ratio.
        plane: the acquired slice plane, 'axial', 'coronal' or 'sagittal': the slices are
            stacked along working z, y or x; ``inplane_mm`` and ``matrix`` give the two
            other axes in x, y, z order.
        neck: the head continues below the skull (neck and shoulders tissue).
        fov_shift_mm: the field of view's centre moved this far along the superior axis
            (negative: towards the neck).
    """

    name: str
    inplane_mm: tuple[float, float] = (1.2, 1.0)
    matrix: tuple[int, int] = (192, 232)
    thickness_mm: float = 5.0
    gap_mm: float = 1.0
    slices: int = 26
    orientation: str = "RAS"
    oblique_degrees: float = 0.0
    three_d: bool = False
    t1_mm: float = 1.0
    t1_matrix: tuple[int, int, int] = (184, 220, 180)
    t1_orientation: str = "RAS"
    snr: tuple[float, float] = (14.0, 26.0)
    plane: str = "axial"
    neck: bool = False
    fov_shift_mm: float = 0.0

    @property
    def site(self) -> str:
        return f"synth-{self.name}"

    @property
    def slice_spacing_mm(self) -> float:
        return self.thickness_mm + self.gap_mm

    @property
    def slice_axis(self) -> int:
        """The working (RAS) axis the slices are stacked along."""
        return {"axial": 2, "coronal": 1, "sagittal": 0}[self.plane]

    def _by_axis(self, inplane, across):
        values = list(inplane)
        values.insert(self.slice_axis, across)
        return values

    @property
    def flair_spacing(self) -> np.ndarray:
        return np.array(self._by_axis(self.inplane_mm, self.slice_spacing_mm), dtype=float)

    @property
    def flair_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self._by_axis(self.matrix, self.slices))


PROFILES: dict[str, AcquisitionProfile] = {
    # The paper's RUN DMC protocol: 1.5 T, 1.2 x 1.0 mm in plane, 5 mm slices, 1 mm gap.
    "default": AcquisitionProfile("default"),
    # Thick-slice clinical routine: 512 x 512 reconstruction, 8 mm slices, LPS storage.
    "clinical-thick": AcquisitionProfile(
        "clinical-thick", inplane_mm=(0.47, 0.47), matrix=(512, 512), thickness_mm=7.0,
        gap_mm=1.0, slices=18, orientation="LPS", t1_orientation="LPS", snr=(12.0, 22.0)),
    # 3 T research protocol, 3 mm contiguous slices (like the challenge's Utrecht site).
    "research-3t": AcquisitionProfile(
        "research-3t", inplane_mm=(0.96, 0.96), matrix=(240, 240), thickness_mm=3.0,
        gap_mm=0.0, slices=48, orientation="LAS", t1_mm=1.0, t1_orientation="LAS",
        snr=(18.0, 32.0)),
    # Oblique (AC-PC angled) 4 mm slices, LPS storage.
    "oblique": AcquisitionProfile(
        "oblique", inplane_mm=(0.9, 0.9), matrix=(256, 256), thickness_mm=4.0, gap_mm=0.4,
        slices=36, orientation="LPS", oblique_degrees=15.0, t1_orientation="PIR",
        snr=(15.0, 28.0)),
    # 3D FLAIR, near isotropic (like the challenge's Amsterdam GE site).
    "flair-3d": AcquisitionProfile(
        "flair-3d", inplane_mm=(1.0, 1.0), matrix=(192, 232), thickness_mm=1.2, gap_mm=0.0,
        slices=132, orientation="RAS", three_d=True, t1_orientation="ASL", snr=(16.0, 30.0)),
    # Clinical 1.5 T axial 2D FLAIR with skull, neck and shoulders in the field of view
    # (0.9 x 0.9 x 6.5 mm, LAS), the case atlas registration used to fail on.
    "clinical-neck": AcquisitionProfile(
        "clinical-neck", inplane_mm=(0.9, 0.9), matrix=(256, 256), thickness_mm=6.0,
        gap_mm=0.5, slices=36, orientation="LAS", t1_orientation="LAS", snr=(12.0, 22.0),
        neck=True, fov_shift_mm=-25.0),
    # Coronal 2D FLAIR: 5 mm slices along anterior-posterior, 0.9 x 0.9 mm in plane (L-R,
    # S-I), stored LIP (slices last).
    "coronal": AcquisitionProfile(
        "coronal", inplane_mm=(0.9, 0.9), matrix=(200, 200), thickness_mm=5.0, gap_mm=0.5,
        slices=36, orientation="LIP", plane="coronal", t1_orientation="RAS",
        snr=(14.0, 26.0)),
    # Sagittal 2D FLAIR: 4 mm slices along left-right, 0.9 x 0.9 mm in plane (A-P, S-I),
    # stored PIL (slices last).
    "sagittal": AcquisitionProfile(
        "sagittal", inplane_mm=(0.9, 0.9), matrix=(240, 200), thickness_mm=4.0, gap_mm=0.4,
        slices=36, orientation="PIL", plane="sagittal", t1_orientation="RAS",
        snr=(14.0, 26.0)),
    # Small and coarse, for fast tests: not a real protocol.
    "test": AcquisitionProfile(
        "test", inplane_mm=(2.0, 2.0), matrix=(96, 116), thickness_mm=5.0, gap_mm=1.0,
        slices=26, t1_mm=2.0, t1_matrix=(88, 108, 90)),
    # The test profile acquired coronally (slices along anterior-posterior), for tests.
    "test-coronal": AcquisitionProfile(
        "test-coronal", inplane_mm=(2.0, 2.0), matrix=(96, 96), thickness_mm=5.0, gap_mm=1.0,
        slices=34, t1_mm=2.0, t1_matrix=(88, 108, 90), plane="coronal", orientation="LIP"),
}
MIXED = "mixed"  # draws one of MIXED_CHOICES per subject, with jitter
MIXED_CHOICES = ("default", "clinical-thick", "research-3t", "oblique", "flair-3d")
RANDOMISED = "randomised"  # domain randomisation per subject (wmh.synth.randomised)
PROFILE_NAMES = tuple(PROFILES) + (MIXED, RANDOMISED)


def draw_profile(name: str, rng: np.random.Generator) -> AcquisitionProfile:
    """The profile for one subject: ``name`` itself, or for ``mixed`` a randomly chosen
    scanner profile with in-plane spacing, thickness and obliquity jittered."""
    if name != MIXED:
        return PROFILES[name]
    base = PROFILES[MIXED_CHOICES[int(rng.integers(len(MIXED_CHOICES)))]]
    if base.three_d:
        return base
    scale = float(rng.uniform(0.9, 1.1))
    inplane = tuple(round(v * scale, 3) for v in base.inplane_mm)
    # keep the field of view: the matrix follows the spacing
    matrix = tuple(int(math.ceil(n * v / w / 2) * 2) for n, v, w in
                   zip(base.matrix, base.inplane_mm, inplane))
    thickness = round(float(np.clip(base.thickness_mm * rng.uniform(0.8, 1.2), 1.0, 8.0)), 2)
    coverage = base.slices * base.slice_spacing_mm
    slices = int(math.ceil(coverage / (thickness + base.gap_mm)))
    oblique = round(base.oblique_degrees + float(rng.uniform(-5, 5)), 2)
    return dataclasses.replace(base, inplane_mm=inplane, matrix=matrix, thickness_mm=thickness,
                               slices=slices, oblique_degrees=oblique)


_OPTIONAL_DEFAULTS = {"plane": "axial", "neck": False, "fov_shift_mm": 0.0}


def profile_as_dict(profile: AcquisitionProfile, resolved_from: Optional[str] = None) -> dict:
    values = dataclasses.asdict(profile)
    for name, default in _OPTIONAL_DEFAULTS.items():  # older cohorts' records stay the same
        if values[name] == default:
            del values[name]
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    if resolved_from is not None:
        values["drawn_from"] = resolved_from
    return values
