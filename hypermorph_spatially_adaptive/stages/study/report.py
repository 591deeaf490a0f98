"""The study's report: ``STUDY.md`` with its tables and a plain reading of them, and its figures.

Every number comes from :mod:`.aggregate`; a difference is called a gain or a loss only when its 95% interval
excludes zero, otherwise "not resolved".
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot is imported)
import numpy as np  # noqa: E402

from ...data import get_dataset  # noqa: E402
from ...data.nifti_io import read_displacement  # noqa: E402
from ...data.orientation import display_view  # noqa: E402
from ...evaluation.bootstrap import Estimate, hierarchical_bootstrap  # noqa: E402
from ...files import atomic_write, atomic_write_text  # noqa: E402
from .aggregate import (IDENTIFICATIONS, StudyData, difference, estimate, grid_headroom,  # noqa: E402
                        locality_estimate, stiffness, stiffness_rank_agreement)
from .presets import CONTROL, DEV_SEED, GLOBAL, IO_METHOD_LABELS, METHOD_LABELS, REPORTS, VARIANTS, Regime  # noqa: E402
from .runner import IO_VARIANT, seed_folder  # noqa: E402

__all__ = ["write_report"]

TISSUE_METHODS = ("tissue_population", "tissue_joint", "tissue_subject", "oracle_identification", "oracle_model")
LOCALITY_TARGET, LEAKAGE_TARGET = 0.5, 0.5


def _ci(e: Estimate, digits: int = 3) -> str:
    if math.isnan(e.mean):
        return "-"
    return f"{e.mean:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def _signed(e: Estimate, digits: int = 3) -> str:
    if math.isnan(e.mean):
        return "-"
    p = "" if e.p_value is None or math.isnan(e.p_value) else f", p={e.p_value:.2g}"
    return f"{e.mean:+.{digits}f} [{e.low:+.{digits}f}, {e.high:+.{digits}f}] ({e.improved}/{e.n}{p})"


def _verdict(e: Estimate) -> str:
    if math.isnan(e.mean) or not e.excludes_zero():
        return "not resolved"
    return "lower" if e.mean < 0 else "higher"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), ""]


def _save(figure: plt.Figure, path: Path) -> str:
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(figure)
    return path.name


def _bar_figure(data: StudyData, metric: str, title: str, path: Path, truth: str | None = None) -> str:
    foreground = data.class_names[1:]
    figure, axes = plt.subplots(1, len(data.variants), figsize=(6.5 * len(data.variants), 3.8), squeeze=False)
    for axis, variant in zip(axes[0], data.variants):
        methods = data.methods(variant) + ([truth] if truth else [])
        width = 0.8 / len(methods)
        for k, method in enumerate(methods):
            key = (lambda name: f"gt_{metric}_{name}") if method == truth else (lambda name: f"{metric}_{name}")
            source = GLOBAL if method == truth else method
            values = [estimate(data, variant, source, key(name)) for name in foreground]
            x = np.arange(len(foreground)) + (k - (len(methods) - 1) / 2) * width
            means = np.array([v.mean for v in values])
            errors = np.array([[v.mean - v.low for v in values], [v.high - v.mean for v in values]])
            axis.bar(x, means, width, yerr=errors, capsize=2, label=method if method != truth else "true field")
        axis.set_xticks(np.arange(len(foreground)), foreground)
        axis.set_title(f"{variant}: {title}")
    axes[0][0].legend(fontsize=7)
    return _save(figure, path)


def _locality_figure(data: StudyData, path: Path) -> str:
    foreground = data.class_names[1:]
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.8 / len(data.variants)
    for which, (axis, title, target) in enumerate(zip(axes, ("locality (near 1)", "leakage (near 0)"),
                                                      (LOCALITY_TARGET, LEAKAGE_TARGET))):
        for k, variant in enumerate(data.variants):
            values = [locality_estimate(data, variant, name, which) for name in foreground]
            x = np.arange(len(foreground)) + (k - (len(data.variants) - 1) / 2) * width
            errors = np.array([[v.mean - v.low for v in values], [v.high - v.mean for v in values]])
            axis.bar(x, [v.mean for v in values], width, yerr=errors, capsize=2, label=variant)
        axis.axhline(target, color="gray", linestyle="--", linewidth=1)
        axis.set_xticks(np.arange(len(foreground)), foreground)
        axis.set_title(title)
    axes[0].legend(fontsize=8)
    return _save(figure, path)


def _error_map_figure(out: Path, data: StudyData, variant: str, path: Path) -> str | None:
    """|u - u_true| (mm) of the first test pair of the first seed for every method that saved its field."""
    seed = data.seeds[0]
    dataset = get_dataset("phantom", seed_folder(out, seed) / "data", "test")
    item = dataset[0]
    stem = item["pair_id"]
    folders = {GLOBAL: "global", "tissue_population": "tissue_population", CONTROL: "literature",
               "oracle_model": "tissue_oracle"}
    fields = {}
    for method, name in folders.items():
        files = list((seed_folder(out, seed) / variant / "inference" / name).glob(f"disp_{stem}*.nii.gz"))
        if files:
            fields[method] = read_displacement(files[0])[0]
    if not fields or item["fixed"].dim() != 3:
        return None
    spacing = item["spacing"].double().view(-1, 1, 1)
    truth = item["gt_displacement"].double()
    view = display_view(np.asarray(item["affine"], dtype=np.float64), (0, 1))  # as a viewer shows the anatomy
    aspect = view.aspect([float(s) for s in item["spacing"]])
    figure, axes = plt.subplots(1, len(fields) + 1, figsize=(3.2 * (len(fields) + 1), 3.4))
    axes[0].imshow(view.image(item["fixed"][0].numpy()), cmap="gray", aspect=aspect)
    axes[0].set_title(f"fixed (pair {stem}, {view.plane})")
    for axis, (method, field) in zip(axes[1:], fields.items()):
        error = ((field.double() - truth) * spacing).norm(dim=0)
        shown = axis.imshow(view.image(error.numpy()), cmap="magma", vmin=0, vmax=2.0, aspect=aspect)
        axis.set_title(f"{method}\nmean {float(error.mean()):.3f} mm", fontsize=8)
    for axis in axes:
        axis.set_axis_off()
    figure.colorbar(shown, ax=axes, fraction=0.02, label="|u - u_true| (mm)")
    return _save(figure, path)


def _setup(preset: str, settings: dict[str, Any], seeds: Sequence[int], variants: Sequence[str],
           runtime_s: float | None) -> list[str]:
    lines = ["# Study: where does tissue-specific elastic regularization help?", "",
             f"Generated by `python study.py --preset {preset}`"
             + (f" in {runtime_s / 60:.1f} minutes of compute" if runtime_s else "") + ". Every number below is "
             "measured; rerunning the command reproduces the tables (the runs resume). The other presets' reports: "
             + ", ".join(f"`{name}` {Path(path).name}" for name, path in REPORTS.items() if name != preset) + ".",
             "",
             "## Setup", "",
             f"- Data: the synthetic phantom ({settings['subjects']} subjects per seed: "
             f"{settings['subjects'] - settings['val'] - settings['test']} train, {settings['val']} validation, "
             f"{settings['test']} test), whose true displacement solves linear elasticity with bone >> liver > soft "
             "tissue > lung, in each regime below (texture, dimension, size).",
             f"- Seeds {', '.join(map(str, seeds))}: each seed has its own phantom and its own trained models; results "
             f"pool their test pairs ({settings['test']} per seed). Settings were chosen on seed {DEV_SEED} (the "
             "demo's phantom) and its validation pairs only; no reported seed or test pair was used to choose "
             "anything.",
             f"- Global model: {settings['global_steps']} steps, batch {settings['batch_size']}, lr {settings['lr']} "
             f"(cosine), encoder {settings['enc_features']}, decoder {settings['dec_features']}, hypernetwork "
             f"{settings['hyper_layers']} x {settings['hyper_units']}.",
             "- Spatial variants:"]
    for name in variants:
        variant = VARIANTS[name]
        steps = settings["paper_steps"] if variant.steps is None else variant.steps
        lines.append(f"  - `{name}` (`--conditioning {variant.conditioning}`, {steps} steps"
                     f"{', warm start from the global model' if variant.warm_start else ', from scratch'}): "
                     f"{variant.description}.")
    lines += ["- Methods:", *(f"  - `{m}`: {label}." for m, label in METHOD_LABELS.items())]
    if settings.get("io_steps"):
        lines += [f"- Instance optimisation ({settings['io_steps']} Adam steps per level, levels 4, 2, 1, NCC window "
                  f"{settings['io_ncc_window']}; parameters "
                  f"chosen through the optimisation by TRE on {settings['io_val_pairs']} validation pairs of the "
                  f"seed, grid step {settings['io_grid_step']}), with the `{IO_VARIANT}` variant:",
                  *(f"  - `{m}`: {label}." for m, label in IO_METHOD_LABELS.items())]
    lines += ["- Intervals: 95% two-stage bootstrap over seeds and pairs. Differences are paired per test pair; (k/n) "
              "counts the pairs where the method is lower (better); p is the two-sided Wilcoxon signed-rank test "
              "over all pairs. A difference is called a gain or a loss only when its interval excludes 0.", ""]
    return lines


#: The summary's comparisons: (label, method, baseline), with the recommended variant.
SUMMARY = (("tissue_population - global", "tissue_population", GLOBAL),
           ("tissue_joint - global (the joint search)", "tissue_joint", GLOBAL),
           ("tissue_subject - global", "tissue_subject", GLOBAL),
           ("oracle_model - global (headroom through the model)", "oracle_model", GLOBAL),
           ("tissue_population+io - global+io", "tissue_population+io", "global+io"),
           ("tissue_population+io - elastix", "tissue_population+io", "elastix"))


def _summary(out: Path, studies: Sequence[tuple[Regime, StudyData]]) -> list[str]:
    lines = ["## Summary", "", f"Variant `{IO_VARIANT}`; paired differences of EPE and TRE (mm) on the test pairs, "
             "mean [95% CI] (pairs better / pairs); negative is better. Rank agreement: Spearman's rho of the "
             "identified `lam + mu` with the true stiffness order, mean over seeds [min, max].", ""]
    rows = []
    for regime, data in studies:
        variant = IO_VARIANT if IO_VARIANT in data.variants else data.variants[0]
        methods = data.methods(variant)
        rows.append([f"{regime.name}", "global", _ci(estimate(data, variant, GLOBAL, "epe_mm")),
                     _ci(estimate(data, variant, GLOBAL, "tre_mm"))])
        for label, method, baseline in SUMMARY:
            if method in methods and baseline in methods:
                rows.append(["", label, *(_signed(difference(data, variant, method, baseline, metric))
                                          for metric in ("epe_mm", "tre_mm"))])
        for folder in IDENTIFICATIONS:
            rhos = [r["lam_plus_mu"] for r in (stiffness_rank_agreement(out / regime.name, seed, folder)
                                               for seed in data.seeds) if r is not None]
            finite = [r for r in rhos if not math.isnan(r)]
            if not rhos:
                continue
            # rho is undefined when the identification gives every class the same stiffness (all ties).
            value = (f"rho {sum(finite) / len(finite):+.2f} [{min(finite):+.2f}, {max(finite):+.2f}]" if finite
                     else "rho undefined")
            rows.append(["", f"rank agreement, {folder.removeprefix('identification_')}",
                         f"{value} ({len(finite)}/{len(rhos)} seeds defined)", ""])
    return lines + _table(["regime", "comparison", "EPE (mm)", "TRE (mm)"], rows)


def write_report(out: Path, studies: Sequence[tuple[Regime, StudyData]], report: Path, preset: str,
                 settings: dict[str, Any], runtime_s: float | None = None) -> Path:
    """Write ``report`` (markdown): the setup, a summary over regimes and one section per regime, with its
    figures beside it (``<stem>_figures/<regime>_*.png``). ``studies``: each regime with its results (its runs
    under ``out / regime.name``)."""
    report = Path(report)
    figures = report.parent / f"{report.stem.lower()}_figures"
    figures.mkdir(parents=True, exist_ok=True)
    first = studies[0][1]
    lines = _setup(preset, settings, first.seeds, first.variants, runtime_s) + _summary(out, studies)
    for regime, data in studies:
        lines += [f"## Regime `{regime.name}`: {regime.texture} texture, {regime.ndim}D, {regime.size} voxels per "
                  "axis", ""]
        lines += _regime_section(out / regime.name, data, figures, regime.name)
    text = "\n".join(lines)
    return atomic_write_text(report, text if text.endswith("\n") else text + "\n")


def _io_section(data: StudyData) -> list[str]:
    variant = IO_VARIANT
    methods = [m for m in (GLOBAL, "tissue_population", "global+io", "tissue_population+io", "classical", "elastix")
               if m in data.methods(variant)]
    if "elastix" not in methods and "global+io" not in methods:
        return []
    rows = [[f"`{m}`", *(_ci(estimate(data, variant, m, metric), digits)
                         for metric, digits in (("epe_mm", 3), ("tre_mm", 3), ("dice_mean", 3), ("sdlogj", 3),
                                                ("folding_percent", 3), ("runtime_s", 3)))] for m in methods]
    lines = ["### Instance optimisation and elastix (test pairs)", "",
             "Mean [95% CI]; seconds per pair measured in one process on the same CPU (an `+io` row includes the "
             "network's time).", "",
             *_table(["method", "EPE (mm)", "TRE (mm)", "Dice", "SDlogJ", "folding (%)", "s per pair"], rows)]
    rows = []
    for method, baseline in (("tissue_population+io", "global+io"), ("tissue_population+io", "elastix"),
                             ("global+io", "elastix"), ("classical", "elastix"), ("global+io", GLOBAL),
                             ("tissue_population+io", "tissue_population")):
        if method in methods and baseline in methods:
            rows.append([f"`{method}` - `{baseline}`", *(_signed(difference(data, variant, method, baseline, m))
                                                         for m in ("epe_mm", "tre_mm"))])
    lines += ["Paired differences (negative is better):", "", *_table(["comparison", "EPE (mm)", "TRE (mm)"], rows)]
    return lines


def _headroom_section(out: Path, data: StudyData) -> list[str]:
    """How much choosing a class's own parameters can gain: through each grid (validation pairs) and through the
    spatial model (the oracle against the global model, test pairs)."""
    foreground = data.class_names[1:]
    rows = []
    for folder, label in (("identification_epe", "global model's grid"),
                          ("identification_io", "instance optimisation's grid")):
        gains = grid_headroom(out, data.seeds, folder)
        if gains:
            rows.append([label, *(_ci(gains[c]) if c in gains else "-" for c in foreground)])
    variant = IO_VARIANT if IO_VARIANT in data.variants else data.variants[0]
    if "oracle_model" in data.methods(variant):
        rows.append([f"spatial model ({variant}), oracle - global, test pairs",
                     *(_signed(difference(data, variant, "oracle_model", GLOBAL, f"epe_{c}")) for c in foreground)])
    if not rows:
        return []
    return ["### Regularization headroom", "",
            "Per class, the EPE (mm) that choosing the class's own parameters gains over one global pair: on a grid, "
            "the class's mean EPE at the best global point minus at its own best point (validation pairs, chosen by "
            "the true EPE, so an upper bound of what any identification on that grid can realise); through the "
            "spatial model, the oracle's per-class EPE minus the global model's (test pairs; negative is a gain).",
            "", *_table(["through", *foreground], rows)]


def _regime_section(out: Path, data: StudyData, figures: Path, prefix: str) -> list[str]:
    foreground = data.class_names[1:]
    lines = []
    lines += ["### Locality (test pairs)", "",
              "Strain-based locality (near 1: a class's own parameters do inside it what raising every class does) "
              f"and leakage (near 0: they act nowhere else), base (0.05, 0.05), raised (0.45, 0.45); mean over seeds "
              f"[interval over seeds]. Target: locality >= {LOCALITY_TARGET} and leakage <= {LEAKAGE_TARGET} for "
              "every foreground class.", ""]
    rows = []
    for variant in data.variants:
        for which, name in ((0, "locality"), (1, "leakage")):
            rows.append([variant, name, *(_ci(locality_estimate(data, variant, c, which), 2) for c in foreground)])
    lines += _table(["variant", "measure", *foreground], rows)
    lines.append(f"![locality and leakage per class]({figures.name}/{_locality_figure(data, figures / f'{prefix}_locality.png')})")
    lines.append("")

    lines += ["### Registration accuracy (test pairs)", "",
              "End-point error against the true displacement (foreground voxels) and keypoint TRE, mean [95% CI].", ""]
    for variant in data.variants:
        rows = [[f"`{m}`", _ci(estimate(data, variant, m, "epe_mm")), _ci(estimate(data, variant, m, "tre_mm"))]
                for m in data.methods(variant)]
        lines += [f"#### {variant}", "", *_table(["method", "EPE (mm)", "TRE (mm)"], rows)]
        rows = []
        for method in TISSUE_METHODS:
            if method not in data.methods(variant):
                continue
            row = [f"`{method}`"]
            for baseline in (GLOBAL, CONTROL):
                for metric in ("epe_mm", "tre_mm"):
                    row.append(_signed(difference(data, variant, method, baseline, metric)))
            rows.append(row)
        lines += ["Paired differences (method - baseline; negative is better):", "",
                  *_table(["method", "EPE vs global", "TRE vs global", "EPE vs control", "TRE vs control"], rows)]

    lines += ["### Per tissue (test pairs)", ""]
    for variant in data.variants:
        for metric, title in (("epe", "EPE (mm)"), ("tre", "TRE (mm) of the keypoints")):
            rows = [[f"`{m}`", *(_ci(estimate(data, variant, m, f"{metric}_{c}")) for c in foreground)]
                    for m in data.methods(variant)]
            lines += [f"{title} per tissue, {variant}" + (" ('-': no keypoints in that class)" if metric == "tre" else "")
                      + ":", "", *_table(["method", *foreground], rows)]
        rows = [[f"`{m}`", *(_ci(estimate(data, variant, m, f"strain_{c}"), 4) for c in foreground)]
                for m in data.methods(variant)]
        rows.append(["true field", *(_ci(estimate(data, variant, GLOBAL, f"gt_strain_{c}"), 4) for c in foreground)])
        lines += [f"Mean strain |sym grad u| per tissue, {variant}:", "", *_table(["method", *foreground], rows)]
    name = _bar_figure(data, "epe", "EPE per tissue (mm)", figures / f"{prefix}_epe_per_tissue.png")
    lines += [f"![EPE per tissue]({figures.name}/{name})", ""]
    name = _bar_figure(data, "strain", "mean strain per tissue", figures / f"{prefix}_strain_per_tissue.png", truth="truth")
    lines += [f"![strain per tissue]({figures.name}/{name})", ""]
    error_map = _error_map_figure(out, data, data.variants[-1], figures / f"{prefix}_error_maps.png")
    if error_map:
        lines += [f"![error maps of one test pair]({figures.name}/{error_map})", ""]

    if IO_VARIANT in data.variants:
        lines += _io_section(data)

    lines += _headroom_section(out, data)
    lines += ["### Identified stiffness", "", "Population `lam + mu` per class by each identification, per seed, "
              "and Spearman's rank correlation over the foreground classes of the identified stiffness (`lam + mu`; "
              "Young's modulus `mu (3 lam + 2 mu) / (lam + mu)`) with the phantom's true Young's moduli (1 is the "
              "true order; NaN: all tied).", ""]
    rows = []
    agreement: dict[str, list[tuple[float, float]]] = {}
    for seed in data.seeds:
        for folder in IDENTIFICATIONS:
            rho = stiffness_rank_agreement(out, seed, folder)
            if rho is None:
                continue
            values = stiffness(out, seed, folder)
            agreement.setdefault(folder, []).append((rho["lam_plus_mu"], rho["young"]))
            rows.append([seed, folder.removeprefix("identification_"),
                         *(f"{values[c]:.2f}" for c in foreground), f"{rho['lam_plus_mu']:+.2f}",
                         f"{rho['young']:+.2f}"])
    lines += _table(["seed", "identification", *foreground, "rho (lam + mu)", "rho (Young)"], rows)
    for folder, values in agreement.items():
        e = hierarchical_bootstrap([[v[0]] for v in values])
        lines.append(f"- `{folder}` ({IDENTIFICATIONS[folder]}): mean rho (lam + mu) {_ci(e, 2)} over seeds.")
    lines.append("")

    lines += ["### What the numbers show", ""]
    for variant in data.variants:
        localities = [locality_estimate(data, variant, c, 0).mean for c in foreground]
        leakages = [locality_estimate(data, variant, c, 1).mean for c in foreground]
        met = min(localities) >= LOCALITY_TARGET and max(leakages) <= LEAKAGE_TARGET
        lines.append(f"- `{variant}`: locality {min(localities):.2f}-{max(localities):.2f}, leakage "
                     f"{min(leakages):.2f}-{max(leakages):.2f} ({'meets' if met else 'misses'} the target).")
        if VARIANTS[variant].conditioning == "tissue":
            lines.append("  - With tissue-wise kernels the control is the global model itself (a vector whose classes "
                         "share one pair runs the global model's computation), so every difference below is due to "
                         "the per-class parameters alone.")
        for method in TISSUE_METHODS:
            if method not in data.methods(variant):
                continue
            parts = []
            for baseline in (GLOBAL, CONTROL):
                for metric, label in (("epe_mm", "EPE"), ("tre_mm", "TRE")):
                    e = difference(data, variant, method, baseline, metric)
                    parts.append(f"{label} vs {baseline} {_verdict(e)} ({e.mean:+.3f} mm)")
            lines.append(f"  - `{method}`: " + "; ".join(parts) + ".")
        if "bone" in foreground:
            bone = estimate(data, variant, "tissue_population", "strain_bone").mean
            truth = estimate(data, variant, GLOBAL, "gt_strain_bone").mean
            lines.append(f"  - mean strain in bone with the identified parameters: {bone:.4f}, {bone / truth:.1f}x "
                         f"the true field's {truth:.4f}.")
    lines.append("")
    return lines
