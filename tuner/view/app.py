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

from tuner.view import load

PLOT = {"height": 420, "sizing_mode": "stretch_width"}


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
        self._seen: tuple[int, ...] | None = None
        self._set_options()
        self.redraw()
        for w in (self.cells, self.metric, self.stages, self.yscale):
            w.param.watch(lambda e: self.draw_curves(), "value")
        self.rollout_cell.param.watch(lambda e: self.draw_rollouts(), "value")
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
            ("Rollouts", pn.Column(self.rollout_cell, self.rollout_pane)),
            ("Claims", self.claims),
            ("Compare", pn.Column(pn.Row(self.compare_metric, self.compare_axis),
                                  self.compare_pane, self.compare_table)),
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
        metrics = load.curve_metrics(folder, load.curves(folder))
        if metrics != self.metric.options:
            value = self.metric.value if self.metric.value in metrics else folder.exp.metric
            self.metric.options = metrics
            self.metric.value = value if value in metrics else (metrics[:1] or [None])[0]
        final_metrics = sorted({c for f in self.folders.values() for c in load.finals(f).columns
                                if c.startswith("eval/") and not _is_curve(f, c)})
        if final_metrics != self.compare_metric.options:
            keep = self.compare_metric.value
            self.compare_metric.options = final_metrics
            self.compare_metric.value = keep if keep in final_metrics else (
                folder.exp.metric if folder.exp.metric in final_metrics
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
