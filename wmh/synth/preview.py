"""PNG montage of a synthetic subject: FLAIR, T1, observer 1 and observer 2 (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wmh.io import atomic_output


def _slices(observer1: np.ndarray, count: int = 5) -> list[int]:
    """Axial slices spread over the lesion-bearing range (the middle of the volume if none)."""
    z = np.flatnonzero((observer1 == 1).any(axis=(0, 1)))
    n = observer1.shape[2]
    lo, hi = (int(z.min()), int(z.max())) if z.size else (int(0.35 * n), int(0.75 * n))
    chosen = set(int(round(v)) for v in np.linspace(lo, hi, count))
    other = (observer1 == 2).sum(axis=(0, 1))
    if other.any():  # show the other pathology (infarct) where it is largest
        chosen.add(int(np.argmax(other)))
    return sorted(chosen)


def montage(flair: np.ndarray, t1: np.ndarray | None, observer1: np.ndarray,
            observer2: np.ndarray, hard_negatives: np.ndarray | None, flair_affine: np.ndarray,
            t1_affine: np.ndarray | None, path: Path, title: str = "") -> Path:
    """Rows: FLAIR, T1 (its own nearest axial slice by world z), FLAIR with observer 1
    (red; hard negatives cyan, other pathology yellow), FLAIR with observer 2 (magenta).
    All arrays in working (RAS) orientation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = _slices(observer1)
    rows = 4 if t1 is not None else 3
    fig, axes = plt.subplots(rows, len(ks), figsize=(2.6 * len(ks), 2.9 * rows),
                             squeeze=False, facecolor="black")
    vmax = float(np.percentile(flair, 99.7))
    for column, k in enumerate(ks):
        image = flair[:, :, k].T
        panels = [("FLAIR", None)]
        if t1 is not None:
            panels.append(("T1", None))
        panels += [("observer 1", observer1), ("observer 2", observer2)]
        for row, (name, labels) in enumerate(panels):
            axis = axes[row, column]
            if name == "T1":
                world_z = (flair_affine @ [flair.shape[0] / 2, flair.shape[1] / 2, k, 1])[2]
                kt = int(np.clip(round((world_z - t1_affine[2, 3]) / t1_affine[2, 2]), 0,
                                 t1.shape[2] - 1))
                axis.imshow(t1[:, :, kt].T, origin="lower", cmap="gray",
                            vmax=float(np.percentile(t1, 99.7)))
            else:
                axis.imshow(image, origin="lower", cmap="gray", vmax=vmax)
            if labels is not None:
                colour = "red" if name == "observer 1" else "magenta"
                axis.contour((labels[:, :, k] == 1).T, levels=[0.5], colors=colour,
                             linewidths=0.6)
                axis.contour((labels[:, :, k] == 2).T, levels=[0.5], colors="yellow",
                             linewidths=0.6)
                if name == "observer 1" and hard_negatives is not None:
                    axis.contour(hard_negatives[:, :, k].T, levels=[0.5], colors="cyan",
                                 linewidths=0.6)
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(name, color="white")
    fig.suptitle(title, color="white")
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_output(path) as temporary:
            fig.savefig(temporary, dpi=80, facecolor="black")
    finally:
        plt.close(fig)
    return path


def write_preview(result, path: Path) -> Path:
    """Montage of a freshly generated :class:`~wmh.synth.subject.SubjectResult`."""
    t1_affine = result.t1_grid.working_affine if result.t1_grid is not None else None
    return montage(result.flair, result.t1, result.observer1, result.observer2,
                   result.hard_negatives, result.flair_grid.working_affine, t1_affine, path,
                   title=f"{result.subject_id} (synthetic)")


def preview_from_files(folder: Path, path: Path) -> Path:
    """Montage of a subject already on disk (challenge layout)."""
    from wmh.io import load_image, load_labels

    folder = Path(folder)
    flair, grid = load_image(folder / "orig" / "FLAIR.nii.gz")
    t1 = t1_grid = None
    if (folder / "orig" / "T1.nii.gz").exists():
        t1, t1_grid = load_image(folder / "orig" / "T1.nii.gz")
    observer1, _ = load_labels(folder / "wmh.nii.gz", grid)
    observer2, _ = load_labels(folder / "wmh_observer2.nii.gz", grid)
    hard = None
    if (folder / "truth" / "hard_negatives.nii.gz").exists():
        hard, _ = load_labels(folder / "truth" / "hard_negatives.nii.gz", grid)
    return montage(flair, t1, observer1, observer2, hard, grid.working_affine,
                   t1_grid.working_affine if t1_grid is not None else None, path,
                   title=f"{folder.name} (synthetic)")
