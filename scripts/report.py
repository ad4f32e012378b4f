"""The comparison report: Markdown from a measured result (:func:`render`) and its pictures, no computation.

:class:`scripts.compare.ModelComparison` measures; the functions here only format and draw what it measured, so a
saved ``comparison.json`` renders again with ``render(json.load(f))``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .plots import hconcat, image_grid, label_palette, line_plot, overlay_rgb, pca_rgb

__all__ = ["render", "overlay_figure", "pca_figure", "fit_steps_figure", "middle_view"]


def middle_view(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """The middle slice ``[..., H, W]`` along the last axis of volumes ``[..., H, W, D]``; 2D images unchanged."""
    return x[..., x.shape[-1] // 2] if spatial_dims == 3 else x


def _legend(class_names: Sequence[str], num_classes: int) -> list[tuple[str, Any]]:
    palette = label_palette(num_classes)
    names = list(class_names) if len(class_names) == num_classes - 1 else [str(i) for i in range(1, num_classes)]
    return [(n, palette[i + 1]) for i, n in enumerate(names)]


def overlay_figure(
    cases: Sequence[dict], num_classes: int, baseline_name: str, class_names: Sequence[str] = (), transpose: bool = True
) -> Any:
    """One row per case: the image, then ground truth, MetaSeg and baseline labels over it.

    Each case holds ``image`` and ``label`` / ``metaseg`` / ``baseline`` label maps (same spatial shape, 2D or 3D;
    volumes show their middle slice) and a ``title``.
    """
    rows = []
    for case in cases:
        dims = case["image"].dim()
        img, lab, ms, base = (middle_view(case[k], dims) for k in ("image", "label", "metaseg", "baseline"))
        rows.append(
            [
                overlay_rgb(img, torch.zeros_like(lab), num_classes, transpose=transpose),
                overlay_rgb(img, lab, num_classes, transpose=transpose),
                overlay_rgb(img, ms, num_classes, transpose=transpose),
                overlay_rgb(img, base, num_classes, transpose=transpose),
            ]
        )
    columns = ["image", "ground truth", "MetaSeg", baseline_name]
    return image_grid(rows, columns, [c["title"] for c in cases], legend=_legend(class_names, num_classes))


def pca_figure(cases: Sequence[dict], num_classes: int, transpose: bool = True) -> Any:
    """One row per case: the image, the PCA of the fitted features (all pixels, brain pixels) and MetaSeg's labels.

    Each case holds ``image`` (spatial), ``features`` ``[N, C]`` on the image grid, ``labels`` (spatial) and a
    ``title``; brain pixels are those above 2% of the image's maximum.
    """
    rows = []
    for case in cases:
        dims = case["image"].dim()
        spatial = tuple(case["image"].shape)
        img, labels = middle_view(case["image"], dims), middle_view(case["labels"], dims)
        features = case["features"]
        features = middle_view(features.T.reshape(-1, *spatial), dims).reshape(features.shape[1], -1).T
        shape = tuple(img.shape)
        mask = (img > 0.02 * float(img.max())).reshape(-1)
        rows.append(
            [
                overlay_rgb(img, torch.zeros_like(img, dtype=torch.long), num_classes, transpose=transpose),
                pca_rgb(features, shape, mask=None, transpose=transpose),
                pca_rgb(features, shape, mask=mask, transpose=transpose),
                overlay_rgb(img, labels, num_classes, transpose=transpose),
            ]
        )
    columns = ["image", "feature PCA", "PCA, brain pixels", "MetaSeg labels"]
    return image_grid(rows, columns, [c["title"] for c in cases])


PRESET_COLOURS = [(255, 127, 14), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def fit_steps_figure(
    sweep: Sequence[dict],
    baseline_name: str,
    baseline_dice: float,
    eval_point: tuple[int, float] | None,
    presets: Mapping[str, Sequence[dict]] | None = None,
) -> Any:
    """MetaSeg's Dice and PSNR against the fit steps of ``sweep`` (and of each preset's sweep), the baseline's Dice as
    a dashed line."""
    presets = dict(presets or {})
    steps = sorted({r["fit_steps"] for rows in [sweep, *presets.values()] for r in rows})
    positive = [s for s in steps if s > 0]
    log_x = bool(positive) and len(positive) == len(steps)
    curves = [("MetaSeg" if not presets else "MetaSeg default", sweep, (31, 119, 180))]
    curves += [(f"MetaSeg {name}", rows, c) for (name, rows), c in zip(presets.items(), PRESET_COLOURS * 2)]
    dice_series = [
        {"label": label, "x": [r["fit_steps"] for r in rows], "y": [r["mean_dice"] for r in rows], "colour": colour}
        for label, rows, colour in curves
    ]
    dice_series.append(
        {
            "label": f"{baseline_name} ({baseline_dice:.3f})",
            "hline": baseline_dice,
            "colour": (214, 39, 40),
            "dashed": True,
        }
    )
    ticks = list(steps)
    if eval_point is not None and eval_point[0] is not None and (not log_x or eval_point[0] > 0):
        ticks = sorted(set(ticks) | {eval_point[0]})
        dice_series.append(
            {
                "label": f"MetaSeg evaluation ({eval_point[0]} steps)",
                "x": [eval_point[0]],
                "y": [eval_point[1]],
                "colour": (44, 160, 44),
            }
        )
    xlabel = "fit steps" + (" (log scale)" if log_x else "")
    left = line_plot(
        dice_series,
        title="mean foreground Dice vs test-time fit steps",
        xlabel=xlabel,
        ylabel="mean foreground Dice",
        log_x=log_x,
        x_ticks=ticks,
    )
    right = line_plot(
        [
            {"label": label, "x": [r["fit_steps"] for r in rows], "y": [r["psnr"] for r in rows], "colour": colour}
            for label, rows, colour in curves
        ],
        title="reconstruction PSNR vs test-time fit steps",
        xlabel=xlabel,
        ylabel="PSNR (dB)",
        log_x=log_x,
        x_ticks=steps,
    )
    return hconcat([left, right])


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "not recorded"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {sec:02d} s" if m else f"{s:.1f} s")


def _secs(summary: dict) -> str:
    mean, median = summary.get("seconds_per_image"), summary.get("seconds_per_image_median")
    if mean is None:
        return "-"
    return f"{mean:.3f} ({median:.3f})" if median is not None else f"{mean:.3f}"


def _mem(m: dict) -> str:
    peak = m.get("peak_rss_mib")
    if peak is None:
        return "not available"
    note = "" if m.get("reset") else " (peak since process start)"
    return f"{peak:,.0f} MiB (start {m.get('start_rss_mib', 0):,.0f} MiB){note}"


def _fewer_or_more(n_ms: int, n_base: int) -> str:
    """MetaSeg's parameter count relative to the baseline's, e.g. ``52.8% fewer`` or ``11.9% more``."""
    change = 100 * (n_ms / n_base - 1)
    return f"{abs(change):.1f}% {'more' if change > 0 else 'fewer'}"


def _summary_line(ms: dict, base: dict, name: str) -> str:
    a, b = ms["metrics"]["mean_dice"], base["metrics"]["mean_dice"]
    n_ms, n_base = ms.get("num_parameters"), base.get("num_parameters")
    text = (
        f"Mean foreground Dice: MetaSeg {a:.3f}, {name} {b:.3f} (MetaSeg {a - b:+.3f}); with background: "
        f"{ms['metrics']['mean_dice_with_background']:.3f} vs {base['metrics']['mean_dice_with_background']:.3f}."
    )
    if n_ms and n_base:
        text += f" MetaSeg has {n_ms:,} parameters, {_fewer_or_more(n_ms, n_base)} than the {name}'s {n_base:,}."
    return text


def _splits_table(r: dict) -> list[str]:
    """Mean foreground Dice on the main split and each extra split, with the change from the main split."""
    if not r.get("extra_splits"):
        return []
    ms, base, name = r["metaseg"], r["baseline"], r["baseline_name"]
    a, b = ms["metrics"]["mean_dice"], base["metrics"]["mean_dice"]
    lines = [
        "",
        f"Mean foreground Dice on the split `{r['data']['split']}` and on splits outside the training distribution "
        "(each evaluated once, by the same command):",
        "",
        f"| split | images | MetaSeg | change | {name} | change |",
        "|---|---|---|---|---|---|",
        f"| `{r['data']['split']}` | {r['num_images']} | {a:.3f} | | {b:.3f} | |",
    ]
    for split, res in r["extra_splits"].items():
        sa, sb = res["metaseg"]["metrics"]["mean_dice"], res["baseline"]["metrics"]["mean_dice"]
        n = res["metaseg"].get("num_images", "?")
        lines.append(f"| `{split}` | {n} | {sa:.3f} | {sa - a:+.3f} | {sb:.3f} | {sb - b:+.3f} |")
    return lines


def _accuracy(r: dict) -> list[str]:
    ms, base, name = r["metaseg"], r["baseline"], r["baseline_name"]
    grid = "x".join(str(s) for s in r["image_shape"])
    lines = [
        "## Accuracy",
        "",
        f"Dice of the argmax label map against the ground truth on the networks' {grid} input grid, averaged over "
        "images, as in `run evaluating`.",
        "",
        f"| | MetaSeg | {name} |",
        "|---|---|---|",
        f"| mean foreground Dice | **{ms['metrics']['mean_dice']:.3f}** | **{base['metrics']['mean_dice']:.3f}** |",
    ]
    for cls, a in ms.get("dice_per_class", {}).items():
        b = base.get("dice_per_class", {}).get(cls)
        lines.append(f"| Dice {cls} | {a:.3f} | {b:.3f} |" if b is not None else f"| Dice {cls} | {a:.3f} | - |")
    lines.append(
        f"| mean Dice including background | {ms['metrics']['mean_dice_with_background']:.3f} | "
        f"{base['metrics']['mean_dice_with_background']:.3f} |"
    )
    if "psnr" in ms["metrics"]:
        lines.append(f"| PSNR of the fitted reconstruction | {ms['metrics']['psnr']:.1f} dB | - |")
    return lines + _splits_table(r)


def _cost(r: dict, unit: str) -> list[str]:
    ms, base, name = r["metaseg"], r["baseline"], r["baseline_name"]
    n_ms, n_base = ms.get("num_parameters"), base.get("num_parameters")
    ratio = f"{n_ms / n_base:.4f} ({_fewer_or_more(n_ms, n_base)})" if n_ms and n_base else "-"
    return [
        "## Cost",
        "",
        f"| | MetaSeg | {name} |",
        "|---|---|---|",
        f"| parameters | {n_ms:,} | {n_base:,} |",
        f"| parameter ratio MetaSeg / {name} | {ratio} | |",
        f"| weights file | `{ms['weights']}`, {ms['file_bytes'] / 2**20:.2f} MiB | "
        f"`{base['weights']}`, {base['file_bytes'] / 2**20:.2f} MiB |",
        f"| training wall time | {_fmt_seconds(ms['train_seconds'])} | {_fmt_seconds(base['train_seconds'])} |",
        f"| inference seconds per {unit}, mean (median) | {_secs(ms)} ({ms.get('fit_steps')} fit steps) | "
        f"{_secs(base)} |",
        f"| peak resident memory during the evaluation | {_mem(ms['memory'])} | {_mem(base['memory'])} |",
        "",
        f"- Training time sources: MetaSeg {ms['train_seconds_source']}; {name} {base['train_seconds_source']}.",
        f"- Inference time: batch preparation + inferer per image (MetaSeg: test-time fit + decoding; {name}: one "
        "forward pass), without data loading or metrics.",
        "- Peak memory: `VmHWM` of the process, reset (`/proc/self/clear_refs`) before each evaluation; it "
        "includes what the process already held (Python, PyTorch, the other model), shown as the value at the "
        "start.",
    ]


def _pictures(r: dict, unit: str) -> list[str]:
    name = r["baseline_name"]
    lines = [
        "## Pictures",
        "",
        "Test images with the ground truth and both predictions over the image"
        + (" (middle coronal slice of each volume):" if unit == "volume" else ":"),
        "",
        f"![overlays]({r['pictures']['overlays']})",
        "",
        "MetaSeg's mean foreground Dice and reconstruction PSNR against the number of test-time fit steps "
        f"({r['fit_steps_sweep_images']} test images, same seed), with the {name}'s Dice as a dashed line:",
        "",
        f"![fit steps]({r['pictures']['fit_steps']})",
        "",
        f"| fit steps | mean foreground Dice | PSNR (dB) | seconds per {unit} |",
        "|---|---|---|---|",
    ]
    for row in r["fit_steps_sweep"]:
        lines.append(
            f"| {row['fit_steps']} | {row['mean_dice']:.3f} | {row['psnr']:.2f} | {row['seconds_per_image']:.3f} |"
        )
    return lines + [
        "",
        "First three principal components of MetaSeg's fitted penultimate features (per pixel, "
        f"{r['feature_channels']} channels, after the test-time fit) as RGB, each component min-max scaled; "
        "computed over all pixels, then over brain pixels only (intensity above 2% of the maximum; the rest "
        "black):",
        "",
        f"![feature PCA]({r['pictures']['pca']})",
    ]


def _presets(r: dict, unit: str) -> list[str]:
    """MetaSeg's configurations side by side with the baseline: size, Dice against fit steps, speed, training."""
    if not r.get("presets"):
        return []
    steps = [row["fit_steps"] for row in r["fit_steps_sweep"]]
    name = r["baseline_name"]
    rows = [{"name": "default", "config_files": [], **r["metaseg"], "fit_steps_sweep": r["fit_steps_sweep"]}]
    rows += r["presets"]
    lines = [
        "## Presets",
        "",
        f"MetaSeg's configurations on the split `{r['data']['split']}`: mean foreground Dice after each number of "
        f"test-time fit steps ({r['fit_steps_sweep_images']} images), then `run evaluating` with the preset's own "
        f"fit steps ({r['num_images']} images; also as mean Dice including background, the kind of Dice the paper "
        f"reports), seconds per {unit} at those steps, and the training wall time its training run recorded "
        "(`model_train_time.json` beside its weights).",
        "",
        "| preset | configs | parameters | "
        + " | ".join(f"{n} steps" for n in steps)
        + " | own steps: Dice (with background) | seconds per "
        + unit
        + " | training |",
        "|---|---|---|" + "---|" * len(steps) + "---|---|---|",
    ]
    for p in rows:
        dice = {row["fit_steps"]: row["mean_dice"] for row in p["fit_steps_sweep"]}
        files = ", ".join(f"`{os.path.basename(f)}`" for f in p["config_files"]) or "-"
        lines.append(
            f"| {p['name']} | {files} | {p['num_parameters']:,} | "
            + " | ".join(f"{dice[n]:.3f}" if n in dice else "-" for n in steps)
            + f" | {p['fit_steps']}: **{p['metrics']['mean_dice']:.3f}** "
            f"({p['metrics']['mean_dice_with_background']:.3f}) | {p['seconds_per_image']:.3f} | "
            f"{_fmt_seconds(p['train_seconds'])} |"
        )
    base = r["baseline"]
    lines.append(
        f"| {name} | - | {base['num_parameters']:,} | "
        + " | ".join("-" for _ in steps)
        + f" | **{base['metrics']['mean_dice']:.3f}** ({base['metrics']['mean_dice_with_background']:.3f}) | "
        f"{base['seconds_per_image']:.3f} | {_fmt_seconds(base['train_seconds'])} |"
    )
    notes = [f"- {p['name']}: {p['note']}" for p in r["presets"] if p.get("note")]
    return lines + ([""] + notes if notes else []) + [""]


def render(r: dict) -> str:
    """The Markdown report of a comparison result (the content of ``comparison.json``)."""
    unit = "volume" if len(r["image_shape"]) == 3 else "slice"
    s = r["system"]
    lines = [
        f"# MetaSeg vs {r['baseline_name']}: results",
        "",
        f"Generated by `{r['command']}` on "
        f"{r['created']}: split `{r['data']['split']}` of `{r['data']['dataset_dir']}`, {r['num_images']} images. "
        "Every number below was measured by that run, except the training times, whose source is named under "
        "*Cost*. Do not edit by hand: re-run the command.",
        "",
        "## Summary",
        "",
        _summary_line(r["metaseg"], r["baseline"], r["baseline_name"]),
        "",
        *_accuracy(r),
        "",
        *_cost(r, unit),
        "",
        *_presets(r, unit),
        *_pictures(r, unit),
        "",
        "## System",
        "",
        f"{s['device']} ({s['gpu'] or s['cpu']}), {s['cpu_count']} CPU cores, {s['torch_threads']} PyTorch "
        f"threads, PyTorch {s['torch']}, MONAI {s['monai']}, Python {s['python']}. "
        "Raw numbers: `comparison.json` in the run's `output_dir`.",
        "",
    ]
    return "\n".join(lines)
