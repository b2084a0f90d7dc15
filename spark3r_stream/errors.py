"""The project's exceptions: every user-facing failure is a Spark3RError subclass that names its input."""


class Spark3RError(Exception):
    """Base of all user-facing errors; the CLI prints its message as one line and exits 2."""


class ConfigError(Spark3RError):
    """A config file, launch file or `--set` override is invalid."""


class CheckpointError(Spark3RError):
    """A weights file does not exist, is not a checkpoint, or does not fit the model."""


class SourceError(Spark3RError):
    """A frame source cannot be opened or read (missing file, camera that does not open, unknown format)."""


class InputError(Spark3RError):
    """Images or other inputs given to a command are unusable (empty folder, unreadable or mixed-size images).

    `reason`, when given, tags the drop counter of a node that rejects a message with it (`dropped.<reason>`)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


class DecodeError(Spark3RError):
    """A received message is malformed; `reason` is a short machine-readable tag used for drop counters."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
