"""The model card of a shipped model (``MODEL_CARD.md``), rendered from its record.

Everything on the card comes from the model folder (contract, plan) and ``pretrained.json``
(training provenance, measured figures); a figure the record does not hold is written as
"not measured" and a provenance field it lacks as "not recorded", never guessed.
"""

from __future__ import annotations

import json

NOT_MEASURED = "not measured"
NOT_RECORDED = "not recorded"

# (key in a figures block, label), in the order the card shows them.
FIGURE_ROWS = (
    ("mean_dice", "mean Dice"),
    ("mean_hd95_mm", "mean HD95 (mm)"),
    ("mean_avd_percent", "mean absolute volume difference (%)"),
    ("mean_lesion_recall", "mean lesion recall"),
    ("mean_lesion_f1", "mean lesion F1"),
    ("cases", "cases"),
    ("failed", "failed cases"),
    ("seconds_per_case", "seconds per case"),
    ("mean_floor_dice", "mean Dice of the best global FLAIR threshold chosen with the truth "
                        "(floor)"),
)
CASE_COLUMNS = (("subject_id", "case"), ("dice", "Dice"), ("floor_dice", "floor Dice"),
                ("truth_volume_ml", "true mL"), ("predicted_volume_ml", "predicted mL"))
FIGURE_KINDS = {"synthetic": "Synthetic held-out test subjects (SYNTHETIC data)",
                "real": "Real development cases"}

INTENDED_USE = """\
Research use: segmenting white matter hyperintensities (WMH) in brain MRI of adults, to
measure lesion volume, count and location (periventricular or deep) in studies of
small-vessel disease and similar conditions, with `wmh segment SCAN --out OUT`. It is not a
medical device and has not been validated for clinical decisions; check every result with
the QC images `wmh segment` writes. To adapt it to a protocol and its manual labels,
fine-tune it: `wmh train --set train.init_model=pretrained ...` (README)."""

SYNTHETIC_ONLY = """\
- Trained on SYNTHETIC images alone (no real scan was used in training): how well it
  transfers to a scanner or protocol is known only from the figures above; check results
  on your own data (QC images) and fine-tune on a few labelled cases when they disagree.
"""
LIMITATIONS = """\
- Scans outside the training geometry (in-plane spacing and slice thickness above) get a
  warning in report.json; results on them are less certain.
- Lesions of other causes that look bright on FLAIR (infarcts, tumours, MS plaques in
  unusual places) may be segmented as WMH or missed; the model knows only WMH versus not.
- The probability map is calibrated only as far as the calibration section says.
- Not a medical device; not for diagnosis."""


def value_text(value, digits: int = 3) -> str:
    """A figure as text: floats rounded, None as "not measured"."""
    if value is None:
        return NOT_MEASURED
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _range(values, unit: str = "mm") -> str:
    if not values or len(values) != 2:
        return NOT_RECORDED
    return f"{values[0]:.2g}-{values[1]:.2g} {unit}"


def _figures_section(kind: str, block: dict | None) -> list[str]:
    lines = [f"### {FIGURE_KINDS[kind]}", ""]
    if not block:
        return lines + [f"{NOT_MEASURED.capitalize()}.", ""]
    if block.get("source"):
        lines += [f"From `{block['source']}`.", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {label} | {value_text(block.get(key))} |" for key, label in FIGURE_ROWS]
    cases = block.get("per_case") or []
    if cases:
        lines += ["", "| " + " | ".join(label for _, label in CASE_COLUMNS) + " |",
                  "|" + "---|" * len(CASE_COLUMNS)]
        lines += ["| " + " | ".join(value_text(case.get(key)) for key, _ in CASE_COLUMNS)
                  + " |" for case in cases]
    return lines + [""]


def render_card(record: dict, contract: dict, plan: dict | None) -> str:
    """The Markdown model card.

    Args:
        record: the ``pretrained.json`` contents (without ``files``: the card is hashed).
        contract: the ``wmh_model.json`` contents (as JSON, so fields added later, e.g.
            calibration, are read when present).
        plan: the ``plan.json`` contents, or None.
    """
    training = record.get("training", {})
    synth = training.get("synth", {})
    model = contract.get("model", {})
    channels = list(contract.get("channels", []))
    geometry = (plan or {}).get("training", {})
    preprocess = (plan or {}).get("preprocess", {})
    data_label = training.get("data_label") or NOT_RECORDED
    lines = [
        f"# Model card: {record['uri']} (version {record['version']})", "",
        f"The {model.get('arch', '?').upper()} + location ({model.get('loc', '?')}) "
        f"network of Ghafoorian et al. 2017 on {' + '.join(channels)}, shipped in the wmh "
        f"package (`wmh segment SCAN --out OUT` uses the default one). Created "
        f"{record['created']} with wmh {record['wmh_version']}.", "",
        "## Intended use", "", INTENDED_USE, "",
        "## Input contract", "",
        f"- **Contrast and channels:** {', '.join(channels)}"
        + (" (FLAIR only: no T1 is needed or used)." if channels == ["FLAIR"] else "."),
        f"- **In-plane spacing:** any; every scan is resampled in-plane to "
        f"{contract.get('inplane_spacing_mm', '?')} mm (slices are kept). The training data "
        f"spanned in-plane spacings of {_range(geometry.get('inplane_spacing_mm'))}.",
        f"- **Slice thickness:** the training data spanned "
        f"{_range(geometry.get('slice_thickness_mm'))}; scans outside get a warning.",
        "- **Orientation:** any (RAS, LPS, oblique, any slice direction): outputs lie on "
        "the input's own grid and affine.",
        f"- **Preprocessing:** rebuilt from `plan.json` (N4 bias correction "
        f"{'on' if preprocess.get('bias_correction', True) else 'off'}, brain mask, MNI "
        f"registration for the location features, the WMH prior `prior.nii.gz`); skull "
        "present or stripped.",
        f"- **Threshold:** {value_text(contract.get('threshold'))} (validation-optimal; "
        "`--threshold` overrides).", "",
        "## Training data", "",
        f"- **Data:** {str(data_label).upper() if data_label == 'synthetic' else data_label}"
        + (" (images made by `wmh synth`; no real scan)" if data_label == "synthetic" else ""),
        f"- **Generator version:** {synth.get('synth_version', NOT_RECORDED)}",
        f"- **Profile:** {synth.get('profile', NOT_RECORDED)}",
        f"- **Seed:** {synth.get('seed', NOT_RECORDED)}",
        f"- **Subjects:** {synth.get('subjects', NOT_RECORDED)} in the cohort; "
        f"{geometry.get('subjects', NOT_RECORDED)} in the training split", "",
        "## Recipe and commit", "",
        f"- **Recipe:** `{record.get('recipe', {}).get('path') or NOT_RECORDED}`"
        + (f" (SHA-256 {record['recipe']['sha256'][:16]})"
           if record.get("recipe", {}).get("sha256") else ""),
        f"- **Training commit:** {training.get('git_commit') or NOT_RECORDED}",
        f"- **MLflow run:** {training.get('run_id') or NOT_RECORDED}",
        f"- **Network:** arch {model.get('arch')}, loc {model.get('loc')}, alpha "
        f"{model.get('alpha')}, width {model.get('width')}, dropout "
        f"{model.get('dropout_rate')}; trained in {contract.get('precision', 'fp32')}; "
        f"weights stored as {record.get('weights_dtype', 'float32')}",
    ]
    if training.get("init_model"):
        lines.append(f"- **Fine-tuned from:** {training['init_model']}")
    lines += ["", "## Figures", ""]
    figures = record.get("figures", {})
    for kind in FIGURE_KINDS:
        lines += _figures_section(kind, figures.get(kind))
    lines += ["## Calibration", ""]
    if contract.get("calibration") is not None:
        calibration = contract["calibration"]
        parameters = ", ".join(f"{name} {value_text(value, 4)}" for name, value in
                               (calibration.get("parameters") or {}).items())
        lines += [
            f"- **Method:** {calibration.get('method', NOT_RECORDED)}"
            + (f" ({parameters})" if parameters else "")
            + "; applied to P(WMH) before the threshold (`wmh segment --calibration none` "
              "gives the network's uncorrected output and threshold).",
            f"- **Expected calibration error on the validation voxels:** "
            f"{value_text(calibration.get('validation_ece_before'), 5)} uncorrected, "
            f"{value_text(calibration.get('validation_ece_after'), 5)} calibrated.",
            f"- **WMH prevalence of the validation brain voxels:** "
            f"{value_text(calibration.get('validation_prevalence'), 4)} "
            + ("(each scan's probabilities are then shifted to the scan's own prevalence, "
               "estimated by EM: `adaptation` prevalence, wmh.calibration; the validation "
               "ECE and threshold are of the adapted maps; `wmh calibrate` refits it on "
               "labelled scans of your own)."
               if calibration.get("adaptation", "none") != "none" else
               "(the calibration holds for scans with a similar lesion load; "
               "`wmh calibrate` refits it on labelled scans of your own)."),
            f"- **Full record:** `{json.dumps(calibration)}`"]
        lines.append(f"- **Uncalibrated threshold:** "
                     f"{value_text(contract.get('uncalibrated_threshold'), 4)}")
    else:
        lines.append(f"{NOT_RECORDED.capitalize()}: the contract holds no calibration; the "
                     "probabilities are the network's own, trained on balanced samples, so "
                     "they tend to overstate P(WMH).")
    lines += ["", "## Limitations", "",
              (SYNTHETIC_ONLY if data_label == "synthetic" else "") + LIMITATIONS,
              "", "## Files", "",
              "The SHA-256 of every file is in `pretrained.json` (checked each time the "
              "model loads).", ""]
    return "\n".join(lines)
