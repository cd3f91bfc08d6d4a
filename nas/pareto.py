"""The Pareto front of a results table (quality up, or down for FID; MACs down), computed once into a small
record; ``pareto_figure`` draws that record with plotly (for ``pareto.html`` and the dashboard alike), and
``hypervolume`` measures it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from evaluators.quality import format_share
from nas.files import atomic_write


@dataclass(frozen=True)
class ParetoFront:
    """Candidates (evaluated rows) and the indices of the non-dominated ones, by ascending MACs."""

    candidates: pd.DataFrame
    front: list[int]
    macs_column: str
    budget: float | None = None
    teacher_macs: float | None = None
    teacher_quality: float | None = None
    higher_is_better: bool = True  # the quality's direction (False for FID)
    baseline_quality: float | None = None  # the zero-MACs answer's (bicubic's), where there is one
    baseline_name: str = "bicubic"

    @property
    def front_rows(self) -> pd.DataFrame:
        return self.candidates.loc[self.front]


def pareto_front(table: pd.DataFrame, *, macs_column: str = "macs_torchprofile", budget: float | None = None,
                 teacher_macs: float | None = None, teacher_quality: float | None = None,
                 higher_is_better: bool = True, baseline_quality: float | None = None,
                 quality_column: str = "quality") -> ParetoFront:
    """Non-dominated rows among those evaluated (status ok): no other row has quality at least as good
    (>=, or <= where lower is better) and MACs <= with one strictly better. Of exact ties (same quality
    and MACs) the first is kept. ``quality_column`` picks another metric of the table (the front of PSNR, SSIM
    or the share); it becomes the candidates' "quality"."""
    ok = table[(table["status"] == "ok") & table[quality_column].notna()].copy()
    ok["quality"] = ok[quality_column]
    ok["quality"] = ok["quality"].astype(float)
    ok[macs_column] = ok[macs_column].astype(float)
    sign = 1.0 if higher_is_better else -1.0  # the front of -FID upwards is that of FID downwards
    order = ok.assign(_goodness=sign * ok["quality"]).sort_values([macs_column, "_goodness"], ascending=[True, False],
                                                                  kind="stable")
    front, best = [], float("-inf")
    for index, goodness in order["_goodness"].items():
        if goodness > best:
            front.append(index)
            best = goodness
    return ParetoFront(ok, front, macs_column, budget, teacher_macs, teacher_quality, higher_is_better,
                       baseline_quality)


def hypervolume(macs: Iterable[float], quality: Iterable[float], *, ref_macs: float, ref_quality: float,
                higher_is_better: bool = True) -> float:
    """Area (MACs x quality) dominated by the points and bounded by the reference point: a budget on the MACs
    axis and a floor on the quality axis (bicubic's quality, or the worst candidate's). Points beyond the
    reference add nothing; the units are those given."""
    sign = 1.0 if higher_is_better else -1.0
    points = sorted((m, sign * q) for m, q in zip(macs, quality) if m < ref_macs and sign * q > sign * ref_quality)
    volume, best = 0.0, sign * ref_quality
    for i, (m, q) in enumerate(points):  # sweep by MACs; each step adds the area above the best so far
        best = max(best, q)
        right = points[i + 1][0] if i + 1 < len(points) else ref_macs
        volume += (right - m) * (best - sign * ref_quality)
    return volume


def hypervolume_history(macs: Iterable[float], quality: Iterable[float], *, ref_macs: float, ref_quality: float,
                        higher_is_better: bool = True) -> list[float]:
    """The hypervolume after each point, in the order given (trials by finishing time). The front is kept as it
    grows, so a point costs the front's size, not the table's."""
    sign = 1.0 if higher_is_better else -1.0
    front: list[tuple[float, float]] = []  # (macs, signed quality), non-dominated
    history, volume = [], 0.0
    for m, q in zip(macs, quality):
        q = sign * q
        if m < ref_macs and q > sign * ref_quality and not any(fm <= m and fq >= q for fm, fq in front):
            front = [(fm, fq) for fm, fq in front if not (m <= fm and q >= fq)] + [(m, q)]
            volume = hypervolume([p[0] for p in front], [p[1] for p in front], ref_macs=ref_macs,
                                 ref_quality=sign * ref_quality)
        history.append(volume)
    return history


def pareto_figure(front: ParetoFront, *, title: str = "", quality_label: str = "quality", name: str = "",
                  color: str = "crimson", fig: Any = None, webgl: bool = False, log_x: bool = False,
                  run_key: str = "") -> Any:
    """Every candidate (infeasible ones, over the budget, as crosses), the front as a step line, the budget as a
    vertical line, the teacher as a star, the baseline (bicubic) as a horizontal line; hover shows the config
    and the metrics, and each point carries its trial id and ``run_key`` (``customdata[4:6]``). ``fig`` adds one more run's
    traces to a figure (the dashboard's runs side by side); ``webgl`` draws with Scattergl (10,000s of points)."""
    import plotly.graph_objects as go

    scatter = go.Scattergl if webgl else go.Scatter
    fig = fig if fig is not None else go.Figure()
    c, col = front.candidates, front.macs_column
    prefix = f"{name}: " if name else ""
    # The share of the teacher's (PSNR) gain means nothing beside an FID; the FID's image counts take its place.
    beside = "share of the teacher's gain %{customdata[3]}" if front.higher_is_better else "%{customdata[3]}"
    hover = (prefix + "trial %{customdata[4]}<br>config %{customdata[0]}<br>MACs %{x:.4g}G<br>" + quality_label
             + " %{y:.3f}<br>" + beside + "<br>params %{customdata[1]:,}<br>latency %{customdata[2]:.1f} ms<extra></extra>")

    def customdata(rows: pd.DataFrame):
        if front.higher_is_better:
            third = rows.get("share", pd.Series(None, index=rows.index, dtype=object)).map(format_share)
        else:
            third = pd.Series([_counts(r) for r in rows.to_dict("records")], index=rows.index, dtype=object)
        return rows[["config", "params", "latency_ms"]].fillna(0).assign(third=third, trial=rows["trial_id"],
                                                                          run=run_key).values

    infeasible = c[col] > front.budget if front.budget is not None else pd.Series(False, index=c.index)
    for rows, label, symbol in ((c[~infeasible], "candidates", "circle"), (c[infeasible], "over the budget", "x")):
        if len(rows) or label == "candidates":
            fig.add_trace(scatter(x=rows[col] / 1e9, y=rows["quality"], mode="markers", name=prefix + label,
                                  legendgroup=name, marker={"color": color, "opacity": 0.35, "size": 7,
                                                            "symbol": symbol},
                                  customdata=customdata(rows), hovertemplate=hover))
    f = front.front_rows
    fig.add_trace(scatter(x=f[col] / 1e9, y=f["quality"], mode="lines+markers", name=prefix + "Pareto front",
                          legendgroup=name, line={"shape": "hv", "color": color}, marker={"size": 10, "color": color},
                          customdata=customdata(f), hovertemplate=hover))
    if front.budget is not None:
        fig.add_vline(x=front.budget / 1e9, line_dash="dash", line_color=color if name else "gray",
                      annotation_text=f"{prefix}budget {front.budget / 1e9:.3g}G")
    if front.baseline_quality is not None:
        fig.add_hline(y=front.baseline_quality, line_dash="dot", line_color="gray",
                      annotation_text=f"{prefix}{front.baseline_name} (0 MACs)", annotation_position="bottom right")
    if front.teacher_macs is not None and front.teacher_quality is not None:
        fig.add_trace(scatter(x=[front.teacher_macs / 1e9], y=[front.teacher_quality], mode="markers",
                              name=prefix + "teacher", legendgroup=name,
                              marker={"symbol": "star", "size": 16, "color": "black"},
                              hovertemplate=prefix + "teacher<br>MACs %{x:.4g}G<br>" + quality_label
                              + " %{y:.3f}<extra></extra>"))
    convention = col.removeprefix("macs_")
    fig.update_layout(title=title, xaxis_title=f"MACs per image (G, {convention} convention)",
                      yaxis_title=quality_label, template="plotly_white")
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def render_html(front: ParetoFront, path: str | Path, *, title: str, quality_label: str = "quality") -> None:
    """``pareto_figure`` as a standalone HTML file (plotly.js inside: it opens offline)."""
    fig = pareto_figure(front, title=title, quality_label=quality_label)
    atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=True))


def _counts(row: dict) -> str:
    """'N generated vs M real images' of a row's FID; empty where the row has none."""
    images, real = row.get("fid_images"), row.get("fid_real_images")
    if images is None or real is None or images != images or real != real:
        return ""
    return f"{int(images)} generated vs {int(real)} real images"
