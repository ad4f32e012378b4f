"""MetaSeg vs a baseline on one test split, in one run: metrics, cost, pictures and a Markdown report.

2D: ``python -m monai.bundle run compare --config_file configs/compare.json`` (the U-Net, ``docs/results.md``).
3D: ``--config_file "['configs/compare.json','configs/compare_3d.json']"`` (SegResNet, ``docs/results_3d.md``;
pictures show the middle slice of the last axis, the coronal plane of neurite-oasis volumes). Both models
are evaluated by their own bundle evaluation configs, run in this process as MONAI ``ConfigWorkflow`` s, so the
numbers are those of ``run evaluating`` (``metrics_summary.json``). Every MetaSeg number and picture comes from
:class:`scripts.inferer.MetaSegInferer` (``fit``/``decode``), the one implementation of the test-time fit.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import monai
import torch
from monai.bundle import ConfigWorkflow
from monai.metrics import DiceMetric, PSNRMetric
from torch.nn import functional as F

from .checkpoint import require_weights
from .inferer import MetaSegInferer
from .plots import hconcat, image_grid, label_palette, line_plot, overlay_rgb, pca_rgb, save_png

__all__ = ["read_peak_memory", "ModelComparison"]

logger = logging.getLogger(__name__)


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@contextmanager
def read_peak_memory(result: dict):
    """Fill ``result`` with the peak resident memory (MiB) of this process during the ``with`` block.

    Linux: writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` (the resident high-water mark) to the current
    ``VmRSS``; ``VmHWM`` read afterwards is the block's peak. ``result["reset"]`` tells whether the reset worked (if
    not, the peak is the process's peak so far); ``start_rss_mib`` is the resident memory when the block started.
    """
    result["start_rss_mib"] = (_proc_status_kb("VmRSS") or 0) / 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        result["reset"] = True
    except OSError:
        result["reset"] = False
    try:
        yield result
    finally:
        hwm = _proc_status_kb("VmHWM")
        result["peak_rss_mib"] = hwm / 1024 if hwm is not None else None


def _read_train_time(value: float | None, path: str) -> tuple[float | None, str]:
    if value is not None:
        return float(value), "given in the config (`*_train_seconds`)"
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
        stages = ", ".join(f"{k} {float(v['seconds']):.0f} s" for k, v in record.get("stages", {}).items())
        return float(record["total_seconds"]), f"recorded by the training run in `{os.path.basename(path)}` ({stages})"
    return None, f"not recorded (no `{os.path.basename(path)}`; give it with `--*_train_seconds`)"


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "not recorded"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {sec:02d} s" if m else f"{s:.1f} s")


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[B, 1, *spatial]`` class indices -> ``[B, C, *spatial]`` float one-hot."""
    return F.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).float()


class ModelComparison:
    """Evaluate MetaSeg and a baseline on the same split and write a Markdown report with PNG pictures.

    Args:
        bundle_root: the bundle folder (config paths and the report's commands are relative to it).
        metaseg_config_files: MetaSeg's evaluation configs (``inference.json`` + ``evaluate.json``, plus any file of
            overrides, e.g. a smaller network).
        baseline_config_files: the baseline's evaluation configs (2D: ``train_unet.json`` + ``evaluate_unet.json``,
            3D: plus ``train_segresnet.json`` + ``evaluate_segresnet.json``, [+ overrides]).
        overrides: values given to both evaluations (``dataset_dir``, ``splits_file``, ``split``, ``device``, ...).
        metaseg_overrides, baseline_overrides: values for one of them (``ckpt_dir``, ``output_dir``, ...).
        metaseg_ckpt, baseline_ckpt: the weight files (checked before anything runs).
        report_dir: where ``report_name`` and the PNG files go (``docs``).
        output_dir: where the evaluations' CSV/JSON files and ``comparison.json`` go.
        fit_steps_list: test-time fit steps of the fit-steps sweep.
        num_overlay_images: test images in the overlay grid.
        num_pca_images: test images in the feature PCA picture.
        metaseg_train_seconds, baseline_train_seconds: training wall times; ``None`` reads them from the JSON files
            that the training runs write (``metaseg_train_time_file``, ``baseline_train_time_file``).
        image_prefix: prefix of the PNG file names.
        transpose: show the first array axis horizontally (neurite-oasis coronal slices upright).
        baseline_name: the baseline's name in the report (``U-Net``, ``SegResNet``).
        baseline_command: the command that trains the baseline (named when its weights are missing).
        sweep_images: number of test images of the fit-steps sweep (``None``: all; 3D fits are costly).
        report_command: the command named in the report as the one that produced it.
        extra_splits: further splits on which both models are evaluated once more (e.g. ``test_shifted``: subjects and
            intensity conventions outside the training distribution), reported beside the main split.
    """

    def __init__(
        self,
        bundle_root: str,
        metaseg_config_files: Sequence[str],
        baseline_config_files: Sequence[str],
        metaseg_ckpt: str,
        baseline_ckpt: str,
        report_dir: str,
        output_dir: str,
        overrides: Mapping[str, Any] | None = None,
        metaseg_overrides: Mapping[str, Any] | None = None,
        baseline_overrides: Mapping[str, Any] | None = None,
        report_name: str = "results.md",
        fit_steps_list: Sequence[int] = (1, 2, 5, 10, 25, 50, 100),
        num_overlay_images: int = 4,
        num_pca_images: int = 2,
        metaseg_train_seconds: float | None = None,
        baseline_train_seconds: float | None = None,
        metaseg_train_time_file: str | None = None,
        baseline_train_time_file: str | None = None,
        image_prefix: str = "results_",
        class_names: Sequence[str] = ("cortex", "subcortical_gm", "white_matter", "csf"),
        transpose: bool = True,
        baseline_name: str = "U-Net",
        baseline_command: str = "python -m monai.bundle run training --config_file configs/train_unet.json",
        sweep_images: int | None = None,
        report_command: str = "python -m monai.bundle run compare --config_file configs/compare.json",
        extra_splits: Sequence[str] = (),
    ) -> None:
        self.bundle_root = bundle_root
        self.metaseg_config_files = list(metaseg_config_files)
        self.baseline_config_files = list(baseline_config_files)
        self.metaseg_ckpt = metaseg_ckpt
        self.baseline_ckpt = baseline_ckpt
        self.report_dir = report_dir
        self.output_dir = output_dir
        self.overrides = dict(overrides or {})
        self.metaseg_overrides = dict(metaseg_overrides or {})
        self.baseline_overrides = dict(baseline_overrides or {})
        self.report_name = report_name
        self.fit_steps_list = sorted({int(n) for n in fit_steps_list})
        if any(n < 0 for n in self.fit_steps_list):
            raise ValueError(f"fit_steps_list must hold non-negative integers, got {list(fit_steps_list)}.")
        self.num_overlay_images = int(num_overlay_images)
        self.num_pca_images = int(num_pca_images)
        self.metaseg_train_seconds = metaseg_train_seconds
        self.baseline_train_seconds = baseline_train_seconds
        self.metaseg_train_time_file = metaseg_train_time_file or os.path.splitext(metaseg_ckpt)[0] + "_train_time.json"
        self.baseline_train_time_file = (
            baseline_train_time_file or os.path.splitext(baseline_ckpt)[0] + "_train_time.json"
        )
        self.image_prefix = image_prefix
        self.class_names = list(class_names)
        self.transpose = transpose
        self.baseline_name = baseline_name
        self.baseline_command = baseline_command
        self.sweep_images = sweep_images
        self.report_command = report_command
        self.extra_splits = list(extra_splits)

    # ---------------------------------------------------------------- evaluations
    def _evaluate(self, name: str, config_files: list[str], overrides: dict) -> tuple[ConfigWorkflow, dict]:
        out_dir = os.path.join(self.output_dir, name)
        workflow = ConfigWorkflow(
            config_file=config_files,
            meta_file=os.path.join(self.bundle_root, "configs", "metadata.json"),
            logging_file=False,
            workflow_type=None,
            **{"output_dir": out_dir, **self.overrides, **overrides},
        )
        workflow.initialize()
        memory: dict = {}
        logger.info(f"evaluating {name} ...")
        start = time.perf_counter()
        with read_peak_memory(memory):
            workflow.run()
        seconds = time.perf_counter() - start
        workflow.finalize()
        out_dir = workflow.parser.get_parsed_content("output_dir")
        with open(os.path.join(out_dir, "metrics_summary.json")) as f:
            summary = json.load(f)
        summary["evaluation_seconds"] = seconds
        summary["memory"] = memory
        return workflow, summary

    # ---------------------------------------------------------------- MetaSeg sweeps and pictures
    @staticmethod
    def _test_batches(dataset: Any, limit: int | None = None) -> list[dict]:
        n = len(dataset) if limit is None else min(limit, len(dataset))
        return [dataset[i] for i in range(n)]

    def _fit_steps_sweep(self, inferer: MetaSegInferer, network: torch.nn.Module, items: list[dict], device) -> list:
        rows = []
        num_classes = int(getattr(network, "num_classes", 5))
        for steps in self.fit_steps_list:
            sweep_inferer = copy.copy(inferer)  # the evaluation's settings, but for the number of steps
            sweep_inferer.fit_steps = steps
            dice = DiceMetric(include_background=False)
            psnr = PSNRMetric(max_val=1.0)
            seconds = 0.0
            for item in items:
                image = item["image"][None].to(device)
                label = item["label"][None].to(device)
                start = time.perf_counter()
                logits, recon = sweep_inferer.decode(sweep_inferer.fit(image, network), network)
                seconds += time.perf_counter() - start
                dice(_one_hot(logits.argmax(1, keepdim=True), num_classes), _one_hot(label, num_classes))
                psnr(recon.as_tensor() if hasattr(recon, "as_tensor") else recon, image.as_tensor())
            rows.append(
                {
                    "fit_steps": steps,
                    "mean_dice": float(dice.aggregate().item()),
                    "psnr": float(psnr.aggregate().item()),
                    "seconds_per_image": seconds / max(len(items), 1),
                }
            )
            logger.info(f"fit steps {steps}: mean Dice {rows[-1]['mean_dice']:.4f}, PSNR {rows[-1]['psnr']:.2f} dB")
        return rows

    def _subject(self, item: dict) -> str:
        path = str(item["image"].meta.get("filename_or_obj", "image"))
        return os.path.basename(os.path.dirname(path)) or os.path.basename(path)

    @staticmethod
    def _view(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        """The middle slice ``[..., H, W]`` along the last axis of volumes ``[..., H, W, D]``; 2D images unchanged."""
        return x[..., x.shape[-1] // 2] if spatial_dims == 3 else x

    def _overlay_grid(self, inferer, metaseg, baseline, items, device, num_classes) -> Any:
        rows, titles = [], []
        for item in items:
            image = item["image"][None].to(device)
            ms = inferer.fit_decode(image, metaseg)[0].argmax(1)[0]
            with torch.no_grad():
                un = baseline(image.as_tensor()).argmax(1)[0]
            dims = item["image"].dim() - 1
            img, lab, ms, un = (self._view(x, dims) for x in (item["image"][0], item["label"][0], ms, un))
            rows.append(
                [
                    overlay_rgb(img, torch.zeros_like(lab), num_classes, transpose=self.transpose),
                    overlay_rgb(img, lab, num_classes, transpose=self.transpose),
                    overlay_rgb(img, ms.cpu(), num_classes, transpose=self.transpose),
                    overlay_rgb(img, un.cpu(), num_classes, transpose=self.transpose),
                ]
            )
            titles.append(self._subject(item).replace("OASIS_", "").replace("_MR1", ""))
        palette = label_palette(num_classes)
        names = (
            self.class_names if len(self.class_names) == num_classes - 1 else [str(i) for i in range(1, num_classes)]
        )
        legend = [(n, palette[i + 1]) for i, n in enumerate(names)]
        return image_grid(rows, ["image", "ground truth", "MetaSeg", self.baseline_name], titles, legend=legend)

    def _pca_picture(self, inferer: MetaSegInferer, network, items, device, num_classes) -> Any:
        rows, titles = [], []
        for item in items:
            image = item["image"][None].to(device)
            fit = inferer.fit(image, network)
            with torch.no_grad():
                chunk = inferer.decode_chunk or fit.coords.shape[1]
                feats = [
                    network.functional_forward(c, fit.params, with_logits=False)[1] for c in fit.coords.split(chunk, 1)
                ]
                features = torch.cat(feats, dim=1)[0]  # [N, C]
                labels = inferer.decode(fit, network)[0].argmax(1)[0]
            dims = len(fit.spatial_shape)
            img, labels = self._view(item["image"][0], dims), self._view(labels, dims)
            features = self._view(features.T.reshape(-1, *fit.spatial_shape), dims).reshape(features.shape[1], -1).T
            shape = tuple(img.shape)
            mask = (img > 0.02 * float(img.max())).reshape(-1)
            rows.append(
                [
                    overlay_rgb(img, torch.zeros_like(img, dtype=torch.long), num_classes, transpose=self.transpose),
                    pca_rgb(features, shape, mask=None, transpose=self.transpose),
                    pca_rgb(features, shape, mask=mask, transpose=self.transpose),
                    overlay_rgb(img, labels.cpu(), num_classes, transpose=self.transpose),
                ]
            )
            titles.append(self._subject(item).replace("OASIS_", "").replace("_MR1", ""))
        cols = ["image", "feature PCA", "PCA, brain pixels", "MetaSeg labels"]
        return image_grid(rows, cols, titles)

    def _fit_steps_plot(self, sweep: list[dict], baseline_dice: float, eval_point: tuple[int, float] | None) -> Any:
        steps = [r["fit_steps"] for r in sweep]
        positive = [s for s in steps if s > 0]
        log_x = bool(positive) and len(positive) == len(steps)
        dice_series = [
            {"label": "MetaSeg", "x": steps, "y": [r["mean_dice"] for r in sweep], "colour": (31, 119, 180)},
            {
                "label": f"{self.baseline_name} ({baseline_dice:.3f})",
                "hline": baseline_dice,
                "colour": (214, 39, 40),
                "dashed": True,
            },
        ]
        ticks = list(steps)
        if eval_point is not None and (not log_x or eval_point[0] > 0):
            ticks = sorted(set(ticks) | {eval_point[0]})
            dice_series.append(
                {
                    "label": f"MetaSeg evaluation ({eval_point[0]} steps)",
                    "x": [eval_point[0]],
                    "y": [eval_point[1]],
                    "colour": (44, 160, 44),
                }
            )
        left = line_plot(
            dice_series,
            title="mean foreground Dice vs test-time fit steps",
            xlabel="fit steps" + (" (log scale)" if log_x else ""),
            ylabel="mean foreground Dice",
            log_x=log_x,
            x_ticks=ticks,
        )
        right = line_plot(
            [{"label": "MetaSeg", "x": steps, "y": [r["psnr"] for r in sweep], "colour": (31, 119, 180)}],
            title="reconstruction PSNR vs test-time fit steps",
            xlabel="fit steps" + (" (log scale)" if log_x else ""),
            ylabel="PSNR (dB)",
            log_x=log_x,
            x_ticks=steps,
        )
        return hconcat([left, right])

    # ---------------------------------------------------------------- report
    def run(self) -> dict:
        require_weights(
            self.metaseg_ckpt,
            "MetaSeg",
            "python -m monai.bundle run training --config_file configs/train.json (or use the shipped models/model.pt)",
        )
        require_weights(self.baseline_ckpt, self.baseline_name, self.baseline_command)
        os.makedirs(self.report_dir, exist_ok=True)
        os.makedirs(self.output_dir, exist_ok=True)

        ms_wf, ms = self._evaluate("metaseg", self.metaseg_config_files, self.metaseg_overrides)
        un_wf, un = self._evaluate("baseline", self.baseline_config_files, self.baseline_overrides)
        splits = {}
        for split in self.extra_splits:
            split_runs = {}
            for name, files, extra in (
                ("metaseg", self.metaseg_config_files, self.metaseg_overrides),
                ("baseline", self.baseline_config_files, self.baseline_overrides),
            ):
                out_dir = os.path.join(self.output_dir, f"{name}_{split}")
                split_runs[name] = self._evaluate(
                    f"{name}_{split}", files, {**extra, "split": split, "output_dir": out_dir}
                )
            splits[split] = {name: summary for name, (_, summary) in split_runs.items()}

        device = ms_wf.parser.get_parsed_content("device")
        metaseg = ms_wf.parser.get_parsed_content("network")
        inferer = ms_wf.parser.get_parsed_content("inferer")
        baseline = un_wf.parser.get_parsed_content("network").eval()
        dataset = ms_wf.parser.get_parsed_content("dataset")
        num_classes = int(ms_wf.parser.get_parsed_content("num_classes"))
        items = self._test_batches(dataset)
        sweep_items = items[: self.sweep_images] if self.sweep_images else items
        logger.info(f"fit-steps sweep over {len(sweep_items)} images: {self.fit_steps_list}")
        sweep = self._fit_steps_sweep(inferer, metaseg, sweep_items, device)

        files = {}
        grid = self._overlay_grid(inferer, metaseg, baseline, items[: self.num_overlay_images], device, num_classes)
        files["overlays"] = save_png(grid, os.path.join(self.report_dir, f"{self.image_prefix}overlays.png"))
        plot = self._fit_steps_plot(
            sweep, un["metrics"]["mean_dice"], (ms.get("fit_steps"), ms["metrics"]["mean_dice"])
        )
        files["fit_steps"] = save_png(plot, os.path.join(self.report_dir, f"{self.image_prefix}fit_steps.png"))
        pca = self._pca_picture(inferer, metaseg, items[: self.num_pca_images], device, num_classes)
        files["pca"] = save_png(pca, os.path.join(self.report_dir, f"{self.image_prefix}pca.png"))

        ms_train, ms_train_src = _read_train_time(self.metaseg_train_seconds, self.metaseg_train_time_file)
        un_train, un_train_src = _read_train_time(self.baseline_train_seconds, self.baseline_train_time_file)
        result = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": self.report_command,
            "num_images": ms["num_images"],
            "metaseg": {
                **ms,
                "weights": self._show_path(self.metaseg_ckpt),
                "file_bytes": os.path.getsize(self.metaseg_ckpt),
                "train_seconds": ms_train,
                "train_seconds_source": ms_train_src,
            },
            "baseline_name": self.baseline_name,
            "baseline": {
                **un,
                "weights": self._show_path(self.baseline_ckpt),
                "file_bytes": os.path.getsize(self.baseline_ckpt),
                "train_seconds": un_train,
                "train_seconds_source": un_train_src,
            },
            "extra_splits": splits,
            "fit_steps_sweep": sweep,
            "fit_steps_sweep_images": len(sweep_items),
            "image_shape": list(items[0]["image"].shape[1:]) if items else [],
            "pictures": {k: os.path.relpath(v, self.report_dir) for k, v in files.items()},
            "data": {
                "dataset_dir": self._show_path(str(self.overrides.get("dataset_dir", "?"))),
                "split": str(self.overrides.get("split", "test")),
            },
            "feature_channels": int(getattr(metaseg, "trunk")[-1].out_features),
            "system": self._system(device),
        }
        from .handlers import write_json_atomic

        write_json_atomic(result, os.path.join(self.output_dir, "comparison.json"))
        report = os.path.join(self.report_dir, self.report_name)
        text = self._markdown(result)
        tmp = report + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, report)
        logger.info(f"report written: {report}")
        return result

    def _show_path(self, path: str) -> str:
        """``path`` relative to the bundle root when inside it, else absolute."""
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.bundle_root))
        return os.path.abspath(path) if rel.startswith("..") else rel

    @staticmethod
    def _system(device) -> dict:
        return {
            "device": str(device),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "monai": monai.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None,
        }

    def _markdown(self, r: dict) -> str:
        ms, un, name = r["metaseg"], r["baseline"], r["baseline_name"]
        n_ms, n_un = ms.get("num_parameters"), un.get("num_parameters")
        unit = "volume" if len(r["image_shape"]) == 3 else "slice"
        grid = "x".join(str(s) for s in r["image_shape"])
        lines = [
            f"# MetaSeg vs {name}: results",
            "",
            f"Generated by `{r['command']}` on "
            f"{r['created']}: split `{r['data']['split']}` of `{r['data']['dataset_dir']}`, {r['num_images']} images. "
            "Every number below was measured by that run, except the training times, whose source is named under "
            "*Cost*. Do not edit by hand: re-run the command.",
            "",
            "## Summary",
            "",
            self._summary_line(ms, un, name),
            "",
            "## Accuracy",
            "",
            f"Dice of the argmax label map against the ground truth on the networks' {grid} input grid, averaged over "
            "images, as in `run evaluating`.",
            "",
            f"| | MetaSeg | {name} |",
            "|---|---|---|",
            f"| mean foreground Dice | **{ms['metrics']['mean_dice']:.3f}** | **{un['metrics']['mean_dice']:.3f}** |",
        ]
        for cls in ms.get("dice_per_class", {}):
            a = ms["dice_per_class"].get(cls)
            b = un.get("dice_per_class", {}).get(cls)
            lines.append(f"| Dice {cls} | {a:.3f} | {b:.3f} |" if b is not None else f"| Dice {cls} | {a:.3f} | - |")
        lines.append(
            f"| mean Dice including background | {ms['metrics']['mean_dice_with_background']:.3f} | "
            f"{un['metrics']['mean_dice_with_background']:.3f} |"
        )
        if "psnr" in ms["metrics"]:
            lines.append(f"| PSNR of the fitted reconstruction | {ms['metrics']['psnr']:.1f} dB | - |")
        lines += self._splits_table(r)
        ratio = f"{n_ms / n_un:.4f} ({100 * (1 - n_ms / n_un):.1f}% fewer)" if n_ms and n_un else "-"
        mem = [m["memory"] for m in (ms, un)]
        lines += [
            "",
            "## Cost",
            "",
            f"| | MetaSeg | {name} |",
            "|---|---|---|",
            f"| parameters | {n_ms:,} | {n_un:,} |",
            f"| parameter ratio MetaSeg / {name} | {ratio} | |",
            f"| weights file | `{ms['weights']}`, {ms['file_bytes'] / 2**20:.2f} MiB | "
            f"`{un['weights']}`, {un['file_bytes'] / 2**20:.2f} MiB |",
            f"| training wall time | {_fmt_seconds(ms['train_seconds'])} | {_fmt_seconds(un['train_seconds'])} |",
            f"| inference seconds per {unit}, mean (median) | {self._secs(ms)} ({ms.get('fit_steps')} fit steps) | "
            f"{self._secs(un)} |",
            f"| peak resident memory during the evaluation | {self._mem(mem[0])} | {self._mem(mem[1])} |",
            "",
            f"- Training time sources: MetaSeg {ms['train_seconds_source']}; {name} {un['train_seconds_source']}.",
            f"- Inference time: batch preparation + inferer per image (MetaSeg: test-time fit + decoding; {name}: one "
            "forward pass), without data loading or metrics.",
            "- Peak memory: `VmHWM` of the process, reset (`/proc/self/clear_refs`) before each evaluation; it "
            "includes what the process already held (Python, PyTorch, the other model), shown as the value at the "
            "start.",
            "",
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
        s = r["system"]
        lines += [
            "",
            "First three principal components of MetaSeg's fitted penultimate features (per pixel, "
            f"{r['feature_channels']} channels, after the test-time fit) as RGB, each component min-max scaled; "
            "computed over all pixels, then over brain pixels only (intensity above 2% of the maximum; the rest "
            "black):",
            "",
            f"![feature PCA]({r['pictures']['pca']})",
            "",
            "## System",
            "",
            f"{s['device']} ({s['gpu'] or s['cpu']}), {s['cpu_count']} CPU cores, {s['torch_threads']} PyTorch "
            f"threads, PyTorch {s['torch']}, MONAI {s['monai']}, Python {s['python']}. "
            "Raw numbers: `comparison.json` in the run's `output_dir`.",
            "",
        ]
        return "\n".join(lines)

    @staticmethod
    def _splits_table(r: dict) -> list[str]:
        """Mean foreground Dice on the main split and each extra split, with the change from the main split."""
        if not r.get("extra_splits"):
            return []
        ms, un, name = r["metaseg"], r["baseline"], r["baseline_name"]
        a, b = ms["metrics"]["mean_dice"], un["metrics"]["mean_dice"]
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

    @staticmethod
    def _summary_line(ms: dict, un: dict, name: str) -> str:
        a, b = ms["metrics"]["mean_dice"], un["metrics"]["mean_dice"]
        n_ms, n_un = ms.get("num_parameters"), un.get("num_parameters")
        text = (
            f"Mean foreground Dice: MetaSeg {a:.3f}, {name} {b:.3f} (MetaSeg {a - b:+.3f}); with background: "
            f"{ms['metrics']['mean_dice_with_background']:.3f} vs {un['metrics']['mean_dice_with_background']:.3f}."
        )
        if n_ms and n_un:
            text += (
                f" MetaSeg has {n_ms:,} parameters, {100 * (1 - n_ms / n_un):.1f}% fewer than the {name}'s {n_un:,}."
            )
        return text

    @staticmethod
    def _secs(summary: dict) -> str:
        mean, median = summary.get("seconds_per_image"), summary.get("seconds_per_image_median")
        if mean is None:
            return "-"
        return f"{mean:.3f} ({median:.3f})" if median is not None else f"{mean:.3f}"

    @staticmethod
    def _mem(m: dict) -> str:
        peak = m.get("peak_rss_mib")
        if peak is None:
            return "not available"
        note = "" if m.get("reset") else " (peak since process start)"
        return f"{peak:,.0f} MiB (start {m.get('start_rss_mib', 0):,.0f} MiB){note}"
