"""The dashboard's figures, from RunViews (plotly; the Pareto plot is nas.pareto's, as in pareto.html)."""

from __future__ import annotations

import json
import time

import pandas as pd
import plotly.graph_objects as go

from nas.dashboard.data import METRICS, RunView
from nas.pareto import pareto_figure

COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
# zoom and legend state survive a refresh of the data (plotly keeps them while uirevision is unchanged)
UIREVISION = "runs"
# WebGL draws 10,000s of points where SVG would crawl, but its context costs seconds to start under software
# rendering: small runs are drawn as SVG
WEBGL_FROM = 1000


def empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(template="plotly_white", xaxis={"visible": False}, yaxis={"visible": False},
                      annotations=[{"text": message, "showarrow": False, "font": {"size": 14}}], uirevision=UIREVISION)
    return fig


def colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def metric_label(runs: list[RunView], metric: str) -> str:
    if metric != "quality":
        return METRICS[metric]
    labels = {{"psnr": "val PSNR (dB)", "fid": "val FID (lower is better)",
               "fidelity_psnr": "val PSNR against the teacher (dB)"}.get(r.metric, r.metric) for r in runs}
    return " / ".join(sorted(labels))


def pareto(runs: list[RunView], metric: str, convention: str, log_x: bool) -> go.Figure:
    """Every chosen run's candidates and front, one colour per run (WebGL: 10,000s of points)."""
    fig = go.Figure()
    drawn = 0
    for i, run in enumerate(runs):
        front = run.front(metric, convention)
        if front is None:
            continue
        pareto_figure(front, quality_label=metric_label([run], metric), name=run.label if len(runs) > 1 else "",
                      color=colour(i), fig=fig, webgl=len(run.table) > WEBGL_FROM, log_x=log_x, run_key=run.key)
        drawn += 1
    if not drawn:
        return empty("no finished trials to draw yet" if runs else "choose a run in the table above")
    fig.update_layout(title=None, yaxis_title=metric_label(runs, metric), uirevision=UIREVISION,
                      clickmode="event+select", dragmode="select", legend={"orientation": "h", "y": -0.2},
                      margin={"t": 30})
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def hypervolume(runs: list[RunView], metric: str) -> go.Figure:
    """Each run's hypervolume against its finished trials (in its own MACs convention, that of its budget)."""
    fig = go.Figure()
    notes = []
    for i, run in enumerate(runs):
        history, note = run.hypervolume(metric)
        if history:
            fig.add_trace(go.Scatter(x=list(range(1, len(history) + 1)), y=history, mode="lines", name=run.label,
                                     line={"color": colour(i), "shape": "hv"}))
            notes.append(f"{run.label}: {note}" if len(runs) > 1 else note)
    if not fig.data:
        return empty("no feasible candidates above the reference point yet")
    fig.update_layout(template="plotly_white", xaxis_title="finished trials", yaxis_title="hypervolume (G x quality)",
                      uirevision=UIREVISION, margin={"t": 30}, showlegend=len(runs) > 1,
                      annotations=[{"text": "<br>".join(notes), "xref": "paper", "yref": "paper", "x": 0, "y": 1.12,
                                    "showarrow": False, "align": "left", "font": {"size": 10}}])
    return fig


def training_curves(runs: list[RunView]) -> tuple[go.Figure, list[str]]:
    """Loss against step of training trials, and a line per trial in flight with its remaining time."""
    fig = go.Figure()
    flying = []
    for i, run in enumerate(runs):
        for trial in run.trial_progress():
            p = trial["progress"]
            fig.add_trace(go.Scatter(x=p["step"], y=pd.to_numeric(p["loss"], errors="coerce"), mode="lines",
                                     name=f"{run.key}/{trial['trial_id']}" if len(runs) > 1 else trial["trial_id"],
                                     line={"color": colour(i), "dash": "solid" if trial["in_flight"] else "dot"}))
            if trial["in_flight"]:
                flying.append(f"{run.key}/{trial['trial_id']}: " + remaining(p))
    if not fig.data:
        return empty("no training trials (a supernet's candidates are judged without training)"), flying
    fig.update_layout(template="plotly_white", xaxis_title="step", yaxis_title="training loss", yaxis_type="log",
                      uirevision=UIREVISION, margin={"t": 30})
    return fig, flying


def remaining(progress: pd.DataFrame) -> str:
    """'step S/N, about M min left', from the pace of the trial's reports since its last (re)start."""
    last = progress.iloc[-1]
    step, steps = int(last["step"]), int(last["steps"])
    restarts = progress.index[progress["restored_at"].notna()] if "restored_at" in progress else []
    since = progress.loc[restarts[-1]:] if len(restarts) else progress  # the pace since the last restart
    done = step - int(since["step"].iloc[0])
    seconds = float(since["time"].iloc[-1] - since["time"].iloc[0])
    if done <= 0 or seconds <= 0:
        return f"step {step}/{steps}"
    left = (steps - step) * seconds / done - (time.time() - float(last["time"]))
    return f"step {step}/{steps}, about {max(left, 0) / 60:.1f} min left"


def parallel_choices(run: RunView, metric: str, convention: str) -> go.Figure:
    """The front's choices, one axis per parameter, coloured by quality."""
    front = run.front(metric, convention)
    if front is None or not len(front.front):
        return empty("no front yet")
    rows = front.front_rows
    params = pd.DataFrame([json.loads(p) if isinstance(p, str) else {} for p in rows["params_json"]])
    dimensions = []
    for name in params.columns:
        values = params[name]
        if values.astype(str).nunique() < 2:  # a choice the whole front shares says nothing here
            continue
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all():
            dimensions.append({"label": name, "values": numeric.tolist()})
        else:  # operator names and other categories: one tick per choice
            labels = sorted(values.astype(str).unique())
            dimensions.append({"label": name, "values": [labels.index(v) for v in values.astype(str)],
                               "tickvals": list(range(len(labels))), "ticktext": labels})
    dimensions.append({"label": "GMACs", "values": (rows[front.macs_column] / 1e9).tolist()})
    fig = go.Figure(go.Parcoords(line={"color": rows["quality"].tolist(), "colorscale": "Viridis", "showscale": True},
                                 dimensions=dimensions))
    fig.update_layout(template="plotly_white", margin={"t": 40, "l": 40, "r": 40}, uirevision=UIREVISION)
    return fig
