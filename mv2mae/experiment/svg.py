"""Two small SVG charts (grouped bars with error bars, lines) written as text: plain files any browser
or Markdown viewer shows, diffable in git, with no plotting library."""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac", "#1b9e77", "#7570b3")
WIDTH, HEIGHT = 960, 440
LEFT, RIGHT, TOP, BOTTOM = 64, 190, 40, 110  # plot margins; the legend sits in the right one


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 × a power of ten)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    return [round(first + i * step, 10) for i in range(int(math.ceil((hi - first) / step)) + 1)]


class _Canvas:
    def __init__(self, title: str, ylabel: str, y_ticks: list[float]) -> None:
        self.y0, self.y1 = y_ticks[0], y_ticks[-1]
        self.parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
                      f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
                      f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
                      f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
                      f'<text transform="translate(16 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" '
                      f'text-anchor="middle">{escape(ylabel)}</text>']
        for t in y_ticks:
            y = self.y(t)
            self.parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
            self.parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
        self.parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" stroke="#333"/>')

    def y(self, value: float) -> float:
        span = HEIGHT - TOP - BOTTOM
        return HEIGHT - BOTTOM - (value - self.y0) / (self.y1 - self.y0) * span

    def legend(self, names: list[str]) -> None:
        for i, name in enumerate(names):
            y = TOP + 8 + 18 * i
            self.parts.append(f'<rect x="{WIDTH - RIGHT + 14}" y="{y - 9}" width="12" height="12" '
                              f'fill="{PALETTE[i % len(PALETTE)]}"/>')
            self.parts.append(f'<text x="{WIDTH - RIGHT + 32}" y="{y + 1}">{escape(name)}</text>')

    def text(self) -> str:
        return "\n".join([*self.parts, "</svg>"]) + "\n"


def bar_chart(categories: list[str], series: list[str], values: dict[tuple[str, str], tuple[float, float | None]],
              title: str, ylabel: str) -> str:
    """Grouped bars: one group per category, one bar per series, ``values[(category, series)] = (mean,
    error)`` (missing pairs leave a gap; an error of None draws no error bar)."""
    tops = [m + (e or 0) for m, e in values.values()] or [1.0]
    canvas = _Canvas(title, ylabel, nice_ticks(min(0.0, *tops), max(tops)))
    group_w = (WIDTH - LEFT - RIGHT) / max(1, len(categories))
    bar_w = group_w * 0.8 / max(1, len(series))
    for g, category in enumerate(categories):
        x0 = LEFT + g * group_w + group_w * 0.1
        for s, name in enumerate(series):
            if (category, name) not in values:
                continue
            mean, err = values[(category, name)]
            x, top, base = x0 + s * bar_w, canvas.y(mean), canvas.y(0.0)
            canvas.parts.append(f'<rect x="{x:.1f}" y="{min(top, base):.1f}" width="{bar_w * 0.92:.1f}" '
                                f'height="{abs(base - top):.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                                f'<title>{escape(category)} · {escape(name)}: {mean:.1f}</title></rect>')
            if err:
                cx = x + bar_w * 0.46
                lo, hi = canvas.y(max(canvas.y0, mean - err)), canvas.y(min(canvas.y1, mean + err))
                canvas.parts.append(f'<path d="M{cx:.1f} {lo:.1f}V{hi:.1f}M{cx - 3:.1f} {lo:.1f}h6'
                                    f'M{cx - 3:.1f} {hi:.1f}h6" stroke="#222" fill="none"/>')
        cx = LEFT + (g + 0.5) * group_w
        canvas.parts.append(f'<text transform="translate({cx:.1f} {HEIGHT - BOTTOM + 14}) rotate(-30)" '
                            f'text-anchor="end">{escape(category)}</text>')
    canvas.legend(series)
    return canvas.text()


def line_chart(lines: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str) -> str:
    """One polyline (with dots) per name, over a shared x axis."""
    points = [p for pts in lines.values() for p in pts] or [(0.0, 0.0), (1.0, 1.0)]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    canvas = _Canvas(title, ylabel, nice_ticks(min(ys), max(ys)))
    x_ticks = nice_ticks(min(xs), max(xs))
    span = WIDTH - LEFT - RIGHT

    def x(value: float) -> float:
        return LEFT + (value - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * span

    for t in x_ticks:
        canvas.parts.append(f'<text x="{x(t):.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{t:g}</text>')
    canvas.parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" '
                        f'stroke="#333"/>')
    canvas.parts.append(f'<text x="{LEFT + span / 2}" y="{HEIGHT - BOTTOM + 40}" text-anchor="middle">'
                        f'{escape(xlabel)}</text>')
    for i, pts in enumerate(lines.values()):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{x(px):.1f},{canvas.y(py):.1f}" for px, py in pts)
        canvas.parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        if len(pts) <= 12:
            canvas.parts += [f'<circle cx="{x(px):.1f}" cy="{canvas.y(py):.1f}" r="3" fill="{color}"/>' for px, py in pts]
    canvas.legend(list(lines))
    return canvas.text()
