"""Experiment configuration."""
from geocnn.config.load import *  # noqa: F401,F403
from geocnn.config.load import DATA_ENV, _format_validation, _is_section, shared_data_default  # noqa: F401
