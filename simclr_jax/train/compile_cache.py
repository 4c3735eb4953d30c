"""JAX's persistent compilation cache for the command line: a resume, or a rerun with the same
shapes, loads its compiled programs instead of compiling them again.

    compile_cache.enable()             # before anything compiles; returns the folder, or None
    before = compile_cache.hits()
    compiled = jax.jit(f).lower(x).compile()
    cached = compile_cache.hits() > before   # this program came from the cache

The folder is JAX's own setting, $JAX_COMPILATION_CACHE_DIR, else the user cache's xla/
(simclr_jax.data.decode_cache.cache_root: $SIMCLR_JAX_CACHE, $XDG_CACHE_HOME/simclr_jax or
~/.cache/simclr_jax); JAX_ENABLE_COMPILATION_CACHE=false turns it off. JAX writes an entry from
process 0 only, under a name of its own (a hash of the program and the compile options), once; a
process that finds an entry it cannot read compiles the program itself. The folder keeps every
program (JAX's default; JAX_COMPILATION_CACHE_MAX_SIZE bounds it, for processes that all set it:
JAX's eviction expects the access-time files only its bounded mode writes).
"""
from __future__ import annotations

import os

_hits = [0]
_listening = []


def cache_dir(environ=os.environ) -> str | None:
  """The folder the cache uses for an environment, or None when it is turned off."""
  if environ.get('JAX_ENABLE_COMPILATION_CACHE', '').lower() in ('0', 'false', 'no', 'off'):
    return None
  if environ.get('JAX_COMPILATION_CACHE_DIR'):
    return environ['JAX_COMPILATION_CACHE_DIR']
  from simclr_jax.data.decode_cache import cache_root
  return os.path.join(cache_root(environ), 'xla')


def enable() -> str | None:
  """Points JAX's persistent compilation cache at cache_dir() and counts its hits; the folder,
  or None when the cache is off."""
  import jax
  from jax import monitoring
  if not _listening:
    _listening.append(True)
    monitoring.register_event_listener(_count)
  path = cache_dir()
  if path is None:
    return None
  jax.config.update('jax_compilation_cache_dir', path)
  return path


def _count(event: str, **_) -> None:
  if event == '/jax/compilation_cache/cache_hits':
    _hits[0] += 1


def hits() -> int:
  """How many programs this process has loaded from the cache so far."""
  return _hits[0]
