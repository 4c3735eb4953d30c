"""Decoded splits cached as uint8 arrays in the user cache, checked against their source on every
read and rebuilt (with a notice) when they do not match.

    out = cached(path, fingerprint, 'cifar10/train', build, expected=50000, size=32, num_classes=10)
    out['images'], out['labels'], out['report']

A cache file is written to a temporary file in its folder and renamed when complete; a failed
write (a full disk, no permission) or a signal leaves no temporary file behind, and a notice says
that the next run decodes again.
"""
from __future__ import annotations

import json
import os

import numpy as np

from simclr_jax.core import interrupts
from simclr_jax.core.log import log


def cache_root(environ=os.environ) -> str:
  """$SIMCLR_JAX_CACHE, else $XDG_CACHE_HOME/simclr_jax, else ~/.cache/simclr_jax."""
  if environ.get('SIMCLR_JAX_CACHE'):
    return environ['SIMCLR_JAX_CACHE']
  base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'simclr_jax')


def cache_file(*parts: str) -> str:
  return os.path.join(cache_root(), *parts)


def _problem(f, fingerprint: str, expected: int | None, size: int | None, num_classes: int) -> str:
  """Why a cache file cannot stand for the split ('' when it can)."""
  if 'fingerprint' not in f or str(f['fingerprint']) != fingerprint:
    return 'made from other source files'
  images, labels = f['images'], f['labels']
  n = len(images) if expected is None else expected
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != n or images.shape[-1] != 3 or (
      size and images.shape[1:3] != (size, size)):
    return f'images {images.shape} {images.dtype}, expected {n} uint8 images of {size or "any"} px'
  if labels.shape != (n,) or labels.dtype != np.int32:
    return f'labels {labels.shape} {labels.dtype}, expected ({n},) int32'
  if n and (labels.min() < -1 or labels.max() >= max(num_classes, 0)):
    return f'labels outside [-1, {num_classes})'
  return ''


def cached(path: str, fingerprint: str, describe: str, build, expected=None, size=None,
           num_classes: int = 0) -> dict:
  """{'images', 'labels', 'report'} from the cache file when it is valid for the source
  (fingerprint, shapes, dtype, label range); otherwise from build() and cached again."""
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        problem = _problem(f, fingerprint, expected, size, num_classes)
        if not problem:
          return {'images': f['images'], 'labels': f['labels'],
                  'report': json.loads(str(f['report'])) if 'report' in f else {}}
    except Exception as e:  # a damaged cache file is simply rebuilt
      problem = f'unreadable ({type(e).__name__})'
    log(f'notice: cache {path} does not match {describe} ({problem}): rebuilding it')
  out = build()
  write(path, fingerprint=np.asarray(fingerprint), report=np.asarray(json.dumps(out.get('report', {}))),
        images=out['images'], labels=out['labels'])
  return out


def write(path: str, **arrays) -> bool:
  """np.savez to path through a temporary file in its folder; False (with a notice) when it
  cannot be written: an unwritable cache costs only speed."""
  tmp = f'{path}.tmp{os.getpid()}.npz'
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with interrupts.temporary(tmp):
      np.savez(tmp, **arrays)
      os.replace(tmp, path)
    return True
  except OSError as e:
    log(f'notice: cannot write the decode cache {path} ({e.strerror or e}): the data is decoded again '
        'on the next run; free space there or set $SIMCLR_JAX_CACHE to another folder')
    return False
