"""One subject through the model: prepare, infer, write every output (with stage times)."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from wmh import __version__, io
from wmh.config import PreprocessConfig, SegmentConfig
from wmh.errors import WMHError
from wmh.models.precision import check_precision, resolve_precision
from wmh.segment import measures, outputs
from wmh.segment.layouts import REPORT_FILE, get_layout
from wmh.segment.qc import QCVolumes, qc_figure

MASK_RULE = "wmh_probability >= threshold, inside brain_mask"


@dataclasses.dataclass(frozen=True)
class SegmentOptions(SegmentConfig):
    """How ``wmh segment`` runs: the config's ``segment`` section (threshold, mc_samples,
    periventricular_mm, precision: :class:`wmh.config.SegmentConfig`, whose fields it
    inherits) plus what only the command sets. Every field whose metadata does not say
    ``result: False`` changes the outputs, so it is recorded in report.json and a subject
    done with other values is segmented again."""

    overwrite: bool = dataclasses.field(  # redo subjects already done with these settings
        default=False, metadata={"result": False})
    layout: str = dataclasses.field(  # 'folders' (OUT/<id>/) or 'bids' (derivatives)
        default="folders", metadata={"result": False})
    # None: the model's calibration of P(WMH) and its threshold; "none": the network's
    # uncorrected output (the paper's) and the model's uncalibrated threshold
    calibration: Optional[str] = None

    @classmethod
    def from_config(cls, config: SegmentConfig) -> "SegmentOptions":
        return cls(**{field.name: getattr(config, field.name)
                      for field in dataclasses.fields(SegmentConfig)})

    def validate(self) -> None:
        """One-line WMHError naming the first bad option."""
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise WMHError(f"--threshold {self.threshold}: must lie in [0, 1]")
        if self.mc_samples < 0:
            raise WMHError(f"--mc-samples {self.mc_samples}: must be 0 or more")
        if not self.periventricular_mm > 0:
            raise WMHError(f"--periventricular-mm {self.periventricular_mm}: must be more "
                           "than 0")
        get_layout(self.layout)
        check_precision(self.precision, "--precision")
        if self.calibration not in (None, "none"):
            raise WMHError(f"--calibration {self.calibration}: must be 'none' or not given")

    def calibration_for(self, contract):
        """The :class:`wmh.calibration.Calibration` applied: the model's, or none."""
        from wmh.calibration import Calibration

        return contract.calibrator() if self.calibration is None else Calibration()

    def settings(self, contract) -> dict:
        """The settings that shape the outputs, the threshold and calibration resolved
        for the model (:class:`wmh.contract.ModelContract`)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                  if field.metadata.get("result", True)}
        values["calibration"] = self.calibration_for(contract).label()
        if values["threshold"] is None:
            values["threshold"] = contract.threshold_for(calibrated=self.calibration is None)
        values["precision"] = resolve_precision(self.precision, "inference")  # as run
        return values


@dataclasses.dataclass
class SegmentModel:
    """A trained model and where it came from.

    Attributes:
        source: as the user gave it (folder, model file or URI).
        folder: the local model folder.
        contract: its :class:`wmh.contract.ModelContract`.
        sha256: SHA-256 of its weights file (model.keras or forest.skops).
        version: a shipped model's version (``pretrained.json``); None for others.
        model: the loaded patch model (None until :meth:`load`); ``network`` its dense twin.
    """

    source: str
    folder: Path
    contract: object
    sha256: str
    weights_file: str
    version: Optional[str] = None
    model: object = None
    network: object = None

    # (thread, outcome) of load_in_background, where outcome["error"] is what it raised
    _loading: Optional[tuple] = dataclasses.field(default=None, repr=False, compare=False)

    def load(self) -> "SegmentModel":
        """Loads the weights and builds the dense twin (once); after
        :meth:`load_in_background`, waits for that and raises what it raised.

        Raises:
            WMHError: weights that cannot be loaded (one line naming the file).
        """
        error = self.load_error()
        if error is not None:
            raise error
        if self.model is None:
            self._load()
        return self

    def load_in_background(self) -> None:
        """Starts :meth:`load` in a thread, so that importing TensorFlow, reading the
        weights and building the dense twin (seconds of mostly single-threaded work)
        overlap preparing the first subject; :meth:`load` waits for it."""
        if self.model is not None or self._loading is not None:
            return
        outcome = {"error": None}

        def run() -> None:
            try:
                self._load()
            except BaseException as error:  # raised again by load(), in the caller's thread
                outcome["error"] = error

        thread = threading.Thread(target=run, name="wmh-load-model")
        self._loading = (thread, outcome)
        thread.start()

    def load_error(self) -> Optional[BaseException]:
        """What loading in the background raised, once it has ended (waits for it);
        None when it loaded, or was never started."""
        if self._loading is None:
            return None
        thread, outcome = self._loading
        thread.join()
        return outcome["error"]

    def _load(self) -> None:
        from wmh.models import build_dense_model
        from wmh.loader import load_model_dir

        model, contract = load_model_dir(self.folder)
        network = model if contract.model.arch in ("msef", "rf") else \
            build_dense_model(model, contract.model, len(contract.channels))
        self.model, self.contract, self.network = model, contract, network

    def provenance(self) -> dict:
        model = self.contract.model
        return {"model": self.source, "model_version": self.version,
                "model_path": str(self.folder),
                "model_arch": f"{model.arch}+{model.loc}" if model.loc != "none"
                else model.arch, "model_sha256": self.sha256, "wmh_version": __version__}


def preparation(folder: Path, contract) -> tuple[PreprocessConfig, bool, Optional[dict]]:
    """How subjects are prepared for the model in ``folder`` with ``contract``: (the config
    of its preprocessing plan, or the default config at its in-plane spacing for a model
    without one; whether the T1 channel is used; the plan or None)."""
    from wmh.preprocess.plan import plan_config, read_plan

    plan = read_plan(folder)
    config = (plan_config(plan, folder) if plan
              else PreprocessConfig(inplane_spacing_mm=contract.inplane_spacing_mm))
    return config, "T1" in contract.channels, plan


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def input_provenance(subject: io.Subject, uses_t1: bool) -> dict:
    """Input paths (absolute) and their SHA-256."""
    values = {"flair": str(Path(subject.flair).resolve()),
              "flair_sha256": io.sha256_file(subject.flair), "t1": None,
              "t1_sha256": None}
    if uses_t1 and subject.t1 is not None:
        values.update(t1=str(Path(subject.t1).resolve()),
                      t1_sha256=io.sha256_file(subject.t1))
    return values


def segment_subject(model: SegmentModel, subject: io.Subject, out_dir: Path,
                    options: SegmentOptions, inputs: dict, prepared=None,
                    log: Optional[Callable[[str], None]] = None, preparer=None) -> dict:
    """Segments one subject; writes its outputs into its unit of ``out_dir`` (replaced
    atomically; ``<subject_id>/`` in the folders layout) and rebuilds the cohort files.

    Args:
        model: the model, loaded or loading (:meth:`SegmentModel.load_in_background`:
            waited for once the subject is prepared).
        subject: the subject's files.
        out_dir: cohort output folder.
        options: threshold, MC samples, periventricular distance.
        inputs: :func:`input_provenance` of the subject (recorded in report.json).
        prepared: the subject's PreparedSubject when already prepared with the model's
            preprocessing (e.g. from the pipeline cache); None prepares it here.
        log: called with one line per stage (name and seconds), or None.
        preparer: a :class:`wmh.segment.ahead.Preparer` with :func:`preparation`'s config
            that prepares the subject (perhaps already has, in its worker process); None
            prepares it here.

    Returns:
        The subject's report (the contents of report.json).
    """
    from wmh import preprocess
    from wmh.evaluation import metrics
    from wmh.preprocess.plan import geometry_warnings

    contract = model.contract
    settings = options.settings(contract)
    calibration = options.calibration_for(contract)
    threshold = settings["threshold"]
    start = clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        if log is not None:
            log(f"{subject.subject_id}: {name} {now - clock:.1f} s")
        clock = now

    config, use_t1, plan = preparation(model.folder, contract)
    if prepared is not None and plan and \
            prepared.cache_key != preprocess.cache_key(subject, config, use_t1):
        prepared = None  # prepared otherwise than the model's plan: prepare it again
    if prepared is None:
        prepared = (preparer.result(subject) if preparer is not None
                    else preprocess.prepare_subject(subject, config, use_t1=use_t1))
    if tuple(prepared.channels[:len(contract.channels)]) != tuple(contract.channels):
        raise WMHError(f"{subject.flair}: prepared channels {prepared.channels} do not match "
                       f"the model's {contract.channels}")
    stage("prepare")
    if model.model is None:  # loading in the background while the subject was prepared
        model.load()
        stage("wait for the model")
    from wmh.train import predict_volume  # imports TensorFlow: after preparing

    images = prepared.images[..., :len(contract.channels)]
    # Monte Carlo passes are calibrated one by one, before their mean and spread.
    prediction = predict_volume(model.network, contract.model, images, prepared.location,
                                prepared.brain_mask, mc_samples=options.mc_samples,
                                spacing=prepared.spacing,
                                precision=resolve_precision(options.precision, "inference"),
                                transform=calibration.apply if options.mc_samples else None)
    probability, uncertainty = prediction if options.mc_samples else (prediction, None)
    stage("infer")

    grid = prepared.native_grid()
    spacing = grid.working_spacing
    brain = prepared.to_native_working(prepared.brain_mask.astype(np.uint8), 0) > 0
    # Linear resampling smears probability across the brain edge: keep it to the mask.
    probability = np.clip(prepared.to_native_working(probability, order=1), 0, 1) * brain
    if not options.mc_samples:  # on the native grid, where the calibration was fitted
        probability = calibration.apply(probability, brain)
    else:  # the passes were calibrated one by one; their mean is adapted as one map
        probability = calibration.adapt(probability, brain)
    mask = (probability >= threshold) & brain
    distance = measures.ventricle_distance(prepared.to_native_working(prepared.ventricles, 0),
                                           spacing)
    zone = measures.periventricular_zone(distance, mask.shape, options.periventricular_mm)
    lesions, _ = ndimage.label(mask, structure=measures.CONNECTIVITY_26)
    report = {"subject_id": subject.subject_id, "status": "ok", "error": ""}
    report.update(measures.zone_volumes(mask, zone, spacing))
    report["brain_ml"] = float(brain.sum()) * float(np.prod(spacing)) / 1000.0
    report.update(settings, mask_rule=MASK_RULE)
    if subject.labels is not None:
        truth, _ = io.load_labels(subject.labels, grid)
        scores = metrics.challenge_metrics(mask, truth, grid.working_affine)
        report.update(dice=scores["dice"], hd95_mm=scores["hd95"],
                      avd_percent=scores["avd"], lesion_recall=scores["lesion_recall"],
                      lesion_f1=scores["lesion_f1"])
    report["warnings"] = list(getattr(prepared, "warnings", ())) + geometry_warnings(
        plan, prepared.spacing, prepared.native_affine)
    report.update(model.provenance(), date_utc=utc_now(), **inputs)
    table = measures.lesion_table(lesions, probability, zone, grid.working_affine)
    flair, _ = io.load_image(subject.flair)

    layout = get_layout(options.layout)
    unit = layout.unit(subject.subject_id)

    def write(folder: Path) -> None:
        def path(name: str) -> Path:
            return folder / layout.file(unit, name)

        io.save_like(probability.astype(np.float32), grid, path("wmh_probability.nii.gz"),
                     np.float32)
        io.save_like(mask.astype(np.uint8), grid, path("wmh_mask.nii.gz"), np.uint8)
        io.save_like(lesions.astype(np.int32), grid, path("wmh_lesions.nii.gz"), np.int32)
        io.save_like(brain.astype(np.uint8), grid, path("brain_mask.nii.gz"), np.uint8)
        if uncertainty is not None:
            native = prepared.to_native_working(uncertainty, order=1) * brain
            io.save_like(native.astype(np.float32), grid, path("wmh_uncertainty.nii.gz"),
                         np.float32)
        write_lesions_csv(table, path("lesions.csv"))
        figure = qc_figure(QCVolumes(flair, mask, probability, brain, spacing, distance,
                                     options.periventricular_mm), qc_title(report))
        with io.atomic_output(path("qc.png")) as temporary:
            figure.savefig(temporary, format="png")
        report["seconds"] = round(time.perf_counter() - start, 3)
        written = outputs.write_report(folder, report, layout.file(unit, REPORT_FILE))
        layout.write_sidecars(folder, unit, out_dir, outputs.read_report(written))

    outputs.write_subject_folder(out_dir, subject.subject_id, write, layout)
    stage("write")
    return report


def qc_title(report: dict) -> str:
    """The QC title: id, the exact threshold (repr, never rounded) and the volumes."""
    return (f"{report['subject_id']}: threshold {float(report['threshold'])!r} "
            f"(mask = P >= threshold); WMH {report['total_ml']:.2f} mL "
            f"(periventricular {report['periventricular_ml']:.2f}, deep "
            f"{report['deep_ml']:.2f}), {report['lesion_count']} lesions; brain "
            f"{report['brain_ml']:.0f} mL")


def write_lesions_csv(table: list[dict], path: Path) -> Path:
    """``lesions.csv``: one row per lesion, columns ``measures.LESION_COLUMNS``."""
    with io.atomic_output(path) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=measures.LESION_COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    return path


def write_failure(out_dir: Path, subject: io.Subject, error: BaseException,
                  details: dict, layout_name: str = "folders") -> dict:
    """Replaces the subject's unit (``out_dir/<id>/``) by one holding only a failed
    report.json (status 'failed', the one-line error), so volumes.csv lists the subject;
    returns it."""
    text = str(error).splitlines()[0] if str(error) else ""
    if not isinstance(error, WMHError):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    report = {"subject_id": subject.subject_id, "status": "failed", "error": text,
              **details, "date_utc": utc_now()}
    layout = get_layout(layout_name)
    name = layout.file(layout.unit(subject.subject_id), REPORT_FILE)
    outputs.write_subject_folder(out_dir, subject.subject_id,
                                 lambda folder: outputs.write_report(folder, report, name),
                                 layout)
    return report
