"""Global loss and accuracy per accepted round, drawn with plotext."""

from __future__ import annotations

from collections.abc import Sequence

from textual_plotext import PlotextPlot

from console.record.view import RoundRow

Series = tuple[tuple[int, float | None, float | None], ...]


class MetricsChart(PlotextPlot):
    DEFAULT_CSS = """
    MetricsChart { height: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._series: Series | None = None

    def show(self, rounds: Sequence[RoundRow]) -> None:
        series = tuple(
            (r.round, r.loss, r.accuracy)
            for r in rounds
            if r.loss is not None or r.accuracy is not None
        )
        if series == self._series:
            return
        self._series = series
        self.border_title = "global loss / accuracy"
        plt = self.plt
        plt.clear_figure()
        plt.xlabel("round")
        if not series:
            plt.title("no evaluated round yet")
        loss = [(n, v) for n, v, _ in series if v is not None]
        accuracy = [(n, a * 100) for n, _, a in series if a is not None]
        if loss:
            plt.plot(
                [n for n, _ in loss],
                [v for _, v in loss],
                label="loss",
                color="red",
                marker="braille",
            )
        if accuracy:
            plt.plot(
                [n for n, _ in accuracy],
                [a for _, a in accuracy],
                label="acc %",
                color="green",
                marker="braille",
                yside="right",
            )
        if series:
            first, last = series[0][0], series[-1][0]
            step = max(1, (last - first) // 6)
            plt.xticks(list(range(first, last + 1, step)))
        self.refresh()
