"""User-facing error type: a message that names the file, row, column or key at fault and the fix."""


class GeocnnError(Exception):
    """An error caused by user input (data, config, command line), shown without a traceback."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (SIGINT): the run is resumable from its last checkpoint."""

    def __init__(self, epoch: int | None = None) -> None:
        super().__init__(epoch)
        self.epoch = epoch

    def __str__(self) -> str:
        where = f" at epoch {self.epoch}" if self.epoch is not None else ""
        return f"interrupted{where}; rerun the same command to resume"
