"""The classifier step on 4 simulated CPU devices equals the one-device step on the same global batch
(the pretraining methods: tests/test_methods.py)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, device_env


@pytest.fixture(scope='module')
def four_device_run():
  env = device_env(4)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'parallel_check.py'),
                         os.path.join(ROOT, 'tests'), *STAGES], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


STAGES = ['supervised']  # the pretraining methods: test_methods.py (method_check.py)


@pytest.mark.slow
@pytest.mark.parametrize('stage', STAGES)
def test_four_devices_match_one_device(four_device_run, stage):
  r = four_device_run[stage]
  assert four_device_run['devices'] == 4
  for a, b in zip(r['loss_1'], r['loss_4']):
    assert abs(a - b) < 1e-5 * max(1.0, abs(a)), (r['loss_1'], r['loss_4'])
  assert r['params'] < 1e-5 and r['stats'] < 1e-5 and r['method_state'] < 1e-5
  assert r['moved'] > 1e-4  # the step really changed the parameters
