"""One-line messages for what goes wrong while the command line is parsed and the config file loads.

    flag_error(exception, sys.argv)  # "config file 'x.py' raised RuntimeError: ...: fix get_config() ..."
"""
from __future__ import annotations

import os

from absl import flags


def flag_error(e: Exception, argv) -> str:
  """The one-line message for an exception raised while absl parses argv and loads the config."""
  text = ' '.join(str(e).split())
  config_arg = next((a.split('=', 1)[1] for a in reversed(argv) if a.startswith('--config=')), None)
  if config_arg and isinstance(e, Exception) and _raised_in_config_file(e, config_arg):
    return (f'config file {config_arg!r} raised {type(e).__name__}: {text}: fix get_config() in '
            'that file')
  if 'No such file' in text or 'Unable to load' in text or 'does not exist' in text:
    return (f'config file {config_arg!r} cannot be loaded: pass --config=configs/pretrain.py '
            'or another file of configs/ that defines get_config()')
  if 'must have a value other than None' in text:
    name = text.split('Flag --')[-1].split()[0]
    return f'--{name} is required: pass for example --{name}=runs/pretrain'
  if isinstance(e, (AttributeError, KeyError)):
    leaf = text.strip('"\' ')
    field = next((a[len('--config.'):].split('=')[0] for a in argv
                  if a.startswith('--config.') and a.split('=')[0].endswith(leaf)), leaf)
    return (f'--config.{field}: there is no such config field; the README lists the fields '
            f'(or print them with --config={config_arg or "configs/pretrain.py"} --helpfull)')
  if isinstance(e, flags.Error):
    return f'{text}; give a value of the type the field has in {config_arg}'
  return f'{type(e).__name__}: {text}'


def _raised_in_config_file(e: Exception, path: str) -> bool:
  """Whether the exception came from running the config file's own code."""
  import traceback
  target = os.path.abspath(path)
  return any(os.path.abspath(frame.filename) == target for frame in traceback.extract_tb(e.__traceback__))
