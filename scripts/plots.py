"""PNG pictures drawn with pillow only: label overlays, picture grids, line plots and a PCA view of features.

Arrays are 2D ``[H, W]`` (first axis = rows). ``transpose=True`` shows the first array axis horizontally, which puts
neurite-oasis coronal slices (``160 x 192``: left-right x superior-inferior) upright. Pillow is imported lazily so
that the rest of the bundle does not need it.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .outputs import atomic_path

__all__ = ["label_palette", "grey_rgb", "overlay_rgb", "pca_rgb", "image_grid", "line_plot", "hconcat", "save_png"]

# background, cortex, subcortical grey matter, white matter, CSF
_TISSUE_COLOURS = [(0, 0, 0), (230, 60, 50), (250, 200, 40), (70, 130, 240), (60, 210, 120)]


def label_palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours: the tissue colours for 5 classes, evenly spaced hues beyond."""
    if num_classes <= len(_TISSUE_COLOURS):
        return np.asarray(_TISSUE_COLOURS[:num_classes], dtype=np.uint8)
    hues = [colorsys.hsv_to_rgb((0.61803 * i) % 1.0, 0.75, 0.95) for i in range(num_classes - 1)]
    return np.asarray([(0, 0, 0)] + [tuple(int(255 * c) for c in h) for h in hues], dtype=np.uint8)


def _as_2d(x: Any) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D array (after squeezing), got shape {a.shape}.")
    return a


def grey_rgb(image: Any, transpose: bool = True) -> np.ndarray:
    """Grey ``[H, W, 3]`` uint8 view of an image, scaled from its minimum to its 99.5th percentile."""
    a = _as_2d(image).astype(np.float64)
    lo, hi = float(a.min()), float(np.percentile(a, 99.5))
    g = np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    g = (255 * g).astype(np.uint8)
    g = g.T if transpose else g
    return np.repeat(g[..., None], 3, axis=-1)


def overlay_rgb(
    image: Any, labels: Any, num_classes: int = 5, alpha: float = 0.5, transpose: bool = True
) -> np.ndarray:
    """Label colours blended over the grey image (background left grey): ``[H, W, 3]`` uint8."""
    grey = grey_rgb(image, transpose).astype(np.float64)
    lab = _as_2d(labels).astype(np.int64)
    lab = lab.T if transpose else lab
    if lab.shape != grey.shape[:2]:
        raise ValueError(f"label shape {lab.shape} differs from image shape {grey.shape[:2]}.")
    colours = label_palette(max(num_classes, int(lab.max()) + 1)).astype(np.float64)
    fg = lab > 0
    out = grey.copy()
    out[fg] = (1 - alpha) * grey[fg] + alpha * colours[lab[fg]]
    return np.clip(out, 0, 255).astype(np.uint8)


def pca_rgb(
    features: torch.Tensor, spatial_shape: Sequence[int], mask: Any = None, transpose: bool = True
) -> np.ndarray:
    """First 3 principal components of per-pixel ``features`` ``[N, F]`` as an RGB ``[H, W, 3]`` uint8 image.

    The components are computed over the pixels in ``mask`` (all pixels if ``None``), each min-max scaled over those
    pixels; pixels outside ``mask`` are black.
    """
    f = torch.as_tensor(features).detach().double().reshape(-1, features.shape[-1]).cpu()
    m = torch.ones(f.shape[0], dtype=torch.bool) if mask is None else torch.as_tensor(mask).reshape(-1).bool().cpu()
    if int(m.sum()) < 3:
        raise ValueError("need at least 3 pixels in the mask for a PCA of the features.")
    sel = f[m]
    mean = sel.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(sel - mean, full_matrices=False)
    k = min(3, v.shape[0])
    proj = (f - mean) @ v[:k].T
    lo, hi = proj[m].min(dim=0).values, proj[m].max(dim=0).values
    proj = ((proj - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))).clamp(0, 1)
    if k < 3:
        proj = torch.cat([proj, torch.zeros(proj.shape[0], 3 - k, dtype=proj.dtype)], dim=1)
    proj[~m] = 0
    rgb = (255 * proj).round().to(torch.uint8).reshape(*spatial_shape, 3).numpy()
    return rgb.transpose(1, 0, 2) if transpose else rgb


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _text_size(draw: Any, text: str, font: Any) -> tuple[int, int]:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def image_grid(
    cells: Sequence[Sequence[np.ndarray]],
    col_titles: Sequence[str] = (),
    row_titles: Sequence[str] = (),
    zoom: int = 2,
    gap: int = 4,
    font_size: int = 14,
    legend: Sequence[tuple[str, Sequence[int]]] = (),
) -> Any:
    """A grid of RGB tiles (rows of ``[H, W, 3]`` uint8 arrays, each zoomed ``zoom`` times) with titles and legend."""
    from PIL import Image, ImageDraw

    font = _font(font_size)
    tiles = [
        [Image.fromarray(c).resize((c.shape[1] * zoom, c.shape[0] * zoom), Image.NEAREST) for c in r] for r in cells
    ]
    tw = max(t.width for r in tiles for t in r)
    th = max(t.height for r in tiles for t in r)
    ncol = max(len(r) for r in tiles)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max([_text_size(probe, t, font)[0] for t in row_titles] + [0]) + (2 * gap if row_titles else 0)
    top = font_size + 3 * gap if col_titles else gap
    bottom = font_size + 3 * gap if legend else gap
    canvas = Image.new("RGB", (left + ncol * (tw + gap) + gap, top + len(tiles) * (th + gap) + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(col_titles):
        w, _ = _text_size(draw, title, font)
        draw.text((left + gap + j * (tw + gap) + (tw - w) // 2, gap), title, fill="black", font=font)
    for i, row in enumerate(tiles):
        y = top + i * (th + gap)
        if i < len(row_titles):
            draw.text((gap, y + th // 2 - font_size // 2), row_titles[i], fill="black", font=font)
        for j, tile in enumerate(row):
            canvas.paste(tile, (left + gap + j * (tw + gap), y))
    x = left + gap
    y = canvas.height - bottom + gap
    for name, colour in legend:
        draw.rectangle([x, y, x + font_size, y + font_size], fill=tuple(int(c) for c in colour), outline="black")
        draw.text((x + font_size + gap, y), name, fill="black", font=font)
        x += font_size + 2 * gap + _text_size(draw, name, font)[0] + 3 * gap
    return canvas


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def line_plot(
    series: Sequence[dict],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    log_x: bool = False,
    x_ticks: Sequence[float] | None = None,
    y_range: tuple[float, float] | None = None,
    size: tuple[int, int] = (560, 400),
    font_size: int = 14,
    legend_loc: str = "lower right",
) -> Any:
    """A line plot with axes, ticks and a legend.

    Each series is ``{"label", "x", "y", "colour", "dashed" (bool), "markers" (bool)}``; a horizontal reference line
    is a series with ``"hline": value`` instead of ``x``/``y``. ``legend_loc``: ``"lower right"`` or
    ``"upper right"``.
    """
    from PIL import Image, ImageDraw

    font = _font(font_size)
    small = _font(max(font_size - 2, 8))
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    margin_l, margin_r, margin_t, margin_b = 70, 20, 2 * font_size + 10, 2 * font_size + 30
    x0, y0, x1, y1 = margin_l, margin_t, size[0] - margin_r, size[1] - margin_b

    xs = [float(v) for s in series if "x" in s for v in s["x"]]
    ys = [float(v) for s in series for v in (s["y"] if "y" in s else [s["hline"]]) if math.isfinite(float(v))]
    if not xs:
        raise ValueError("line_plot needs at least one series with x values.")
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    xlo, xhi = fx(min(xs)), fx(max(xs))
    pad = 0.05 * (xhi - xlo or 1.0)
    xlo, xhi = xlo - pad, xhi + pad
    if y_range is None:
        ylo, yhi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        ypad = 0.08 * (yhi - ylo or abs(yhi) or 1.0)
        ylo, yhi = ylo - ypad, yhi + ypad
    else:
        ylo, yhi = y_range

    def px(v: float) -> float:
        return x0 + (fx(v) - xlo) / (xhi - xlo) * (x1 - x0)

    def py(v: float) -> float:
        return y1 - (v - ylo) / (yhi - ylo) * (y1 - y0)

    for t in _nice_ticks(ylo, yhi):
        draw.line([(x0, py(t)), (x1, py(t))], fill=(230, 230, 230))
        w, h = _text_size(draw, _fmt(t), small)
        draw.text((x0 - w - 6, py(t) - h / 2 - 2), _fmt(t), fill="black", font=small)
    for t in x_ticks if x_ticks is not None else sorted(set(xs)):
        draw.line([(px(t), y1), (px(t), y1 + 4)], fill="black")
        w, _ = _text_size(draw, _fmt(t), small)
        draw.text((px(t) - w / 2, y1 + 6), _fmt(t), fill="black", font=small)
    draw.rectangle([x0, y0, x1, y1], outline="black")

    for s in series:
        colour = tuple(s.get("colour", (31, 119, 180)))
        if "hline" in s:
            pts = [(x0, py(float(s["hline"]))), (x1, py(float(s["hline"])))]
        else:
            pts = [(px(float(a)), py(float(b))) for a, b in zip(s["x"], s["y"]) if math.isfinite(float(b))]
        if s.get("dashed"):
            for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
                n = max(int(math.hypot(bx - ax, by - ay) // 8), 1)
                for k in range(0, n, 2):
                    f0, f1 = k / n, min(k + 1, n) / n
                    draw.line(
                        [(ax + f0 * (bx - ax), ay + f0 * (by - ay)), (ax + f1 * (bx - ax), ay + f1 * (by - ay))],
                        fill=colour,
                        width=2,
                    )
        elif len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        if s.get("markers", "hline" not in s):
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)

    w, _ = _text_size(draw, title, font)
    draw.text(((size[0] - w) / 2, 4), title, fill="black", font=font)
    w, h = _text_size(draw, xlabel, font)
    draw.text(((x0 + x1 - w) / 2, size[1] - h - 10), xlabel, fill="black", font=font)
    if ylabel:
        w, h = _text_size(draw, ylabel, font)
        label = Image.new("RGB", (w + 4, h + 6), "white")
        ImageDraw.Draw(label).text((2, 0), ylabel, fill="black", font=font)
        label = label.rotate(90, expand=True)
        img.paste(label, (4, int((y0 + y1 - label.height) / 2)))

    heights = [_text_size(draw, s["label"], small)[1] + 10 for s in series]
    ly = y0 + 6 if legend_loc == "upper right" else y1 - 6 - sum(heights)
    for s in series:
        colour = tuple(s.get("colour", (31, 119, 180)))
        w, h = _text_size(draw, s["label"], small)
        lx = x1 - w - 40
        draw.rectangle([lx - 4, ly - 2, x1 - 4, ly + h + 6], fill="white")
        draw.line([(lx + w + 6, ly + h / 2 + 2), (lx + w + 30, ly + h / 2 + 2)], fill=colour, width=2)
        draw.text((lx, ly), s["label"], fill="black", font=small)
        ly += h + 10
    return img


def hconcat(images: Sequence[Any], gap: int = 10) -> Any:
    """Side-by-side composition of PIL images on white."""
    from PIL import Image

    width = sum(i.width for i in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, max(i.height for i in images)), "white")
    x = 0
    for i in images:
        out.paste(i, (x, 0))
        x += i.width + gap
    return out


def save_png(image: Any, path: str) -> str:
    """Write a PIL image (or an ``[H, W, 3]`` uint8 array) as PNG atomically (temporary file, then rename)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return path
