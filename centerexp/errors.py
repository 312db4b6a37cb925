"""The one exception type the CLI turns into a clean one-line error."""


class CenterexpError(Exception):
    """A problem the user can fix (bad config, missing file, ...).

    The CLI prints ``error: <message>`` and exits with ``exit_code``; no traceback
    unless ``--debug`` or ``CENTEREXP_DEBUG=1``.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(CenterexpError):
    """Invalid configuration: usage error, exit status 2 like other CLI usage errors."""

    exit_code = 2
