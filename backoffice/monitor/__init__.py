"""The stop-loss / take-profit monitor: hidden levels enforced by the server (see ``monitor``)."""

from backoffice.monitor.monitor import Monitor

__all__ = ["Monitor"]
