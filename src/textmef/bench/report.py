"""Report writers: CSV, Markdown tables, bar charts, per-scene image grids, an HTML page.

Every file is written to a temporary name and renamed into place, so an interrupted run
never leaves a half-written report behind.
"""

from __future__ import annotations

import csv
import html
import io as _io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from textmef.bench.scoring import METRICS, MetricSpec
from textmef.io import atomic_path

__all__ = [
    "best_methods",
    "mean_std",
    "render_grid",
    "summary_markdown",
    "write_bar_charts",
    "write_csv",
    "write_html",
    "write_text",
]

_SPECS = {s.name: s for s in METRICS}


def _measured_not_computed(*args: object) -> NoReturn:
    raise TypeError("s/image is measured while fusing, not computed from the images")


# Seconds per image is a column like the metrics, but lower is better.
TIME_SPEC = MetricSpec(
    "s/image", "none", False, 2, "fusion time per image in seconds", _measured_not_computed
)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(path: Path, rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> None:
    """Rows as CSV with a header; floats at full precision, missing values empty."""
    buffer = _io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    write_text(path, buffer.getvalue())


def _csv_value(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, population std, count) over the finite values; NaNs when there are none."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if finite.size == 0:
        return math.nan, math.nan, 0
    return float(finite.mean()), float(finite.std()), int(finite.size)


def spec_for(column: str) -> MetricSpec:
    """The spec of a metric column, or of the time column."""
    return TIME_SPEC if column == TIME_SPEC.name else _SPECS[column]


def best_methods(
    summary: Mapping[str, Mapping[str, tuple[float, float, int]]], column: str
) -> set[str]:
    """Methods whose mean in ``column`` is the best (ties all count), by the column's sense."""
    means = {
        m: s[column][0] for m, s in summary.items() if column in s and math.isfinite(s[column][0])
    }
    if not means:
        return set()
    pick = max if spec_for(column).higher_is_better else min
    best = pick(means.values())
    digits = spec_for(column).digits
    # Compare at the shown precision: a bold value must not tie an unbolded one on screen.
    return {m for m, v in means.items() if round(v, digits) == round(best, digits)}


def format_cell(mean: float, std: float, digits: int, bold: bool) -> str:
    """``mean ± std`` at ``digits`` decimals, bold when it is the column's best."""
    if not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"**{text}**" if bold else text


def summary_markdown(
    summary: Mapping[str, Mapping[str, tuple[float, float, int]]], columns: Sequence[str]
) -> str:
    """A Markdown table: one row per method, mean ± std per column, best per column bold."""
    best = {c: best_methods(summary, c) for c in columns}
    arrows = {c: "↑" if spec_for(c).higher_is_better else "↓" for c in columns}
    lines = [
        "| method | " + " | ".join(f"{c} {arrows[c]}" for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for method, stats in summary.items():
        cells = [
            format_cell(*stats[c][:2], spec_for(c).digits, method in best[c]) if c in stats else "–"
            for c in columns
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_bar_charts(
    folder: Path,
    summary: Mapping[str, Mapping[str, tuple[float, float, int]]],
    columns: Sequence[str],
) -> list[Path]:
    """One PNG bar chart per column (mean with a ±std error bar per method)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    from matplotlib import pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    methods = list(summary)
    for column in columns:
        means = [summary[m].get(column, (math.nan,))[0] for m in methods]
        stds = [summary[m].get(column, (0, 0.0))[1] for m in methods]
        if not any(math.isfinite(v) for v in means):
            continue
        spec = spec_for(column)
        best = best_methods(summary, column)
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(methods), 3.2), dpi=100)
        colors = ["#d62728" if m in best else "#1f77b4" for m in methods]
        ax.bar(methods, means, yerr=stds, color=colors, capsize=4)
        ax.set_title(f"{column} ({'higher' if spec.higher_is_better else 'lower'} is better)")
        ax.set_ylabel(spec.description, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = folder / f"{_file_safe(column)}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written.append(path)
    return written


def _file_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def render_grid(images: Sequence[tuple[str, np.ndarray]], height: int = 240) -> np.ndarray:
    """Side-by-side thumbnails with a caption under each, as one uint8 RGB image.

    Args:
        images: (caption, HxWx3 float pixels in [0, 1]) in display order.
        height: thumbnail height in pixels (widths follow each image's aspect ratio).
    """
    import cv2
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    caption_h, gap = 22, 6
    thumbs = []
    for caption, pixels in images:
        h, w = pixels.shape[:2]
        width = max(1, round(w * height / h))
        small = cv2.resize(np.clip(pixels, 0, 1), (width, height), interpolation=cv2.INTER_AREA)
        thumbs.append((caption, (small * 255 + 0.5).astype(np.uint8)))
    total_w = sum(t.shape[1] for _, t in thumbs) + gap * (len(thumbs) + 1)
    canvas = PILImage.new("RGB", (total_w, height + caption_h + 2 * gap), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        font = ImageFont.load_default()
    x = gap
    for caption, thumb in thumbs:
        canvas.paste(PILImage.fromarray(thumb), (x, gap))
        draw.text((x + 2, gap + height + 4), caption, fill="black", font=font)
        x += thumb.shape[1] + gap
    return np.asarray(canvas)


def write_html(
    path: Path,
    title: str,
    intro: str,
    table_html: str,
    charts: Sequence[Path],
    scenes: Sequence[tuple[str, Path, str]],
) -> None:
    """A static page: summary table, charts, then each scene's grid with its scores.

    Args:
        path: the page to write; image links are made relative to its folder.
        title: page title.
        intro: HTML paragraph(s) describing the run (already escaped).
        table_html: the summary table as HTML.
        charts: chart images.
        scenes: (scene name, grid image, scene score table as HTML) per scene.
    """
    root = path.parent

    def rel(p: Path) -> str:
        return html.escape(p.relative_to(root).as_posix())

    parts = [
        "<!doctype html>",
        "<html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:110em}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}"
        "th:first-child,td:first-child{text-align:left}"
        ".charts img{height:230px;margin:.2em}.scene img{max-width:100%}"
        "b{color:#b00}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        intro,
        "<h2>Summary</h2>",
        table_html,
        "<div class='charts'>",
        *[f"<img src='{rel(c)}' alt='{rel(c)}'>" for c in charts],
        "</div>",
        "<h2>Scenes</h2>",
    ]
    for name, grid, table in scenes:
        parts += [
            f"<div class='scene'><h3 id='{html.escape(name)}'>{html.escape(name)}</h3>",
            f"<img src='{rel(grid)}' alt='{html.escape(name)}'>",
            table,
            "</div>",
        ]
    parts.append("</body></html>")
    write_text(path, "\n".join(parts) + "\n")


def table_html(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    bold: Mapping[str, set[str]] | None = None,
    key: str = "method",
) -> str:
    """A small HTML table; ``bold[column]`` names the rows (by ``key``) to emphasise."""
    bold = bold or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [key, *columns])
    body = []
    for row in rows:
        cells = [f"<td>{html.escape(str(row[key]))}</td>"]
        for c in columns:
            text = html.escape(str(row.get(c, "–")))
            if row[key] in bold.get(c, ()):
                text = f"<b>{text}</b>"
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"
