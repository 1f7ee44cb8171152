"""User-facing error type: a message that names the file, row, column or key at fault and the fix."""


class GeocnnError(Exception):
    """An error caused by user input (data, config, command line), shown without a traceback."""
