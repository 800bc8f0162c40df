"""One exception family, so the CLI can print a single clear message instead of a traceback."""


class SpiketideError(Exception):
    """Base class: the message says what was wrong and how to fix it."""


class ConfigError(SpiketideError, ValueError):
    """An option or argument is invalid (tau = 0, T < 1, unknown model, ...)."""


class DataError(SpiketideError):
    """A dataset file is missing, corrupt or fails its checksum."""


class CheckpointError(SpiketideError):
    """A checkpoint or run directory cannot be read."""


class ModelOutputError(SpiketideError, ValueError):
    """A model returned something other than logits [T, B, C], or kept state between calls."""


class TrainingDiverged(SpiketideError):
    """The loss became NaN or inf."""


class RunInUse(SpiketideError):
    """Another process holds the run directory's lock."""
