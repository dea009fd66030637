"""Comparison charts name runs by adapter, keep the legend off the bars and show the whole title."""

from strop.scenarios import report
from strop.scenarios.runs import EvalOptions, RunStore


def run_with(store, adapter, passed):
    run = store.create(EvalOptions(adapter=adapter), "model", {"notes": {"path": "notes.yaml", "threshold": 0.0,
                                                                         "cases": 2, "problems": []}})
    for case, ok in zip(("a", "b"), passed, strict=True):
        run.append({"suite": "notes", "case": case, "repeat": 0, "split": "gate", "tags": [], "passed": ok,
                    "status": "passed" if ok else "failed", "grades": [], "tokens": 1, "latency_s": 1.0,
                    "error": None})
    return run


def test_runs_are_named_by_adapter_and_by_id_only_when_the_adapters_are_the_same(tmp_path):
    store = RunStore(tmp_path)
    base, tuned, again = run_with(store, None, [False, True]), run_with(store, "v1", [True, True]), \
        run_with(store, None, [True, True])
    assert report.run_labels(base, tuned) == ("base", "v1")
    assert report.run_labels(base, again) == (f"base ({base.id})", f"base ({again.id})")


def test_the_legend_is_beside_the_bars_and_the_title_names_both_adapters(tmp_path):
    store = RunStore(tmp_path)
    base, tuned = run_with(store, None, [False, True]), run_with(store, "v1", [True, True])
    comparisons, _ = report.compare(base, tuned)
    fig = report.chart_figure(base, tuned, comparisons)
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend, plot = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= plot.x1  # right of the plot: no bar is hidden under it
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["base", "v1"]
    assert "base vs v1" in ax.get_title()
    chart = report.comparison_chart(base, tuned, comparisons, tmp_path / "chart.png")
    from PIL import Image

    width, _ = Image.open(chart).size
    title = ax.title.get_window_extent(renderer)
    assert width >= (title.x1 - title.x0) * 120 / fig.dpi  # the saved image is at least as wide as the title
