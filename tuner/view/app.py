"""The viewer's page: one Panel session per browser tab over a list of experiment folders.

Panel (HoloViz) because the page is plain Python on a Bokeh server: widgets call back into
Python, so the tables of :mod:`tuner.view.load` are drawn with no JavaScript of ours and no
second data format; Bokeh's plots give log axes, hover and zoom, and Panel's periodic callback
re-reads the folder so a running experiment shows its new trials. Everything it serves is
bundled with the package (no CDN), so it works on an offline cluster node behind an SSH tunnel.

Each session builds its own :class:`Viewer` (widgets, caches): no module-level state.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool, Span, Whisker
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.transform import dodge

from tuner.service.objective import is_finite
from tuner.view import load

PLOT = {"height": 420, "sizing_mode": "stretch_width"}
MARKERS = {"complete": "circle", "pruned": "square", "diverged": "x", "failed": "triangle",
           "running": "diamond"}  # load.KINDS: how a search trial ended
STATE_COLORS = {"complete": "#2ca02c", "pruned": "#ff7f0e", "diverged": "#d62728",
                "failed": "#9467bd", "running": "#1f77b4", "final": "#000000"}


def _palette(keys: list[str]) -> dict[str, str]:
    return {k: Category10_10[i % 10] for i, k in enumerate(keys)}


class Viewer:
    """The widgets and panes of one session.

    Args:
        folders: The experiment folders to show (:func:`tuner.view.load.find_folders`).
        refresh_s: How often files are re-read (0: never); a plot is redrawn only when a file
            it reads changed, so zoom survives an idle experiment.
    """

    def __init__(self, folders: list[load.Folder], refresh_s: float = 5.0) -> None:
        self.folders = {f.label: f for f in folders}
        first = folders[0]
        cells = list(first.exp.cells())
        self.experiment = pn.widgets.Select(label="experiment", options=list(self.folders))
        self.cells = pn.widgets.MultiSelect(label="cells (learning curves)", options=cells,
                                            value=cells[:1], size=min(10, len(cells)))
        self.metric = pn.widgets.Select(label="metric")
        self.stages = pn.widgets.CheckButtonGroup(label="runs", options=["search", "final"],
                                                  value=["search", "final"])
        self.yscale = pn.widgets.RadioButtonGroup(label="y axis", options=["auto", "linear", "log"],
                                                  value="auto")
        self.rollout_cell = pn.widgets.Select(label="cell (rollouts)", options=cells)
        self.compare_metric = pn.widgets.Select(label="metric (comparison)")
        self.compare_axis = pn.widgets.Select(label="x axis (comparison)")
        self.header = pn.pane.Markdown(renderer="markdown")  # no linkify: "status.json"
        self.grid = pn.pane.DataFrame(index=False, sizing_mode="stretch_width",
                                      float_format="{:.4g}".format)
        self.curve_pane = pn.pane.Bokeh(**PLOT)
        self.rollout_pane = pn.pane.Bokeh(**PLOT)
        self.claims = pn.Column()
        self.compare_table = pn.pane.DataFrame(index=False, sizing_mode="stretch_width",
                                               float_format="{:.4g}".format)
        self.compare_pane = pn.pane.Bokeh(**PLOT)
        self.report = pn.pane.Markdown(sizing_mode="stretch_width")
        self.lr_cells = pn.widgets.MultiSelect(label="cells (learning rates)", options=cells,
                                               value=cells, size=min(6, len(cells)), width=400)
        self.lr_pane = pn.pane.Bokeh(**PLOT)
        self.map_png = pn.pane.PNG(None, width=800)
        self.map_table = pn.pane.DataFrame(index=False, sizing_mode="stretch_width",
                                           float_format="{:.3g}".format)
        self.cost_pane = pn.pane.Bokeh(height=260, sizing_mode="stretch_width")
        self.cost_table = pn.pane.DataFrame(index=False, float_format="{:.1f}".format)
        self.timeline_pane = pn.pane.Bokeh(**PLOT)
        self._seen: tuple[int, ...] | None = None
        self._set_options()
        self.redraw()
        for w in (self.cells, self.metric, self.stages, self.yscale):
            w.param.watch(lambda e: self.draw_curves(), "value")
        self.rollout_cell.param.watch(lambda e: self.draw_rollouts(), "value")
        self.lr_cells.param.watch(lambda e: self.draw_landscape(), "value")
        for w in (self.compare_metric, self.compare_axis):
            w.param.watch(lambda e: self.draw_compare(), "value")
        self.experiment.param.watch(lambda e: (self._set_options(), self.redraw()), "value")
        self.refresh_s = refresh_s

    @property
    def folder(self) -> load.Folder:
        return self.folders[self.experiment.value]

    def layout(self) -> pn.viewable.Viewable:
        """The page; starts the periodic re-read once the page is served."""
        if self.refresh_s > 0:
            pn.state.add_periodic_callback(self.refresh, period=int(self.refresh_s * 1000))
        side = pn.Column(self.experiment, self.cells, self.metric,
                         pn.pane.Markdown("runs (thin: search trials, dashed: pruned; thick: "
                                          "final seeds)", margin=(0, 10)), self.stages,
                         pn.pane.Markdown("y axis (auto: log for a positive metric spanning a "
                                          "decade)", margin=(0, 10)), self.yscale, width=300)
        tabs = pn.Tabs(
            ("Grid and learning curves", pn.Column(self.grid, self.curve_pane,
                                                   sizing_mode="stretch_width")),
            ("Learning rates", pn.Column(
                pn.pane.Markdown("Every search trial at the last rung it reached (● complete, "
                                 "□ pruned, ✕ diverged, ▲ failed, ◆ running; runs that blew "
                                 "up and those with no value sit on the top line), the chosen "
                                 "rate (★), the finals' mean ± sd at it (♦) and the searched "
                                 "range's edges (dotted).", sizing_mode="stretch_width"),
                self.lr_cells, self.lr_pane,
                sizing_mode="stretch_width")),
            ("Rate map", pn.Column(self.map_png, self.map_table, sizing_mode="stretch_width")),
            ("Rollouts", pn.Column(self.rollout_cell, self.rollout_pane)),
            ("Claims", self.claims),
            ("Compare", pn.Column(pn.Row(self.compare_metric, self.compare_axis),
                                  self.compare_pane, self.compare_table)),
            ("Cost", pn.Column(pn.Row(self.cost_pane, self.cost_table,
                                      sizing_mode="stretch_width"),
                               self.timeline_pane, sizing_mode="stretch_width")),
            ("Report", self.report),
            dynamic=False, sizing_mode="stretch_width")
        return pn.Column(self.header, pn.Row(side, tabs, sizing_mode="stretch_width"),
                         sizing_mode="stretch_width")

    # ------------------------------------------------------------------ data
    def _set_options(self) -> None:
        """Widget choices of the selected experiment (cells, metrics); kept where still valid."""
        folder = self.folder
        cells = list(folder.exp.cells())
        if self.cells.options != cells:
            self.cells.options = cells
            self.cells.value = [c for c in self.cells.value if c in cells] or cells[:1]
            self.rollout_cell.options = cells
            self.lr_cells.options = cells
            self.lr_cells.value = [c for c in self.lr_cells.value if c in cells] or cells
        metrics = load.curve_metrics(folder, load.curves(folder))
        if metrics != self.metric.options:
            value = self.metric.value if self.metric.value in metrics else folder.exp.asha.metric
            self.metric.options = metrics
            self.metric.value = value if value in metrics else (metrics[:1] or [None])[0]
        final_metrics = sorted({c for f in self.folders.values() for c in load.finals(f).columns
                                if c.startswith("eval/") and not _is_curve(f, c)})
        if final_metrics != self.compare_metric.options:
            keep = self.compare_metric.value
            self.compare_metric.options = final_metrics
            self.compare_metric.value = keep if keep in final_metrics else (
                folder.exp.asha.metric if folder.exp.asha.metric in final_metrics
                else (final_metrics[:1] or [None])[0])
        axes = list(dict.fromkeys(a for f in self.folders.values() for a in f.exp.grid))
        if axes != self.compare_axis.options:
            self.compare_axis.options = axes
            self.compare_axis.value = self.compare_axis.value if self.compare_axis.value in axes \
                else axes[0]

    def refresh(self) -> None:
        """Periodic: re-read the folders; redraw only if a file changed."""
        seen = tuple(f.cache.version for f in self.folders.values())
        self._set_options()
        self.draw_grid()  # reads status.json etc. (cheap: cached parse)
        now = tuple(f.cache.version for f in self.folders.values())
        if now != seen:
            self.redraw()

    def redraw(self) -> None:
        self.draw_grid()
        self.draw_curves()
        self.draw_rollouts()
        self.draw_landscape()
        self.draw_rate_map()
        self.draw_cost()
        self.draw_claims()
        self.draw_compare()

    # ------------------------------------------------------------------ panes
    def draw_grid(self) -> None:
        folder = self.folder
        st = load.status(folder) or {}
        live = (f"; live status ({st.get('stage')}, {st.get('updated')}): "
                f"{st.get('cells_done')}/{st.get('cells_total')} cells done, "
                f"{st.get('trials_running')} trials running" if st else "")
        self.header.object = (f"## {folder.label}\n\n{folder.root}: stage "
                              f"**{load.stage(folder)}**{live}. {folder.exp.hypothesis}")
        self.grid.object = load.cells(folder)

    def draw_curves(self) -> None:
        folder, metric = self.folder, self.metric.value
        table = load.curves(folder)
        fig = None
        if metric and metric in table:
            rows = table[table.cell.isin(self.cells.value) & table.stage.isin(self.stages.value)
                         & table[metric].notna()]
            log = (self.yscale.value == "log" or
                   (self.yscale.value == "auto" and load.log_scale_fits(rows[metric])))
            if log:
                rows = rows[rows[metric] > 0]
            fig = figure(title=f"{metric}: {folder.label}", x_axis_label="step",
                         y_axis_label=metric, y_axis_type="log" if log else "linear",
                         name="curves", **PLOT)
            colors = _palette(list(folder.exp.cells()))
            for (stage, cell, trial), run in rows.groupby(["stage", "cell", "trial"], sort=False):
                run = run.sort_values("step")
                src = ColumnDataSource({"x": run.step, "y": run[metric].astype(float),
                                        "trial": [trial] * len(run), "cell": [cell] * len(run),
                                        "state": run.state.astype(str), "lr": run.lr})
                final = stage == "final"
                fig.line("x", "y", source=src, color=colors.get(cell, "gray"),
                         line_width=2.5 if final else 1.2, alpha=1.0 if final else 0.6,
                         line_dash="solid" if final or run.state.iloc[0] != "PRUNED" else "dashed",
                         legend_label=f"{cell} {'finals' if final else 'search'}",
                         name=f"curve {stage} {cell} {trial}")
            fig.add_tools(HoverTool(tooltips=[("cell", "@cell"), ("trial", "@trial"),
                                              ("lr", "@lr{0.000e}"), ("state", "@state"),
                                              ("step", "@x"), (metric, "@y")]))
            fig.legend.click_policy = "hide"
            fig.legend.label_text_font_size = "8pt"
        self.curve_pane.object = fig if fig is not None and fig.renderers else _empty(
            "no evaluations yet for these cells")

    def draw_rollouts(self) -> None:
        """One cell at a time: each seed's curve and their mean ± standard error."""
        folder, cell = self.folder, self.rollout_cell.value
        curve = folder.curve
        rows = load.rollouts(folder, cell) if cell else pd.DataFrame()
        if curve is None or not len(rows):
            self.rollout_pane.object = _empty(
                "this task draws no curve after training" if curve is None
                else f"{cell}: no finished final seeds yet")
            return
        fig = figure(title=f"{curve['title']}: {cell} ({folder.label})", x_axis_label=curve["x"],
                     y_axis_label=curve["y"], x_axis_type="log", name="rollouts", **PLOT)
        fig.xaxis.ticker = sorted(rows.x.unique())
        for seed, run in rows.groupby("seed"):
            fig.line(run.x, run.value, color="#aaaaaa", line_width=1,
                     legend_label="each seed", name=f"rollout seed {seed}")
            fig.scatter(run.x, run.value, color="#aaaaaa", size=4)
        stats = rows.groupby("x").value.agg(["mean", "std", "count"]).reset_index()
        stats["se"] = stats["std"] / stats["count"].map(math.sqrt)
        stats["lower"], stats["upper"] = stats["mean"] - stats.se, stats["mean"] + stats.se
        src = ColumnDataSource(stats.fillna(0.0))
        fig.line("x", "mean", source=src, color="#1f77b4", line_width=3,
                 legend_label="mean ± se over seeds", name="rollout_mean")
        fig.scatter("x", "mean", source=src, color="#1f77b4", size=7)
        fig.add_layout(Whisker(source=src, base="x", lower="lower", upper="upper",
                               line_color="#1f77b4"))
        if curve.get("reference") is not None:  # in view: an invisible point on it
            fig.scatter([rows.x.min()], [curve["reference"]], alpha=0)
            fig.add_layout(Span(location=curve["reference"], dimension="width",
                                line_dash="dashed", line_color="black"))
        fig.add_tools(HoverTool(tooltips=[("h", "@x"), ("mean", "@mean"), ("se", "@se")],
                                renderers=[fig.select_one({"name": "rollout_mean"})]))
        self.rollout_pane.object = fig

    def draw_landscape(self) -> None:
        """The searched metric against the rate, every search trial at the last rung it
        reached (marker: how it ended), the chosen rate (star), the finals' mean ± sd at it and
        the searched range's edges; the picked cells overlaid, one colour each."""
        folder, metric = self.folder, self.folder.exp.asha.metric
        table = load.landscape(folder)
        table = table[table.cell.isin(self.lr_cells.value)]
        picks = load.chosen(folder).set_index("cell")
        if not len(table):
            self.lr_pane.object = _empty("no search trials yet for these cells")
            return
        finite = table.value[table.value.map(math.isfinite)]
        log = load.log_scale_fits(finite)
        top = _top(finite, table.value[table.kind == "complete"], log)
        fig = figure(title=f"{metric} at the last rung each trial reached ({folder.label})",
                     x_axis_label="learning rate", y_axis_label=metric, x_axis_type="log",
                     y_axis_type="log" if log else "linear", name="landscape", **PLOT)
        colors = _palette(list(folder.exp.cells()))
        for (cell, kind), group in table.groupby(["cell", "kind"], sort=False):
            # off the scale (a run blown up) or no value (diverged, failed): on the top line
            y = group.value.where(group.value.map(math.isfinite) & (group.value <= top), top)
            src = ColumnDataSource({"x": group.lr.astype(float), "y": y.astype(float),
                                    "value": group.value.astype(float),
                                    "number": group.number, "step": group.step,
                                    "round": group["round"], "cell": [cell] * len(group),
                                    "kind": [kind] * len(group)})
            fig.scatter("x", "y", source=src, marker=MARKERS[kind], size=9 if kind != "diverged"
                        else 11, color=colors.get(cell, "gray"),
                        fill_alpha=0.0 if kind == "pruned" else 0.8, line_width=1.5,
                        legend_label=f"{cell} {kind}", name=f"landscape {cell} {kind}")
        for cell in self.lr_cells.value:
            if cell not in picks.index:
                continue
            p = picks.loc[cell]
            for low, high in p.ranges:
                for edge in (low, high):
                    fig.add_layout(Span(location=edge, dimension="height", line_dash="dotted",
                                        line_color="gray"))
            if p.lr is None or not is_finite(p.lr):
                continue
            what = "chosen" if p.final else "best so far"
            fig.scatter([float(p.lr)], [float(p.value)], marker="star", size=20,
                        color=colors.get(cell, "gray"), line_color="black",
                        legend_label=f"{cell} {what}", name=f"chosen {cell}")
            if p.finals_n:
                sd = 0.0 if not math.isfinite(p.finals_sd) else float(p.finals_sd)
                src = ColumnDataSource({"x": [float(p.lr)], "y": [float(p.finals_mean)],
                                        "lower": [float(p.finals_mean) - sd],
                                        "upper": [float(p.finals_mean) + sd]})
                fig.scatter("x", "y", source=src, marker="diamond", size=14,
                            color=colors.get(cell, "gray"), line_color="black",
                            legend_label=f"{cell} finals mean ± sd (n={p.finals_n})",
                            name=f"finals {cell}")
                fig.add_layout(Whisker(source=src, base="x", lower="lower", upper="upper",
                                       line_color=colors.get(cell, "gray")))
        fig.add_tools(HoverTool(tooltips=[("cell", "@cell"), ("trial", "#@number (@round)"),
                                          ("lr", "@x{0.000e}"), ("how", "@kind"),
                                          ("step", "@step"), (metric, "@value")]))
        fig.legend.click_policy = "hide"
        fig.legend.label_text_font_size = "8pt"
        fig.add_layout(fig.legend[0], "right")
        self.lr_pane.object = fig

    def draw_rate_map(self) -> None:
        """The report's rate map (same figure) over the choices so far, with its table."""
        import io

        import matplotlib.pyplot as plt

        from tuner.service.report import lr_map

        folder = self.folder
        rows = load.rate_map(folder)
        final = folder.dirs.best.exists()
        fig = lr_map.figure(folder.exp.grid, rows, f"{folder.label}: "
                            + ("chosen learning rate per cell" if final
                               else "best learning rate so far per cell (search running)"))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
        plt.close(fig)
        self.map_png.object = buf.getvalue()
        self.map_table.object = rows

    def draw_cost(self) -> None:
        """The pilot's projection against the stage times, and every trial's span in time."""
        folder = self.folder
        cost = load.cost(folder)
        self.cost_table.object = cost
        stages = list(cost.stage)
        fig = figure(title="wall time per stage: the pilot's projection against this run",
                     x_range=stages, y_axis_label="seconds", name="cost", height=260,
                     sizing_mode="stretch_width", toolbar_location=None)
        for column, offset, color in (("projected_s", -0.17, "#aaaaaa"),
                                      ("actual_s", 0.17, "#1f77b4")):
            src = ColumnDataSource({"stage": stages, "s": cost[column].fillna(0.0)})
            fig.vbar(x=dodge("stage", offset, range=fig.x_range), top="s", source=src,
                     width=0.3, color=color, legend_label=column[:-2], name=f"cost {column}")
        fig.legend.location = "top_left"
        self.cost_pane.object = fig
        spans = load.timeline(folder)
        if not len(spans):
            self.timeline_pane.object = _empty("no trial has reported yet")
            return
        spans = spans.assign(row=range(len(spans)))
        tl = figure(title=f"members over time ({folder.label}): one bar per searched rate or "
                          "final seed, from its trial's start to its own last report",
                    x_axis_label="seconds since the first trial started",
                    y_axis_label="member (in order of its trial's start)",
                    name="timeline", **PLOT)
        for state, group in spans.groupby("state", sort=False):
            src = ColumnDataSource(group[["row", "start", "end", "cell", "lr", "round", "trial",
                                          "member"]])
            tl.hbar(y="row", left="start", right="end", height=0.7, source=src,
                    color=STATE_COLORS.get(state, "gray"), legend_label=state,
                    name=f"timeline {state}")
        tl.add_tools(HoverTool(tooltips=[("member", "@member"), ("lr", "@lr{0.000e}"),
                                         ("round", "@round"), ("Tune trial", "@trial"),
                                         ("from", "@start{0} s"), ("to", "@end{0} s")]))
        tl.legend.click_policy = "hide"
        tl.add_layout(tl.legend[0], "right")
        self.timeline_pane.object = tl

    def draw_claims(self) -> None:
        items = []
        for i, c in enumerate(load.claims(self.folder), start=1):
            verdict = c["verdict"] or "_verdict and plot: written with the report, once the " \
                                      "experiment has finished_"
            items.append(pn.pane.Markdown(
                f"### Claim {i}: {c['text']}\n\n{c['kind']} on "
                f"{', '.join(f'`{m}`' for m in c['metrics'])}\n\n{verdict}",
                sizing_mode="stretch_width"))
            if c["plot"] is not None:
                items.append(pn.pane.PNG(str(c["plot"]), width=900))
        lr_png = self.folder.dirs.lr_map
        if lr_png.exists():  # the report's rate map, beside the claims' plots
            items.append(pn.pane.Markdown("### Chosen learning rates over the grid"))
            items.append(pn.pane.PNG(str(lr_png), width=900))
        self.claims.objects = items or [pn.pane.Markdown("The experiment states no claims.")]
        self.report.object = load.summary(self.folder) or "_`report/summary.md` is written " \
                                                            "once the experiment has finished._"

    def draw_compare(self) -> None:
        """Every experiment's finals of one metric along one grid axis, with the table."""
        metric, axis = self.compare_metric.value, self.compare_axis.value
        if not metric or not axis:
            self.compare_pane.object = _empty("no finished finals yet")
            self.compare_table.object = None
            return
        table = load.compare(list(self.folders.values()), metric)
        self.compare_table.object = table
        rows = table[table["mean"].notna() & table.get(axis, pd.Series(dtype=float)).notna()] \
            if axis in table else table.iloc[:0]
        if not len(rows):
            self.compare_pane.object = _empty(f"no finals of {metric} along {axis} yet")
            return
        numeric = pd.api.types.is_numeric_dtype(rows[axis])
        x = rows[axis] if numeric else rows[axis].astype(str)
        rows = rows.assign(x=x, lower=rows["mean"] - rows.sd.fillna(0),
                           upper=rows["mean"] + rows.sd.fillna(0))
        kw = {} if numeric else {"x_range": sorted(rows.x.unique())}
        fig = figure(title=f"{metric} (finals, mean ± sd over seeds) along {axis}",
                     x_axis_label=axis, y_axis_label=metric, name="compare", **kw, **PLOT)
        colors = _palette(list(self.folders))
        for exp_name, group in rows.groupby("experiment", sort=False):
            src = ColumnDataSource(group[["x", "mean", "lower", "upper", "cell"]])
            fig.scatter("x", "mean", source=src, color=colors[exp_name], size=8,
                        legend_label=exp_name)
            fig.add_layout(Whisker(source=src, base="x", lower="lower", upper="upper",
                                   line_color=colors[exp_name]))
        fig.add_tools(HoverTool(tooltips=[("cell", "@cell"), (metric, "@mean")]))
        self.compare_pane.object = fig


def _top(finite: pd.Series, complete: pd.Series, log: bool) -> float:
    """The landscape's top line: a little above the worst full-budget value (at most ten times
    it on a log axis), so runs that blew up do not squash the range that matters; points above
    it, and trials with no value, are drawn on it."""
    ref = complete[complete.map(math.isfinite)]
    ref = ref if len(ref) else finite
    if not len(ref):
        return 1.0
    high, low = float(ref.max()), float(finite.min())
    if log:
        return min(float(finite.max()), high * 10) * 1.5 if high > 0 else 1.0
    return min(float(finite.max()), high + (high - low)) + 0.05 * (high - low) + 1e-12


def _is_curve(folder: load.Folder, column: str) -> bool:
    c = folder.curve
    return c is not None and column.startswith((c["prefix"], c["se_prefix"]))


def _empty(text: str):
    fig = figure(title=text, name="empty", height=200, sizing_mode="stretch_width",
                 toolbar_location=None)
    fig.scatter([], [])
    return fig


def page(paths: list[str | Path], refresh_s: float = 5.0) -> pn.viewable.Viewable:
    """A new session's page (``pn.serve`` calls this once per browser tab)."""
    return Viewer(load.find_folders(paths), refresh_s).layout()
