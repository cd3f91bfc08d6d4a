"""The Dash app: runs, their Pareto fronts side by side, the front members' pictures, hypervolume, training
curves, the choices of the front and the trial table, refreshed live while a search writes its run.

A poll compares the run folders' files (modification time and size) every few seconds and re-sends
nothing when they are unchanged; when they changed, figures are re-sent with the same ``uirevision``
(legend state) and the Pareto plot's zoom, kept from its relayout events, re-applied.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import dash
import pandas as pd
from dash import Input, Output, State, dash_table, dcc, html
from flask import abort, send_file

from nas.dashboard import figures
from nas.dashboard.data import CONVENTIONS, METRICS, RunsCache, RunView, number
from evaluators.macs import format_macs
from evaluators.quality import format_share

FILES_ROUTE = "/files/"
TRIAL_COLUMNS = ["trial_id", "config", "macs_torchprofile", "macs_fvcore", "quality", "share", "psnr", "ssim",
                 "fidelity_psnr", "latency_ms", "params", "feasible", "status", "error", "seconds", "finished_at"]
IMAGE = {"imageRendering": "pixelated", "display": "block"}


def serve_file(root: Path, rel: str, runs: list[Path]) -> Any:
    """A picture of a run folder; anything outside ``root`` and the run folders linked under it (``..``, absolute
    paths, other links out) is refused."""
    target = (root / rel).resolve()
    inside = target.is_relative_to(root) or any(target.is_relative_to(run) for run in runs)
    if not inside or target.suffix.lower() != ".png" or not target.is_file():
        abort(404)
    return send_file(target, mimetype="image/png", max_age=0)


def runs_rows(runs: list[RunView]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        info, counts, best = run.info, run.counts(), run.best()
        rows.append({
            "id": run.key, "run": run.label, "space": info.space if info else "", "method": info.method if info else "",
            "budget": format_macs(info.budget) if info and info.budget else "", "status": run.state(),
            "finished": counts["finished"], "failed": counts["failed"], "rejected": counts["rejected"],
            "lost": counts["lost"], "best": f"{best['quality']:.3f}" if best else "",
            "share": format_share(best["share"]) if best else "", "started": info.started if info else "",
        })
    return rows


def message_list(lines: list[str]) -> list[Any]:
    return [html.Div(line, className="message", style={"background": "#fff4e5", "padding": "6px 10px",
                                                          "margin": "4px 0", "borderLeft": "4px solid #f0a020"})
            for line in lines]


def picture(src: str, caption: str, side: int, zoom: float, class_name: str = "probe") -> html.Figure:
    return html.Figure([html.Img(src=src, className=class_name, width=int(side * zoom), height=int(side * zoom),
                                 style=IMAGE),
                        html.Figcaption(caption, style={"fontSize": "12px", "width": f"{int(side * zoom)}px",
                                                        "whiteSpace": "normal"})],
                       style={"margin": "4px", "display": "inline-block", "verticalAlign": "top"})


def _src(run: RunView, rel: str) -> str:
    path = run.folder.path / rel
    version = int(path.stat().st_mtime) if path.exists() else 0  # a redrawn picture is fetched again
    base = "" if run.key == "." else f"{run.key}/"
    return f"{FILES_ROUTE}{base}{rel}?v={version}"


def _number(value: Any, form: Any) -> str:
    """``value`` through ``form`` (a format string or a function); "n/a" where there is no number (a failed trial's)."""
    x = number(value)
    if x is None:
        return "n/a"
    return form(x) if callable(form) else form.format(x)


def _db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} dB"


def details(run: RunView, trial_id: str, zoom: float) -> list[Any]:
    """A front member beside the teacher on every probe crop: input, teacher, student, target, |student - teacher|."""
    row = run.table[run.table["trial_id"].astype(str) == trial_id]
    head = []
    if len(row):
        r = row.iloc[0]
        head = [html.H4(f"{run.label} / trial {trial_id}"),
                html.Pre(f"config {r['config']}\nMACs {_number(r['macs_torchprofile'], format_macs)} (torchprofile), "
                         f"{_number(r['macs_fvcore'], format_macs)} (fvcore); params {_number(r['params'], '{:,.0f}')}"
                         f"\nquality {_number(r['quality'], '{:.4f}')} ({r.get('quality_metric')}); share of the "
                         f"teacher's gain {format_share(r.get('share'))}; latency "
                         f"{_number(r['latency_ms'], '{:.1f} ms')}" + (f"\nerror: {r['error']}" if r.get("error") else ""))]
    probe = run.pictures(trial_id)
    if probe is None:
        return head + message_list([f"no pictures for trial {trial_id}: only members of the run's Pareto front get "
                                    "pictures, drawn after each batch of trials and when the search ends"])
    crops = run.probe_crops()
    rows = []
    for i, crop in enumerate(crops):
        side = int(crop.get("size", 128))
        student = f"probes/trials/{trial_id}/student_{i}.png"
        psnr = (probe.get("psnr") or [None] * len(crops))[i]
        fidelity = probe["fidelity_psnr"][i]
        cells = [picture(_src(run, f"probes/input_{i}.png"), f"input ({crop.get('image')}) "
                         f"{_db(crop.get('input_psnr'))}", side, zoom),
                 picture(_src(run, f"probes/teacher_{i}.png"), f"teacher {_db(crop.get('teacher_psnr'))}", side, zoom),
                 picture(_src(run, student), f"student {_db(psnr)}; vs teacher {_db(fidelity)}", side, zoom,
                         "probe student")]
        if (run.folder.probes_dir / f"target_{i}.png").exists():
            cells.append(picture(_src(run, f"probes/target_{i}.png"), "target", side, zoom))
        cells.append(picture(_src(run, f"probes/trials/{trial_id}/diff_{i}.png"), "|student - teacher|", side, zoom))
        rows.append(html.Div(cells, style={"overflowX": "auto", "whiteSpace": "nowrap"}))
    return head + [html.P("PSNR beside each picture: against the target; 'vs teacher': against the teacher's output. "
                          "Heat map: black = equal, yellow = 1/4 of the range or more.", style={"fontSize": "12px"})] + rows


def grid(chosen: list[tuple[RunView, str, float]], zoom: float) -> list[Any]:
    """Rows = probe crops, columns = the teacher then the chosen students by MACs."""
    with_pictures = [(run, t, m, probe) for run, t, m in chosen if (probe := run.pictures(t)) is not None]
    if not with_pictures:
        return message_list(["none of the selected points has pictures: select members of a Pareto front "
                             "(box or lasso on the plot)"])
    with_pictures.sort(key=lambda c: c[2])
    run0 = with_pictures[0][0]
    crops = run0.probe_crops()
    # students of runs with other crops (another val split or teacher) cannot share the first run's rows
    same = [c for c in with_pictures if c[0].probe_crops() == crops]
    notes = [] if len(same) == len(with_pictures) else message_list(
        [f"left out of the grid: the selected candidates of runs whose probe crops differ from {run0.label}'s"])
    rows = []
    for i, crop in enumerate(crops):
        side = int(crop.get("size", 128))
        cells = [picture(_src(run0, f"probes/teacher_{i}.png"), f"teacher {_db(crop.get('teacher_psnr'))}", side, zoom)]
        for run, trial_id, macs, probe in same:
            psnr = (probe.get("psnr") or [None] * (i + 1))[i]
            cells.append(picture(_src(run, f"probes/trials/{trial_id}/student_{i}.png"),
                                 f"{trial_id} {macs:.3g}G {_db(psnr)}", side, zoom, "probe grid-student"))
        rows.append(html.Div(cells, style={"overflowX": "auto", "whiteSpace": "nowrap"}))
    return notes + rows


def render(runs: list[RunView], metric: str, convention: str, logx: list[str] | None, view: dict | None) -> tuple:
    """The views of the chosen runs: Pareto plot (with the user's zoom), hypervolume, training curves and trials
    in flight, the trial table and the optuna-dashboard command."""
    pareto = figures.pareto(runs, metric, convention, "log" in (logx or []))
    if view and view.get("axes") == axes_key(metric, convention, logx):
        for axis in ("xaxis", "yaxis"):
            if view.get(axis):
                pareto.layout[axis].update(range=view[axis], autorange=False)
        if view.get("selections"):
            pareto.layout.selections = view["selections"]
    curves, flying = figures.training_curves(runs)
    optuna = "\n".join(f"optuna-dashboard sqlite:///{r.folder.path / 'optuna.db'}" for r in runs
                       if (r.folder.path / "optuna.db").exists())
    return (pareto, figures.hypervolume(runs, metric), curves,
            [html.Div(f"in flight: {line}") for line in flying],
            ("open a run's Optuna study in optuna-dashboard:\n" + optuna) if optuna else "")


def trial_page(runs: list[RunView], page: int, size: int, sort_by: list[dict] | None,
               query: str | None) -> tuple[list[dict[str, Any]], int]:
    """One page of the chosen runs' trials, filtered (DataTable's query language: ``{col} op value`` joined by
    ``&&``) then sorted; and the page count."""
    parts = [r.table.assign(run=r.key) for r in runs if len(r.table)]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", *TRIAL_COLUMNS])
    table = filter_frame(table[[c for c in ["run", *TRIAL_COLUMNS] if c in table]], query or "")
    if sort_by:
        key = sort_by[0]
        if key["column_id"] in table:
            table = table.sort_values(key["column_id"], ascending=key["direction"] == "asc", kind="stable",
                                      na_position="last")
    pages = max(1, -(-len(table) // size))
    rows = table.iloc[page * size:(page + 1) * size]
    return rows.astype(object).where(rows.notna(), None).to_dict("records"), pages


FILTER_OPERATORS = (("s>=", ">="), ("s<=", "<="), ("s!=", "!="), ("s>", ">"), ("s<", "<"), ("s=", "="),
                    (">=", ">="), ("<=", "<="), ("!=", "!="), ("ge ", ">="), ("le ", "<="), ("ne ", "!="),
                    ("gt ", ">"), ("lt ", "<"), ("eq ", "="), (">", ">"), ("<", "<"), ("=", "="),
                    ("scontains ", "contains"), ("icontains ", "contains"), ("contains ", "contains"))


def filter_frame(table: pd.DataFrame, query: str) -> pd.DataFrame:
    """Rows matching every ``{column} operator value`` part of a DataTable filter query; a part that names no
    column of the table, or is not understood, filters nothing."""
    import operator as op

    compare = {">=": op.ge, "<=": op.le, "!=": op.ne, ">": op.gt, "<": op.lt, "=": op.eq}
    for part in query.split(" && "):
        part = part.strip()
        if not part.startswith("{") or "}" not in part:
            continue
        column, rest = part[1:part.index("}")], part[part.index("}") + 1:].strip()
        if column not in table:
            continue
        for token, name in FILTER_OPERATORS:
            if rest.startswith(token):
                value = rest[len(token):].strip().strip('"').strip("'")
                break
        else:
            continue
        values = table[column]
        if name == "contains":
            table = table[values.astype(str).str.contains(value, case=False, regex=False, na=False)]
            continue
        number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
        numeric = pd.to_numeric(values, errors="coerce")
        if number == number and numeric.notna().any():
            table = table[compare[name](numeric, number).fillna(False)]
        else:
            table = table[compare[name](values.astype(str), value)]
    return table


def csv_of(runs: list[RunView], front: bool, metric: str = "quality", convention: str = "torchprofile") -> str:
    """The chosen runs' trials (or their fronts' rows, for ``metric``), a column naming each row's run."""
    if front:  # (the front's rows as the table holds them: pareto_front puts the chosen metric in "quality")
        parts = [r.table.loc[f.front].assign(run=r.key) for r in runs if (f := r.front(metric, convention)) is not None]
    else:
        parts = [r.table.assign(run=r.key) for r in runs]
    buffer = io.StringIO()
    (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()).to_csv(buffer, index=False)
    return buffer.getvalue()


def runs_state(cache: RunsCache, chosen: set[str] | None) -> tuple[list[dict[str, Any]], list[int], list[Any]]:
    """The runs table's rows, the rows ticked (``chosen`` by name where they still exist; the newest run on a first
    load or when every chosen run is gone; none when the user unticked them all), and the ticked runs' messages."""
    runs = cache.runs()
    if not runs:
        return [], [], message_list([f"no runs under {cache.root}: start one with `python -m nas.search --space "
                                     f"inception --budget 0.5G --out {cache.root}/NAME` (or `make demo`)"])
    keys = [r.key for r in runs]
    selected = [keys.index(k) for k in keys if k in (chosen or ())]
    if chosen is None or (chosen and not selected):
        selected = [keys.index(newest(runs).key)]
    return runs_rows(runs), selected, message_list([p for i in selected for p in runs[i].problems])


def build_app(root: str | Path, *, interval_s: float = 2.0) -> dash.Dash:
    cache = RunsCache(root)
    app = dash.Dash(__name__, title="gan-nas dashboard", update_title=None)
    app.server.add_url_rule(f"{FILES_ROUTE}<path:rel>", "run_file",
                            lambda rel: serve_file(cache.root, rel, [r.folder.path.resolve() for r in cache.runs()]))

    controls = html.Div([
        html.Label(["quality ", dcc.Dropdown(id="metric", options=[{"label": v, "value": k} for k, v in METRICS.items()],
                                             value="quality", clearable=False, style={"width": "280px"})]),
        html.Label(["MACs convention ", dcc.RadioItems(id="convention", options=list(CONVENTIONS),
                                                       value="torchprofile", inline=True)]),
        dcc.Checklist(id="logx", options=[{"label": " log MACs axis", "value": "log"}], value=["log"], inline=True),
        html.Label(["picture zoom ", dcc.RadioItems(id="zoom", options=[{"label": f"{z}x", "value": z}
                                                                          for z in (1, 2, 4)], value=1, inline=True)]),
    ], style={"display": "flex", "gap": "24px", "alignItems": "center", "flexWrap": "wrap"})

    def layout() -> html.Div:
        # made per page load with the runs as they are: the first views are drawn without a round trip
        data, selected, messages = runs_state(cache, None)
        return html.Div([
            html.H2(f"gan-nas: runs under {cache.root}"),
            html.Div(messages, id="messages"),
            dash_table.DataTable(id="runs", row_selectable="multi", data=data, selected_rows=selected,
                                 columns=[{"name": c, "id": c} for c in ("run", "space", "method", "budget", "status",
                                                                         "finished", "failed", "rejected", "lost", "best",
                                                                         "share", "started")],
                                 style_cell={"fontFamily": "monospace", "fontSize": "13px"}),
            controls,
            dcc.Graph(id="pareto", config={"scrollZoom": True}, style={"height": "520px"}),
            html.P("Click a point for its pictures; box- or lasso-select several front members to compare them.",
                   style={"fontSize": "12px"}),
            html.Div(id="details"),
            html.Div(id="grid"),
            html.Div([dcc.Graph(id="hypervolume", style={"height": "360px", "flex": "1"}),
                      html.Div([dcc.Graph(id="curves", style={"height": "330px"}), html.Div(id="inflight")],
                               style={"flex": "1"})], style={"display": "flex"}),
            # drawn when opened: parallel coordinates are WebGL, whose start costs seconds under software rendering
            html.Details([html.Summary("The front's choices (parallel coordinates)"),
                          dcc.Graph(id="parcoords", style={"height": "380px"})], id="choices", open=False),
            html.H4("Trials"),
            html.Div([html.Button("download the table (CSV)", id="download-table"),
                      html.Button("download the front (CSV)", id="download-front"), dcc.Download(id="download")]),
            # paged, sorted and filtered on the server: a 10,000-trial table never travels whole
            dash_table.DataTable(id="trials", columns=[{"name": c, "id": c} for c in ["run", *TRIAL_COLUMNS]],
                                 page_action="custom", page_current=0, page_size=15, sort_action="custom",
                                 sort_mode="single", sort_by=[], filter_action="custom", filter_query="",
                                 style_table={"overflowX": "auto"},
                                 style_cell={"fontFamily": "monospace", "fontSize": "12px", "maxWidth": "420px",
                                             "overflow": "hidden", "textOverflow": "ellipsis"}),
            html.Pre(id="optuna"),
            dcc.Location(id="url"),
            dcc.Store(id="signature", data=repr(cache.signature())),
            dcc.Store(id="view"),  # the Pareto plot's zoom and selection, re-applied to every new figure of its axes
            dcc.Store(id="chosen"),  # the selected candidates the grid shows
            dcc.Interval(id="poll", interval=int(interval_s * 1000)),
        ], style={"fontFamily": "sans-serif", "margin": "12px 24px"})

    app.layout = layout

    def chosen_runs(rows: list[int] | None, data: list[dict] | None) -> list[RunView]:
        wanted = {data[i]["id"] for i in rows or [] if data and i < len(data)}
        return [r for r in cache.runs() if r.key in wanted]

    @app.callback(Output("signature", "data"), Input("poll", "n_intervals"), State("signature", "data"))
    def poll(_: int, known: str | None) -> Any:
        # only this runs every few seconds while nothing changes: file stats, no table is read
        current = repr(cache.signature())
        return dash.no_update if current == known else current

    @app.callback(Output("runs", "data"), Output("runs", "selected_rows"), Output("messages", "children"),
                  Input("signature", "data"), State("runs", "selected_rows"), State("runs", "data"),
                  prevent_initial_call=True)
    def runs_table(_: str | None, rows: list[int] | None, data: list[dict] | None) -> Any:
        # kept by name as runs come and go
        before = {data[i]["id"] for i in rows or [] if i < len(data)} if data else None
        return runs_state(cache, before)

    @app.callback(Output("pareto", "figure"), Output("hypervolume", "figure"), Output("curves", "figure"),
                  Output("inflight", "children"), Output("optuna", "children"),
                  Input("runs", "selected_rows"), Input("metric", "value"), Input("convention", "value"),
                  Input("logx", "value"), Input("signature", "data"), State("runs", "data"), State("view", "data"))
    def views(rows: list[int] | None, metric: str, convention: str, logx: list[str], _: Any,
              data: list[dict] | None, view: dict | None) -> Any:
        return render(chosen_runs(rows, data), metric, convention, logx, view)

    @app.callback(Output("parcoords", "figure"), Input("choices", "open"), Input("runs", "selected_rows"),
                  Input("metric", "value"), Input("convention", "value"), Input("signature", "data"),
                  State("runs", "data"))
    def choices(opened: bool, rows: list[int] | None, metric: str, convention: str, _: Any,
                data: list[dict] | None) -> Any:
        if not opened:
            return dash.no_update
        runs = chosen_runs(rows, data)
        return figures.parallel_choices(runs[0], metric, convention) if runs else figures.empty("choose a run")

    @app.callback(Output("trials", "data"), Output("trials", "page_count"), Input("trials", "page_current"),
                  Input("trials", "page_size"), Input("trials", "sort_by"), Input("trials", "filter_query"),
                  Input("runs", "selected_rows"), Input("signature", "data"), State("runs", "data"))
    def trials(page: int, size: int, sort_by: list[dict], query: str, rows: list[int] | None, _: Any,
               data: list[dict] | None) -> Any:
        return trial_page(chosen_runs(rows, data), page or 0, size or 15, sort_by, query)

    @app.callback(Output("view", "data"), Input("pareto", "relayoutData"), State("view", "data"),
                  State("metric", "value"), State("convention", "value"), State("logx", "value"))
    def zoomed(event: dict | None, view: dict | None, metric: str, convention: str, logx: list[str]) -> Any:
        """Keeps the user's zoom and box or lasso (plotly's uirevision alone loses them when Dash re-sends the
        figure)."""
        key, event = axes_key(metric, convention, logx), event or {}
        view = dict(view) if view and view.get("axes") == key else {"axes": key}
        changed = False
        for axis in ("xaxis", "yaxis"):
            if event.get(f"{axis}.autorange") or event.get("autosize"):
                view[axis], changed = None, True
            elif f"{axis}.range[0]" in event:
                view[axis], changed = [event[f"{axis}.range[0]"], event[f"{axis}.range[1]"]], True
        if "selections" in event:  # drawn, moved, or cleared (a double click)
            view["selections"], changed = event["selections"] or None, True
        return view if changed else dash.no_update  # (a legend click moves nothing)

    @app.callback(Output("chosen", "data"), Input("pareto", "selectedData"), Input("view", "data"))
    def choose(selection: dict | None, view: dict | None) -> Any:
        """The selected candidates: (run, trial, GMACs). A re-sent figure reports no selection; only the user's
        clearing of the box or lasso clears them."""
        if dash.ctx.triggered_id == "view":
            return None if not (view or {}).get("selections") else dash.no_update
        points = (selection or {}).get("points") or []
        if not points:
            return dash.no_update
        seen, chosen = set(), []
        for p in points:
            point = _point({"points": [p]})
            if point is not None and point not in seen:
                seen.add(point)
                chosen.append([point[0], point[1], float(p["x"])])
        return chosen

    @app.callback(Output("details", "children"), Input("pareto", "clickData"), Input("zoom", "value"),
                  Input("url", "search"))
    def clicked(click: dict | None, zoom: float, search: str | None) -> Any:
        # a link can open a candidate: ?run=KEY&trial=ID (trial=best: the run's best feasible candidate)
        point = _point(click) if click else linked(cache, search)
        if point is None:
            return []
        run = cache.get(point[0])
        return details(run, point[1], zoom) if run else message_list([f"run {point[0]} is not under {cache.root}"])

    @app.callback(Output("grid", "children"), Input("chosen", "data"), Input("zoom", "value"))
    def selected(chosen: list | None, zoom: float) -> Any:
        found = [(run, trial, macs) for key, trial, macs in chosen or [] if (run := cache.get(key)) is not None]
        return grid(found, zoom) if found else []

    @app.callback(Output("download", "data"), Input("download-table", "n_clicks"), Input("download-front", "n_clicks"),
                  State("runs", "selected_rows"), State("runs", "data"), State("metric", "value"),
                  State("convention", "value"), prevent_initial_call=True)
    def download(_: int, __: int, rows: list[int] | None, data: list[dict] | None, metric: str, convention: str) -> Any:
        front = dash.ctx.triggered_id == "download-front"
        return {"content": csv_of(chosen_runs(rows, data), front, metric, convention),
                "filename": "front.csv" if front else "trials.csv"}

    return app


def linked(cache: RunsCache, search: str | None) -> tuple[str, str] | None:
    """(run key, trial id) named by a link's query (?run=KEY&trial=ID|best); the run defaults to the newest."""
    from urllib.parse import parse_qs

    query = {k: v[-1] for k, v in parse_qs((search or "").lstrip("?")).items()}
    if "trial" not in query:
        return None
    if any(part in ("", ".", "..") for part in query["trial"].split("/")) or "/" in query["trial"]:
        return None  # a trial id names a folder of the run: nothing else
    runs = cache.runs()
    run = next((r for r in runs if query.get("run") in (r.key, r.label)), None) if "run" in query else newest(runs)
    if run is None:
        return (query.get("run", ""), query["trial"])
    if query["trial"] == "best":
        best = run.best()
        return (run.key, best["trial_id"]) if best else None
    return (run.key, query["trial"])


def newest(runs: list[RunView]) -> RunView | None:
    """The run started last (what a user who just started a search wants to see)."""
    return max(runs, key=lambda r: (r.info.started if r.info else "", r.key), default=None)


def axes_key(metric: str, convention: str, logx: list[str] | None) -> str:
    """A zoom belongs to the axes it was made on: another metric, convention or scale starts unzoomed."""
    return f"{metric}|{convention}|{'log' if 'log' in (logx or []) else 'linear'}"


def _point(click: dict | None) -> tuple[str, str] | None:
    """(run key, trial id) of a clicked candidate; None for the teacher and other marks."""
    points = (click or {}).get("points") or []
    data = points[0].get("customdata") if points else None
    if not data or len(data) < 6:
        return None
    return str(data[5]), str(data[4])
