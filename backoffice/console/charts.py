"""The stage timeline of one delivery as a small bar chart, drawn by the server as inline SVG (no script):
one row per stage reached, its bar as long as the time from approval to that stage. Rows, not points on
one axis: a paper bridge reaches three stages within milliseconds, which points would pile up."""

from __future__ import annotations

from dataclasses import dataclass

from backoffice.console.formats import label, milliseconds, seconds
from signalhub.v1 import backoffice_pb2 as pb

WIDTH = 600
ROW = 22
LABEL_WIDTH = 110  # the stage names' column
VALUE_WIDTH = 80  # room after the longest bar for its value
BAR_HEIGHT = 12


@dataclass(frozen=True)
class Bar:
    stage: str
    y: int  # the row's top
    width: float  # the bar's length, 1 at least so a 0 ms stage still shows
    value: str  # e.g. "12 ms"
    tone: str  # a CSS class: good, bad or neutral


@dataclass(frozen=True)
class Timeline:
    width: int
    height: int
    label_width: int
    bar_height: int
    bars: tuple[Bar, ...]

    @property
    def summary(self) -> str:
        """The chart in words, for its <title> (what a screen reader says)."""
        return "; ".join(f"{bar.stage} after {bar.value}" for bar in self.bars)


_BAD = {pb.DELIVERY_STATE_REJECTED, pb.DELIVERY_STATE_EXPIRED, pb.DELIVERY_STATE_FAILED}


def timeline(execution: pb.DeviceExecution) -> Timeline | None:
    """The chart of ``execution``'s latencies; None when it reached no stage yet."""
    if not execution.latencies:
        return None
    longest = max(seconds(latency.latency) for latency in execution.latencies) or 1.0
    room = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    bars = []
    for row, latency in enumerate(execution.latencies):
        tone = "bad" if latency.stage in _BAD else "good" if latency.stage == pb.DELIVERY_STATE_FILLED else "neutral"
        bars.append(
            Bar(
                stage=label(latency.stage, pb.DeliveryState),
                y=row * ROW,
                width=max(1.0, round(seconds(latency.latency) / longest * room, 1)),
                value=milliseconds(latency.latency),
                tone=tone,
            )
        )
    return Timeline(WIDTH, len(bars) * ROW, LABEL_WIDTH, BAR_HEIGHT, tuple(bars))
