"""JSON logs, one object per line, carrying the request id of the call being served, the device whose
stream it is and the trace of the signal it concerns (the signal's id: one id follows a signal from
SubmitSignal to its fills and closes). Each comes from a context variable, or from ``extra=`` where a
line concerns something else than its context (a batch of many devices' frames, say)."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
device_id_var: ContextVar[str | None] = ContextVar("device_id", default=None)
trace_var: ContextVar[str | None] = ContextVar("trace", default=None)

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in (("request_id", request_id_var), ("device_id", device_id_var), ("trace", trace_var)):
            value = var.get()
            if value:
                entry[name] = value
        # Anything passed with ``extra=`` becomes a field; callers never pass secrets there.
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
