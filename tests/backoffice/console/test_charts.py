"""The stage timeline: a bar per stage reached, as long as its latency against the slowest, never
invisible, and named for screen readers."""

from __future__ import annotations

from google.protobuf import duration_pb2

from backoffice.console import charts
from signalhub.v1 import backoffice_pb2 as pb


def latency(stage: int, ms: int) -> pb.StageLatency:
    return pb.StageLatency(stage=stage, latency=duration_pb2.Duration(seconds=ms // 1000, nanos=ms % 1000 * 1_000_000))


def test_bars_are_proportional_to_the_time_from_approval() -> None:
    execution = pb.DeviceExecution(
        latencies=[
            latency(pb.DELIVERY_STATE_SENT, 0),
            latency(pb.DELIVERY_STATE_RECEIVED, 250),
            latency(pb.DELIVERY_STATE_FILLED, 1000),
        ]
    )
    chart = charts.timeline(execution)
    assert chart is not None
    room = charts.WIDTH - charts.LABEL_WIDTH - charts.VALUE_WIDTH
    assert [bar.stage for bar in chart.bars] == ["Sent", "Received", "Filled"]
    assert [bar.width for bar in chart.bars] == [1.0, room / 4, room]  # a 0 ms stage still shows
    assert [bar.value for bar in chart.bars] == ["0 ms", "250 ms", "1000 ms"]
    assert [bar.tone for bar in chart.bars] == ["neutral", "neutral", "good"]
    assert [bar.y for bar in chart.bars] == [0, charts.ROW, 2 * charts.ROW]
    assert chart.height == 3 * charts.ROW
    assert chart.summary == "Sent after 0 ms; Received after 250 ms; Filled after 1000 ms"


def test_a_rejection_is_marked_and_no_stage_is_no_chart() -> None:
    chart = charts.timeline(pb.DeviceExecution(latencies=[latency(pb.DELIVERY_STATE_REJECTED, 12_500)]))
    assert chart is not None and chart.bars[0].tone == "bad" and chart.bars[0].value == "12.5 s"
    assert charts.timeline(pb.DeviceExecution()) is None
