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
