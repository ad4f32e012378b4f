"""Robustness of MetaSeg and the U-Net baseline to scanner-like perturbations of the input image.

Each model is evaluated by its own bundle evaluation config (MetaSeg: ``configs/inference.json`` +
``configs/evaluate.json``, ``evaluator``; U-Net: ``configs/train.json`` + ``configs/train_unet.json`` +
``configs/evaluate_unet.json``, ``validate#evaluator``) on the demo test split, once per perturbation, and the mean
foreground Dice (``mean_dice``, as ``run evaluating`` reports it) is tabulated against the clean images. Each
perturbation is one or more of MONAI's own transforms, inserted by name into the bundle's preprocessing right after the
image is loaded and BEFORE the bundle's intensity normalization (``normalize_intensity``, which maps the background to 0
and the brain's 75th percentile to 1), as a scan from another scanner would arrive::

    preprocessing#transforms = $@load_transforms + @perturbation + [@normalize_intensity] + @spatial_transforms

Intensities are those of the raw files (demo data: FreeSurfer ``norm``/255, so the brain's 75th percentile, the
normalization's reference, lies near 0.42; the script prints it for the first image). Rows:

- ``clean``: no perturbation (the number of ``run evaluating``);
- ``intensity x0.5``, ``intensity x2``: ``ScaleIntensityd`` with ``factor`` -0.5 / 1.0 (it multiplies by 1 + factor);
- ``offset +0.1``: ``ShiftIntensityd``, the whole image (background included);
- ``gamma 0.6``, ``gamma 1.6``: ``AdjustContrastd`` (gamma on the image rescaled to [0, 1], then scaled back);
- ``bias field``: ``RandBiasFieldd`` with every coefficient of its degree-3 Legendre polynomial set to 0.3 (the top of
  the training augmentation's range, for every coefficient at once): a smooth multiplicative field whose max/min
  ratio over the brain (pixels above the Otsu threshold) is about 2.5 on the demo images (measured and printed for the
  first image of the split);
- ``noise sigma 0.05``: ``RandGaussianNoised``, std 0.05 in raw units (about 12% of the brain's 75th percentile),
  ``sample_std`` false;
- ``blur sigma 1 px``: ``GaussianSmoothd``, sigma 1 pixel;
- ``rotation +10 deg``, ``rotation -10 deg``: ``Rotated`` on image and label (bilinear / nearest, zero padding);
- ``left-right flip``: ``Flipd`` on image and label along the first image axis (left-right in neurite-oasis slices);
- ``test_shifted split``: no perturbation, the demo generator's out-of-distribution subjects (old brains with more
  atrophy, other contrast) instead of the test split.

Geometric perturbations move image and label alike. The random transforms are seeded (``set_random_state(seed)``
after the workflow is built, so both models see the same noise); every run starts with
``monai.utils.set_determinism(seed)`` as the bundle's ``initialize`` does, so MetaSeg's test-time fit draws the same
pixels in every row. ``drop`` is the clean Dice minus the perturbed Dice.

    python -m benchmarks.robustness --output eval/robustness.json

``--preset FILE`` adds a MetaSeg preset's config file (``fast.json``, ``paper.json``) to MetaSeg's stack, its weights
read from that preset's ``ckpt_dir`` (``--ckpt_dir`` still overrides both models' folder)::

    python -m benchmarks.robustness --models metaseg --preset fast.json

``--spatial_dims 3`` runs the same rows on volumes: MetaSeg's 3D configs (``3d.json``, ``evaluate_3d.json``, weights in
``models/3d/``) against the SegResNet baseline (``train_segresnet.json``, ``evaluate_segresnet.json``) on the 3D demo
test split. The perturbations act on the whole loaded volume, before the normalization and the crop to the brain;
the rotations turn about the first axis (``Rotated``'s first angle) and the flip is along the first axis::

    python -m benchmarks.robustness --spatial_dims 3 --num_images 5

``--set KEY=VALUE`` (repeatable) overrides a config id (value parsed as JSON, else kept as a string) in each selected
model's config that defines that id, e.g. ``--set fit_steps=20`` (MetaSeg only) or ``--set device=cpu`` (both).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, Randomizable
from monai.utils import set_determinism

from scripts.checkpoint import require_weights
from scripts.intensity import brain_intensity_range, brain_threshold

REPO_ROOT = Path(__file__).resolve().parents[1]
PREPROCESSING = "preprocessing#transforms"
NORMALIZE = "[@normalize_intensity]"
PERTURBATION = "perturbation"
WEIGHTS = "robustness_weights_file"

# where each kind of workflow keeps its evaluator, its datalist and its weights file (config ids and expression)
METASEG_IDS = {"evaluator": "evaluator", "data": "dataset#data", "weights": "$@ckpt_dir + '/model.pt'"}
BASELINE_IDS = {
    "evaluator": "validate#evaluator",
    "data": "validate#dataset#data",
    "weights": "$@ckpt_dir + '/' + @ckpt_name + '.pt'",
}
# the two workflows per spatial_dims: name, config files and the training command named when the weights are missing
MODELS: dict[int, dict[str, dict[str, Any]]] = {
    2: {
        "metaseg": {
            **METASEG_IDS,
            "name": "MetaSeg",
            "config_files": ["inference.json", "evaluate.json"],
            "command": "python -m monai.bundle run training --config_file configs/train.json",
        },
        "unet": {
            **BASELINE_IDS,
            "name": "U-Net",
            "config_files": ["train.json", "train_unet.json", "evaluate_unet.json"],
            "command": "python -m monai.bundle run training --config_file "
            "\"['configs/train.json','configs/train_unet.json']\"",
        },
    },
    3: {
        "metaseg": {
            **METASEG_IDS,
            "name": "MetaSeg",
            "config_files": ["inference.json", "evaluate.json", "3d.json", "evaluate_3d.json"],
            "command": "python -m monai.bundle run training --config_file "
            "\"['configs/train.json','configs/3d.json','configs/train_3d.json']\"",
        },
        "segresnet": {
            **BASELINE_IDS,
            "name": "SegResNet",
            "config_files": [
                "train.json",
                "train_unet.json",
                "3d.json",
                "train_segresnet.json",
                "evaluate_unet.json",
                "evaluate_segresnet.json",
            ],
            "command": "python -m monai.bundle run training --config_file "
            "\"['configs/train.json','configs/train_unet.json','configs/3d.json','configs/train_segresnet.json']\"",
        },
    },
}

IMAGE_LABEL = ["image", "label"]
# (row name, MONAI transform configs inserted before the normalization, split; None: the configs' own split)
ROWS: list[tuple[str, list[dict[str, Any]], str | None]] = [
    ("clean", [], None),
    (
        "intensity x0.5",
        [{"_target_": "ScaleIntensityd", "keys": "image", "minv": None, "maxv": None, "factor": -0.5}],
        None,
    ),
    (
        "intensity x2",
        [{"_target_": "ScaleIntensityd", "keys": "image", "minv": None, "maxv": None, "factor": 1.0}],
        None,
    ),
    ("offset +0.1", [{"_target_": "ShiftIntensityd", "keys": "image", "offset": 0.1}], None),
    ("gamma 0.6", [{"_target_": "AdjustContrastd", "keys": "image", "gamma": 0.6}], None),
    ("gamma 1.6", [{"_target_": "AdjustContrastd", "keys": "image", "gamma": 1.6}], None),
    (
        "bias field",
        [{"_target_": "RandBiasFieldd", "keys": "image", "prob": 1.0, "degree": 3, "coeff_range": [0.3, 0.3]}],
        None,
    ),
    (
        "noise sigma 0.05",
        [
            {
                "_target_": "RandGaussianNoised",
                "keys": "image",
                "prob": 1.0,
                "mean": 0.0,
                "std": 0.05,
                "sample_std": False,
            }
        ],
        None,
    ),
    ("blur sigma 1 px", [{"_target_": "GaussianSmoothd", "keys": "image", "sigma": 1.0}], None),
    *(
        (
            f"rotation {deg:+d} deg",
            [
                {
                    "_target_": "Rotated",
                    "keys": IMAGE_LABEL,
                    "angle": math.radians(deg),
                    "mode": ["bilinear", "nearest"],
                    "padding_mode": "zeros",
                }
            ],
            None,
        )
        for deg in (10, -10)
    ),
    ("left-right flip", [{"_target_": "Flipd", "keys": IMAGE_LABEL, "spatial_axis": 0}], None),
    ("test_shifted split", [], "test_shifted"),
]
BIAS_ROW = "bias field"


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON if it parses (numbers, booleans, lists, null), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``{id: value}`` of the ``--set KEY=VALUE`` options."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key] = parse_value(value)
    return out


def build_parser(model: str, args: argparse.Namespace, sets: dict[str, Any], output_dir: str) -> ConfigParser:
    """The model's evaluation config with the benchmark's overrides (no perturbation yet)."""
    parser = ConfigParser()
    files = MODELS[args.spatial_dims][model]["config_files"] + (args.preset if model == "metaseg" else [])
    parser.read_config([str(REPO_ROOT / "configs" / f) for f in files])
    parser["bundle_root"] = str(REPO_ROOT)
    parser["output_dir"] = output_dir
    parser["check_overrides"] = False
    if args.ckpt_dir is not None:
        parser["ckpt_dir"] = str(Path(args.ckpt_dir).absolute())
    if args.dataset_dir is not None:
        parser["dataset_dir"] = str(Path(args.dataset_dir).absolute())
    if args.splits_file is not None:
        parser["splits_file"] = str(Path(args.splits_file).absolute())
    for key, value in sets.items():
        if key in parser:
            parser[key] = value
    return parser


def perturb(parser: ConfigParser, data_id: str, transforms: list[dict], split: str | None, num_images: int | None):
    """Insert ``transforms`` before the normalization, select ``split`` and keep the first ``num_images`` of the
    datalist ``data_id``."""
    pipeline = parser[PREPROCESSING]
    if not isinstance(pipeline, str) or NORMALIZE not in pipeline:
        raise ValueError(f"{PREPROCESSING} no longer contains {NORMALIZE}: {pipeline!r}; update this benchmark.")
    parser[PERTURBATION] = json.loads(json.dumps(transforms))  # a copy: the parser keeps what it is given
    parser[PREPROCESSING] = pipeline.replace(NORMALIZE, f"@{PERTURBATION} + {NORMALIZE}", 1)
    if split is not None:
        parser["split"] = split
    if num_images is not None:
        expr = parser[data_id]
        if not (isinstance(expr, str) and expr.startswith("$")):
            raise ValueError(f"{data_id} is not an expression: {expr!r}; update this benchmark.")
        parser[data_id] = f"$({expr[1:]})[:{int(num_images)}]"


def seed_random(transforms: list, seed: int) -> None:
    """Seed every random transform in ``transforms`` (after the DataLoader has seeded them from torch's RNG)."""
    for t in transforms:
        if isinstance(t, Randomizable):
            t.set_random_state(seed=seed)


def evaluate(
    model: str, args: argparse.Namespace, sets: dict[str, Any], transforms: list[dict], split: str | None
) -> tuple[float, int]:
    """Mean foreground Dice of ``model`` on the (perturbed) split, and the number of images."""
    with tempfile.TemporaryDirectory(prefix="robustness-") as output_dir:
        parser = build_parser(model, args, sets, output_dir)
        perturb(parser, MODELS[args.spatial_dims][model]["data"], transforms, split, args.num_images)
        seed = int(parser.get_parsed_content("seed"))
        set_determinism(seed=seed)
        evaluator = parser.get_parsed_content(MODELS[args.spatial_dims][model]["evaluator"])
        seed_random(parser.get_parsed_content(PERTURBATION), seed)
        evaluator.run()
        dice = float(evaluator.state.metrics["mean_dice"])
        count = len(evaluator.data_loader.dataset)
        del evaluator, parser
        gc.collect()
        set_determinism(seed=None)
    return dice, count


def prepare(model: str, args: argparse.Namespace, sets: dict[str, Any]) -> None:
    """Check the model's weights; generate the demo data when the config reads the demo folder (its
    ``dataset_root``, which calls ``scripts.demo_data.dataset_folder``; a no-op once they exist)."""
    with tempfile.TemporaryDirectory(prefix="robustness-") as output_dir:
        parser = build_parser(model, args, sets, output_dir)
        spec = MODELS[args.spatial_dims][model]
        parser[WEIGHTS] = spec["weights"]
        require_weights(parser.get_parsed_content(WEIGHTS), spec["name"], spec["command"])
        parser.get_parsed_content("dataset_root")


def measure_bias_field(args: argparse.Namespace, sets: dict[str, Any], model: str) -> dict[str, float]:
    """Brain 75th percentile of the first raw image, and max/min of the bias row's field over its brain."""
    with tempfile.TemporaryDirectory(prefix="robustness-") as output_dir:
        parser = build_parser(model, args, sets, output_dir)
        transforms = {name: t for name, t, _ in ROWS}[BIAS_ROW]
        data_id = MODELS[args.spatial_dims][model]["data"]
        perturb(parser, data_id, transforms, None, 1)
        seed = int(parser.get_parsed_content("seed"))
        load = Compose(parser.get_parsed_content("load_transforms"))
        bias = Compose(parser.get_parsed_content(PERTURBATION))
        bias.set_random_state(seed=seed)
        item = load(parser.get_parsed_content(data_id)[0])
        raw = torch.as_tensor(item["image"]).float()
        field = torch.as_tensor(bias(dict(item))["image"]).float() / raw.clamp_min(1e-12)
        brain = raw > brain_threshold(raw.flatten())  # the brain as the normalization finds it
        _, reference = brain_intensity_range(raw)
        return {"bias_field_max_min": float(field[brain].max() / field[brain].min()), "brain_p75": reference}


def eval_namespace(
    ckpt_dir: str | None, dataset_dir: str | None = None, splits_file: str | None = None
) -> argparse.Namespace:
    """The options :func:`build_parser` reads, for a 2D evaluation without preset or image limit (the other
    benchmarks' way to call :func:`prepare` and :func:`evaluate`)."""
    return argparse.Namespace(
        spatial_dims=2, preset=[], ckpt_dir=ckpt_dir, dataset_dir=dataset_dir, splits_file=splits_file, num_images=None
    )


def unknown_sets(models: list[str], args: argparse.Namespace, sets: dict[str, Any]) -> list[str]:
    """The ``--set`` ids that none of ``models``' configs defines (typos), in the order given."""
    with tempfile.TemporaryDirectory() as tmp:
        known = [build_parser(m, args, {}, tmp) for m in models]
        return [k for k in sets if not any(k in p for p in known)]


def report(
    script: str,
    rows: list[dict],
    names: dict[str, str],
    info: dict[str, Any],
    output: str | None,
    argv: list[str] | None,
    label: str = "perturbation",
) -> dict:
    """Add each row's drop from the first row, print the Markdown table and the command line of
    ``python -m benchmarks.<script>``, write ``{models, rows, **info, command}`` to ``output`` (JSON) if given and
    return it."""
    for row in rows:
        for m in names:
            row[m]["drop"] = rows[0][m]["dice"] - row[m]["dice"]
    print()
    print(markdown_table(rows, names, label))
    return write_result(script, {"models": names, "rows": rows, **info}, output, argv)


def write_result(script: str, result: dict, output: str | None, argv: list[str] | None) -> dict:
    """Print the command line of ``python -m benchmarks.<script>``, add it to ``result`` and write that to ``output``
    (JSON) if given; return it."""
    command = shlex.join(["python", "-m", f"benchmarks.{script}", *(sys.argv[1:] if argv is None else argv)])
    print()
    print(f"command: {command}")
    result = {**result, "command": command}
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=1) + "\n")
    return result


def fmt(x: float) -> str:
    """4 decimals, without a ``-0.0000`` for a drop that rounds to zero."""
    return f"{x:.4f}" if round(x, 4) != 0 else "0.0000"


def markdown_table(rows: list[dict], names: dict[str, str], label: str = "perturbation") -> str:
    """The rows as a markdown table: each row's ``label`` entry, then each model's (``names``: key -> display name)
    Dice and drop from the first row."""
    models = list(names)
    head = f"| {label} |" + "".join(f" {names[m]} Dice | drop |" for m in models)
    lines = [head, "|---|" + "---:|---:|" * len(models)]
    for row in rows:
        cells = "".join(f" {fmt(row[m]['dice'])} | {fmt(row[m]['drop'])} |" for m in models)
        lines.append(f"| {row[label]} |{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description="Mean foreground Dice of MetaSeg and the U-Net under input perturbations (before normalization).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--num_images", type=int, default=None, help="first N images of the split (default: all)")
    ap.add_argument(
        "--split", default="test", help="split of the perturbed rows (choose settings on 'val', report on 'test')"
    )
    ap.add_argument(
        "--rows",
        nargs="+",
        default=None,
        metavar="NAME",
        help="perturbation rows to run, by name (default: all; 'clean' always runs first)",
    )
    ap.add_argument(
        "--spatial_dims",
        type=int,
        choices=sorted(MODELS),
        default=2,
        help="2: MetaSeg and the U-Net on slices; 3: the 3D configs (3d.json), MetaSeg and SegResNet on volumes",
    )
    ap.add_argument(
        "--models",
        nargs="+",
        choices=sorted({m for specs in MODELS.values() for m in specs}),
        default=None,
        help="models to evaluate (default: both of --spatial_dims; 2D: metaseg unet, 3D: metaseg segresnet)",
    )
    ap.add_argument("--output", default=None, help="JSON file for the results (optional)")
    ap.add_argument("--dataset_dir", default=None, help="dataset folder (default: the configs' demo data)")
    ap.add_argument("--splits_file", default=None, help="splits JSON (default: as the configs derive it)")
    ap.add_argument(
        "--ckpt_dir",
        default=None,
        help="folder of the models' weights (default: the configs' own, models/ or models/3d/)",
    )
    ap.add_argument(
        "--preset",
        nargs="+",
        default=[],
        metavar="FILE",
        help="MetaSeg preset config file(s) in configs/ added to MetaSeg's configs, e.g. fast.json",
    )
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, applied to each selected model whose config defines KEY (VALUE parsed as JSON, else "
        "a string); repeatable, e.g. --set fit_steps=20 --set network_def#features=[4,4,4,4,4,4]",
    )
    args = ap.parse_args(argv)
    if args.num_images is not None and args.num_images < 1:
        ap.error("--num_images must be at least 1")
    names = [name for name, _, _ in ROWS]
    unknown_rows = sorted(set(args.rows or []) - set(names))
    if unknown_rows:
        ap.error(f"--rows: unknown rows {unknown_rows}; choose from {names}")
    selected = [r for r in ROWS if args.rows is None or r[0] == "clean" or r[0] in args.rows]
    specs = MODELS[args.spatial_dims]
    models = list(dict.fromkeys(args.models or specs))
    foreign = [m for m in models if m not in specs]
    if foreign:
        ap.error(f"--models {foreign} not available with --spatial_dims {args.spatial_dims}; choose from {list(specs)}")
    model_names = {m: specs[m]["name"] for m in models}
    try:
        sets = parse_sets(args.sets)
    except ValueError as e:
        ap.error(str(e))
    unknown = unknown_sets(models, args, sets)
    if unknown:
        ap.error(f"--set ids that no selected model's config defines: {unknown}")

    for m in models:
        prepare(m, args, sets)
    field = measure_bias_field(args, sets, models[0])
    print(
        f"first image: brain 75th percentile {field['brain_p75']:.4f} (raw units; noise sigma 0.05 is "
        f"{0.05 / field['brain_p75']:.1%} of it); bias field max/min over the brain {field['bias_field_max_min']:.2f}",
        flush=True,
    )

    rows = []
    start = time.perf_counter()
    for name, transforms, split in selected:
        split = split or args.split
        row: dict[str, Any] = {"perturbation": name, "split": split, "transforms": transforms}
        for m in models:
            dice, count = evaluate(m, args, sets, transforms, split)
            row[m] = {"dice": dice, "num_images": count}
            print(f"{name:>20s}  {model_names[m]:>9s}  Dice {dice:.4f}  ({count} images)", flush=True)
        rows.append(row)
    info = {
        "spatial_dims": args.spatial_dims,
        "bias_field_max_min": field["bias_field_max_min"],
        "brain_p75_first_image": field["brain_p75"],
        "sets": sets,
        "presets": args.preset,
        "num_images": args.num_images,
        "split": args.split,
        "seconds": time.perf_counter() - start,
    }
    return report("robustness", rows, model_names, info, args.output, argv)


if __name__ == "__main__":
    main()
