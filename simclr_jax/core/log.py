"""The run's lines on stdout, from process 0 only, and the words they are made of.

    log('notice: ...')   # one line to stdout, timestamped
    plural(1, 'epoch')   # '1 epoch'
    format_eta(3725)     # '1:02:05'
"""
from __future__ import annotations

import sys
import time

import jax


def log(message: str) -> None:
  """One line to stdout from process 0. Characters the terminal cannot show (a file name that is
  not UTF-8) are escaped, never an error."""
  if jax.process_index() != 0:
    return
  line = f'{time.strftime("%H:%M:%S")} {message}\n'
  stream = sys.stdout
  encoding = getattr(stream, 'encoding', None) or 'utf-8'
  try:
    stream.write(line.encode(encoding, 'backslashreplace').decode(encoding))
    stream.flush()
  except (OSError, ValueError):  # a closed or broken stdout: logs are not worth a crash
    pass


def plural(n: int, word: str, words: str = '') -> str:
  """'1 epoch', '2 epochs' (words: an irregular plural)."""
  return f'{n:,} {word if n == 1 else (words or word + "s")}'


def format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}'
