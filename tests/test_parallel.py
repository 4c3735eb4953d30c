import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from simclr_jax import parallel
from simclr_jax.errors import ConfigError


@pytest.fixture(scope='module')
def four_device_run():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4', 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'parallel_check.py'),
                         os.path.join(ROOT, 'tests')], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('stage', ['pretrain', 'supervised'])
def test_four_devices_match_one_device(four_device_run, stage):
  r = four_device_run[stage]
  assert four_device_run['devices'] == 4
  assert abs(r['loss_1'] - r['loss_4']) < 1e-5 * max(1.0, abs(r['loss_1']))
  assert r['params'] < 1e-5 and r['stats'] < 1e-5
  assert r['moved'] > 1e-4  # the step really changed the parameters


def test_batch_not_divisible_by_device_count_is_refused():
  class FakeMesh:
    class devices:
      size = 4
  with pytest.raises(ConfigError, match='batch_size=66 is not divisible by the 4 devices'):
    parallel.check_batch_size(66, FakeMesh)
