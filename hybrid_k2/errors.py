"""The one exception type that reaches users as a single line (CLI) or a 4xx JSON error (HTTP)."""


class HybridK2Error(Exception):
    """A problem with what the user gave us (a path, a checkpoint, an option), said in one line."""


class CheckpointError(HybridK2Error):
    """The checkpoint on disk is missing, truncated, or not in the format we read."""


class ConfigError(HybridK2Error):
    """config.json asks for something we do not support, or is malformed."""
