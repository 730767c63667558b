"""Project exceptions: errors a user can cause, printed by the CLI without a traceback."""


class DatascaleError(Exception):
    """An error the user can fix (bad input, bad config, missing file).

    The CLI prints ``error: <message>`` and exits with ``exit_code``.
    """

    exit_code = 1


class ConfigError(DatascaleError):
    """An invalid configuration: unknown key, wrong type, missing or impossible value."""

    exit_code = 2


class DataError(DatascaleError):
    """Input data that cannot be used as given (corrupt, missing, inconsistent)."""


class OutputExistsError(DatascaleError):
    """An output folder already holds results made with a different config."""
