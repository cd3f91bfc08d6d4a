"""The Pareto front of a results table (quality up, or down for FID; MACs down), computed once into a small
record; ``render_html`` only draws that record with plotly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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

    @property
    def front_rows(self) -> pd.DataFrame:
        return self.candidates.loc[self.front]


def pareto_front(table: pd.DataFrame, *, macs_column: str = "macs_torchprofile", budget: float | None = None,
                 teacher_macs: float | None = None, teacher_quality: float | None = None,
                 higher_is_better: bool = True) -> ParetoFront:
    """Non-dominated rows among those evaluated (status ok): no other row has quality at least as good
    (>=, or <= where lower is better) and MACs <= with one strictly better. Of exact ties (same quality
    and MACs) the first is kept."""
    ok = table[(table["status"] == "ok") & table["quality"].notna()].copy()
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
    return ParetoFront(ok, front, macs_column, budget, teacher_macs, teacher_quality, higher_is_better)


def render_html(front: ParetoFront, path: str | Path, *, title: str, quality_label: str = "quality") -> None:
    """Every candidate, the front as a step line, the budget and the teacher; hover shows the config."""
    import plotly.graph_objects as go

    c, col = front.candidates, front.macs_column
    # The share of the teacher's (PSNR) gain means nothing beside an FID; the FID's image counts take its place.
    beside = "share of the teacher's gain %{customdata[3]}" if front.higher_is_better else "%{customdata[3]}"
    hover = ("config %{customdata[0]}<br>MACs %{x:.4g}G<br>" + quality_label + " %{y:.3f}<br>" + beside + "<br>"
             "params %{customdata[1]:,}<br>latency %{customdata[2]:.1f} ms<extra></extra>")

    def customdata(rows: pd.DataFrame):
        if front.higher_is_better:
            third = rows.get("share", pd.Series(None, index=rows.index, dtype=object)).map(format_share)
        else:
            third = pd.Series([_counts(r) for r in rows.to_dict("records")], index=rows.index, dtype=object)
        return rows[["config", "params", "latency_ms"]].fillna(0).assign(third=third).values

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=c[col] / 1e9, y=c["quality"], mode="markers", name="candidates",
                             marker={"color": "lightsteelblue", "size": 8}, customdata=customdata(c), hovertemplate=hover))
    f = front.front_rows
    fig.add_trace(go.Scatter(x=f[col] / 1e9, y=f["quality"], mode="lines+markers", name="Pareto front",
                             line={"shape": "hv", "color": "crimson"}, marker={"size": 10},
                             customdata=customdata(f), hovertemplate=hover))
    if front.budget is not None:
        fig.add_vline(x=front.budget / 1e9, line_dash="dash", line_color="gray",
                      annotation_text=f"budget {front.budget / 1e9:.3g}G")
    if front.teacher_macs is not None and front.teacher_quality is not None:
        fig.add_trace(go.Scatter(x=[front.teacher_macs / 1e9], y=[front.teacher_quality], mode="markers",
                                 name="teacher", marker={"symbol": "star", "size": 16, "color": "black"},
                                 hovertemplate="teacher<br>MACs %{x:.4g}G<br>" + quality_label + " %{y:.3f}<extra></extra>"))
    convention = col.removeprefix("macs_")
    fig.update_layout(title=title, xaxis_title=f"MACs per image (G, {convention} convention)",
                      yaxis_title=quality_label, template="plotly_white")
    atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=True))


def _counts(row: dict) -> str:
    """'N generated vs M real images' of a row's FID; empty where the row has none."""
    images, real = row.get("fid_images"), row.get("fid_real_images")
    if images is None or real is None or images != images or real != real:
        return ""
    return f"{int(images)} generated vs {int(real)} real images"
