"""Runs the CLI (python -m simclr_jax.main ARGS...) and kills it with SIGKILL in the middle of the
save of checkpoint KILL_AT_STEP: after Orbax has written the checkpoint's files into its temporary
folder, just before the rename that completes it. Used by test_reliability.py.

    python tests/kill_during_save.py KILL_AT_STEP --config=... --workdir=...
"""
import os
import runpy
import signal
import sys

from orbax.checkpoint._src.path import async_path

step = sys.argv[1]
rename = async_path.rename


async def rename_or_die(src, dst):
  if os.path.basename(str(dst)) == step and 'tmp' in os.path.basename(str(src)):
    os.kill(os.getpid(), signal.SIGKILL)
  return await rename(src, dst)


async_path.rename = rename_or_die
sys.argv = [sys.argv[0]] + sys.argv[2:]
runpy.run_module('simclr_jax.main', run_name='__main__')
