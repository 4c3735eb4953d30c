"""One-line messages for what goes wrong while the command line is parsed and the config file loads.

    flag_error(exception, sys.argv)  # "config file 'x.py' raised RuntimeError: ...: fix get_config() ..."
"""
from __future__ import annotations

import difflib
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
  unknown = unknown_field(config_arg, argv)
  if unknown:
    return unknown
  if isinstance(e, flags.Error):
    return f'{text}; give a value of the type the field has in {config_arg}'
  return f'{type(e).__name__}: {text}'


def unknown_field(config_arg: str | None, argv) -> str:
  """'--config.a.b: there is no such config field (did you mean --config.a.c?)' for the first
  override whose path the config file lacks; '' when every path exists."""
  if not config_arg:
    return ''
  from simclr_jax.config_base import load_config_file
  try:
    config = load_config_file(config_arg)
  except Exception:  # the config file itself fails: the caller's message stands
    return ''
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0].split('.')
    node, done = config, []
    for part in path:
      if not hasattr(node, 'keys') or part not in node:
        siblings = list(node.keys()) if hasattr(node, 'keys') else []
        close = difflib.get_close_matches(part, siblings, n=1)
        where = '.'.join(done + [part])
        hint = f' (did you mean --config.{".".join(done + close)}?)' if close else ''
        return (f'--config.{where}: there is no such config field{hint}; the README lists the fields '
                f'(or print them with --config={config_arg} --helpfull)')
      node, done = node[part], done + [part]
  return ''


def _raised_in_config_file(e: Exception, path: str) -> bool:
  """Whether the exception came from running the config file's own code."""
  import traceback
  target = os.path.abspath(path)
  return any(os.path.abspath(frame.filename) == target for frame in traceback.extract_tb(e.__traceback__))
