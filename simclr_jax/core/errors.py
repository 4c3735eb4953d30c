"""Errors that the CLI reports as one line (no traceback) with a distinct exit status."""


class UserError(Exception):
  """Bad input: a config value, a path, a dataset or a checkpoint. Exit status 2."""
  exit_code = 2


class ConfigError(UserError):
  """A config field has a wrong value or does not match the run in the workdir."""


class DataError(UserError):
  """The dataset cannot be found, prepared or read."""


class CheckpointError(UserError):
  """A checkpoint is missing, corrupt or from an incompatible run."""


class NonFiniteError(Exception):
  """The loss or the gradients became NaN or infinite. Exit status 3."""
  exit_code = 3


class Preempted(Exception):
  """SIGTERM or SIGINT arrived; a checkpoint was written. Exit status 75 (rerun to resume)."""
  exit_code = 75


def first_line(e: BaseException, limit: int = 200, last: bool = False) -> str:
  """The first (or last) non-empty line of an exception's message, cut to `limit` characters."""
  lines = [line for line in str(e).strip().splitlines() if line.strip()]
  return (lines[-1] if last else lines[0])[:limit] if lines else ''


def summary(e: BaseException, limit: int = 200, last: bool = False) -> str:
  """'TypeName: first line' of an exception, for the cause in a one-line error."""
  line = first_line(e, limit, last)
  return f'{type(e).__name__}: {line}' if line else type(e).__name__
