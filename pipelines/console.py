"""A quiet console for flows run from the command line: geocnn prints a failing step's error in one line."""

from __future__ import annotations

import logging

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class HideRunErrors(logging.Filter):
    """Drops flow and task runs' ERROR records (exception tracebacks) from the console; they still reach the
    Prefect API (the UI's logs), and `--debug` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith(RUN_LOGGERS))


def hide_run_errors_on_console() -> None:
    """Install the filter on Prefect's console handlers (root logger)."""
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler" and not any(
                isinstance(f, HideRunErrors) for f in handler.filters):
            handler.addFilter(HideRunErrors())
