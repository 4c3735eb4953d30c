"""A config file whose get_config() raises (tests/test_cli_errors.py)."""


def get_config():
  raise RuntimeError('forgot to set the dataset')
