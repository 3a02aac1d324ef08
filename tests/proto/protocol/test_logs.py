"""JSON log lines: the request id, device and trace of the context, overridden by ``extra=``."""

from __future__ import annotations

import json
import logging

from signalhub.protocol.logs import JsonFormatter, device_id_var, request_id_var, trace_var


def line(**extra: object) -> dict[str, object]:
    record = logging.LogRecord("signalhub.test", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    parsed: dict[str, object] = json.loads(JsonFormatter().format(record))
    return parsed


def test_context_fields_appear_only_when_set_and_extra_wins() -> None:
    plain = line()
    assert plain["message"] == "hello there" and not {"request_id", "device_id", "trace"} & set(plain)
    request, device, trace = request_id_var.set("r-1"), device_id_var.set("d-1"), trace_var.set("s-1")
    try:
        assert {k: line()[k] for k in ("request_id", "device_id", "trace")} == {
            "request_id": "r-1",
            "device_id": "d-1",
            "trace": "s-1",
        }
        assert line(trace="s-2", device_id="d-2")["trace"] == "s-2"
    finally:
        request_id_var.reset(request)
        device_id_var.reset(device)
        trace_var.reset(trace)
