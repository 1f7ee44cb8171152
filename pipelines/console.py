"""A quiet console for flows run from the command line: geocnn prints a failing step's error in one line."""

from __future__ import annotations

import logging

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class HideRunErrors(logging.Filter):
    """Drops flow and task runs' ERROR records (exception tracebacks) and their "Finished in state Failed(<the
    error>)" lines from the console; they still reach the Prefect API (the UI's logs), and `--debug` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(RUN_LOGGERS):
            return True
        failed_state = "Finished in state Failed" in str(record.msg) or "Finished in state Crashed" in str(record.msg)
        return record.levelno < logging.ERROR and not failed_state  # the same error, told once by geocnn


def hide_run_errors_on_console() -> None:
    """Install the filter on Prefect's console handlers (root logger)."""
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler" and not any(
                isinstance(f, HideRunErrors) for f in handler.filters):
            handler.addFilter(HideRunErrors())


def quiet_runner() -> None:
    """`geocnn serve`: the runner's notes on runs it leaves for later (INFO, every poll) stay out of the console."""
    logging.getLogger("prefect.runner.state_proposer").setLevel(logging.WARNING)
