"""MetaSeg vs a baseline on one test split, in one run: metrics, cost, pictures and a Markdown report.

2D: ``python -m monai.bundle run compare --config_file configs/compare.json`` (the U-Net, ``docs/results.md``).
3D: ``--config_file "['configs/compare.json','configs/compare_3d.json']"`` (SegResNet, ``docs/results_3d.md``;
pictures show the middle slice of the last axis, the coronal plane of neurite-oasis volumes). Both models
are evaluated by their own bundle evaluation configs, run in this process as MONAI ``ConfigWorkflow`` s, so the
numbers are those of ``run evaluating`` (``metrics_summary.json``). Every MetaSeg number and picture comes from
:class:`scripts.inferer.MetaSegInferer` (``fit``/``decode``), the one implementation of the test-time fit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import torch
from monai.bundle import ConfigWorkflow

from .checkpoint import require_weights
from .handlers import write_json_atomic
from .inferer import MetaSegInferer
from .measure import fit_steps_sweep, read_train_time, run_evaluation, system_info
from .outputs import atomic_path
from .plots import save_png
from .report import fit_steps_figure, overlay_figure, pca_figure, render

__all__ = ["ModelComparison"]

logger = logging.getLogger(__name__)


class ModelComparison:
    """Evaluate MetaSeg and a baseline on the same split and write a Markdown report with PNG pictures.

    Measures (:mod:`scripts.measure`: both evaluations, peak memory, the fit-steps sweep), computes the predictions and
    features that the pictures show, saves ``comparison.json`` and renders the report from it (:mod:`scripts.report`).

    Args:
        bundle_root: the bundle folder (config paths and the report's commands are relative to it).
        metaseg_config_files: MetaSeg's evaluation configs (``inference.json`` + ``evaluate.json``, plus any file of
            overrides, e.g. a smaller network).
        baseline_config_files: the baseline's evaluation configs (2D: ``train.json`` + ``train_unet.json`` +
            ``evaluate_unet.json``, 3D: plus ``train_segresnet.json`` + ``evaluate_segresnet.json``, [+ overrides]).
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
        presets: further MetaSeg configurations evaluated on the main split and swept over ``fit_steps_list``, each
            ``{"name", "config_files" (added to metaseg_config_files), "ckpt_dir" (holding model.pt),
            "command" (trains it), "note" (optional, shown under the table)}``. The report tabulates them beside the
            default configuration and the baseline and draws their Dice-vs-steps curves in one plot.
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
        baseline_command: str = (
            "python -m monai.bundle run training --config_file \"['configs/train.json','configs/train_unet.json']\""
        ),
        sweep_images: int | None = None,
        report_command: str = "python -m monai.bundle run compare --config_file configs/compare.json",
        extra_splits: Sequence[str] = (),
        presets: Sequence[Mapping[str, Any]] = (),
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
        self.presets = [dict(p) for p in presets]
        for preset in self.presets:
            missing = {"name", "config_files", "ckpt_dir", "command"} - set(preset)
            if missing:
                raise ValueError(f"preset {preset.get('name', preset)!r} lacks {sorted(missing)}.")

    def _evaluate(self, name: str, config_files: list[str], overrides: dict) -> tuple[ConfigWorkflow, dict]:
        logger.info(f"evaluating {name} ...")
        meta_file = os.path.join(self.bundle_root, "configs", "metadata.json")
        output_dir = os.path.join(self.output_dir, name)
        return run_evaluation(config_files, meta_file, {"output_dir": output_dir, **self.overrides, **overrides})

    @staticmethod
    def _title(item: dict) -> str:
        path = str(item["image"].meta.get("filename_or_obj", "image"))
        subject = os.path.basename(os.path.dirname(path)) or os.path.basename(path)
        return subject.replace("OASIS_", "").replace("_MR1", "")

    def _overlay_cases(self, inferer: MetaSegInferer, metaseg, baseline, items: list[dict], device) -> list[dict]:
        """Image, ground truth and both models' label maps of each item (on the CPU)."""
        cases = []
        for item in items:
            image = item["image"][None].to(device)
            metaseg_labels = inferer.fit_decode(image, metaseg)[0].argmax(1)[0]
            with torch.no_grad():
                baseline_labels = baseline(image.as_tensor()).argmax(1)[0]
            cases.append(
                {
                    "image": item["image"][0].as_tensor(),
                    "label": item["label"][0].as_tensor(),
                    "metaseg": metaseg_labels.cpu(),
                    "baseline": baseline_labels.cpu(),
                    "title": self._title(item),
                }
            )
        return cases

    def _pca_cases(self, inferer: MetaSegInferer, network, items: list[dict], device) -> list[dict]:
        """Image, fitted penultimate features ``[N, C]`` and MetaSeg's labels of each item (on the CPU)."""
        cases = []
        for item in items:
            image = item["image"][None].to(device)
            fit = inferer.fit(image, network)
            with torch.no_grad():
                chunk = inferer.decode_chunk or fit.coords.shape[1]
                feats = [
                    network.functional_forward(c, fit.params, with_logits=False)[1] for c in fit.coords.split(chunk, 1)
                ]
                labels = inferer.decode(fit, network)[0].argmax(1)[0]
            cases.append(
                {
                    "image": item["image"][0].as_tensor(),
                    "features": torch.cat(feats, dim=1)[0].cpu(),
                    "labels": labels.cpu(),
                    "title": self._title(item),
                }
            )
        return cases

    def run(self) -> dict:
        require_weights(
            self.metaseg_ckpt,
            "MetaSeg",
            "python -m monai.bundle run training --config_file configs/train.json (or use the shipped models/model.pt)",
        )
        require_weights(self.baseline_ckpt, self.baseline_name, self.baseline_command)
        for preset in self.presets:
            require_weights(self._preset_ckpt(preset), f"MetaSeg preset {preset['name']!r}", preset["command"])
        os.makedirs(self.report_dir, exist_ok=True)
        os.makedirs(self.output_dir, exist_ok=True)

        metaseg_wf, metaseg_summary = self._evaluate("metaseg", self.metaseg_config_files, self.metaseg_overrides)
        baseline_wf, baseline_summary = self._evaluate("baseline", self.baseline_config_files, self.baseline_overrides)
        splits = {}
        for split in self.extra_splits:
            splits[split] = {
                name: self._evaluate(
                    f"{name}_{split}",
                    files,
                    {**extra, "split": split, "output_dir": os.path.join(self.output_dir, f"{name}_{split}")},
                )[1]
                for name, files, extra in (
                    ("metaseg", self.metaseg_config_files, self.metaseg_overrides),
                    ("baseline", self.baseline_config_files, self.baseline_overrides),
                )
            }

        device = metaseg_wf.parser.get_parsed_content("device")
        metaseg = metaseg_wf.parser.get_parsed_content("network")
        inferer = metaseg_wf.parser.get_parsed_content("inferer")
        baseline = baseline_wf.parser.get_parsed_content("network").eval()
        dataset = metaseg_wf.parser.get_parsed_content("dataset")
        num_classes = int(metaseg_wf.parser.get_parsed_content("num_classes"))
        items = [dataset[i] for i in range(len(dataset))]
        sweep_items = items[: self.sweep_images] if self.sweep_images else items
        logger.info(f"fit-steps sweep over {len(sweep_items)} images: {self.fit_steps_list}")
        sweep = fit_steps_sweep(inferer, metaseg, sweep_items, device, self.fit_steps_list)
        presets = [self._preset_result(preset, sweep_items) for preset in self.presets]

        overlays = overlay_figure(
            self._overlay_cases(inferer, metaseg, baseline, items[: self.num_overlay_images], device),
            num_classes,
            self.baseline_name,
            self.class_names,
            self.transpose,
        )
        eval_point = (metaseg_summary.get("fit_steps"), metaseg_summary["metrics"]["mean_dice"])
        plot = fit_steps_figure(
            sweep,
            self.baseline_name,
            baseline_summary["metrics"]["mean_dice"],
            eval_point,
            {p["name"]: p["fit_steps_sweep"] for p in presets},
        )
        pca = pca_figure(
            self._pca_cases(inferer, metaseg, items[: self.num_pca_images], device), num_classes, self.transpose
        )
        files = {
            name: save_png(picture, os.path.join(self.report_dir, f"{self.image_prefix}{name}.png"))
            for name, picture in (("overlays", overlays), ("fit_steps", plot), ("pca", pca))
        }

        result = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": self.report_command,
            "num_images": metaseg_summary["num_images"],
            "metaseg": {
                **metaseg_summary,
                **self._weights_record(self.metaseg_ckpt, self.metaseg_train_seconds, self.metaseg_train_time_file),
            },
            "baseline_name": self.baseline_name,
            "baseline": {
                **baseline_summary,
                **self._weights_record(self.baseline_ckpt, self.baseline_train_seconds, self.baseline_train_time_file),
            },
            "extra_splits": splits,
            "fit_steps_sweep": sweep,
            "fit_steps_sweep_images": len(sweep_items),
            "presets": presets,
            "image_shape": list(items[0]["image"].shape[1:]) if items else [],
            "pictures": {k: os.path.relpath(v, self.report_dir) for k, v in files.items()},
            "data": {
                "dataset_dir": self._show_path(str(self.overrides.get("dataset_dir", "?"))),
                "split": str(self.overrides.get("split", "test")),
            },
            "feature_channels": int(metaseg.trunk[-1].out_features),
            "system": system_info(device),
        }
        write_json_atomic(result, os.path.join(self.output_dir, "comparison.json"))
        report = os.path.join(self.report_dir, self.report_name)
        with atomic_path(report) as tmp, open(tmp, "w") as f:
            f.write(render(result))
        logger.info(f"report written: {report}")
        return result

    @staticmethod
    def _preset_ckpt(preset: Mapping[str, Any]) -> str:
        return os.path.join(str(preset["ckpt_dir"]), "model.pt")

    def _preset_result(self, preset: Mapping[str, Any], sweep_items: list[dict]) -> dict:
        """A preset's evaluation on the main split, its weights record and its fit-steps sweep."""
        name = str(preset["name"])
        workflow, summary = self._evaluate(
            f"preset_{name}",
            self.metaseg_config_files + list(preset["config_files"]),
            {"ckpt_dir": str(preset["ckpt_dir"])},
        )
        parser = workflow.parser
        device = parser.get_parsed_content("device")
        network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
        ckpt = self._preset_ckpt(preset)
        return {
            "name": name,
            "config_files": [self._show_path(str(f)) for f in preset["config_files"]],
            "note": preset.get("note"),
            **summary,
            **self._weights_record(ckpt, None, os.path.splitext(ckpt)[0] + "_train_time.json"),
            "fit_steps_sweep": fit_steps_sweep(inferer, network, sweep_items, device, self.fit_steps_list),
        }

    def _weights_record(self, ckpt: str, train_seconds: float | None, train_time_file: str) -> dict:
        seconds, source = read_train_time(train_seconds, train_time_file)
        return {
            "weights": self._show_path(ckpt),
            "file_bytes": os.path.getsize(ckpt),
            "train_seconds": seconds,
            "train_seconds_source": source,
        }

    def _show_path(self, path: str) -> str:
        """``path`` relative to the bundle root when inside it, else absolute."""
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.bundle_root))
        return os.path.abspath(path) if rel.startswith("..") else rel
