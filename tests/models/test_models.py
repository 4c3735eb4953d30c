import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from simclr_jax import methods, models
from simclr_jax.models import resnet


def _init(module, shape=(2, 32, 32, 3)):
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _simclr(encoder, **fields):
  return methods.get('simclr')(tiny_config('pretrain', **fields)).make_model(encoder)


def test_full_width_resnet18_encoder_has_11_17m_parameters():
  variables = _init(_simclr(models.make_encoder('resnet18'), projection_dims=(2048, 128)))
  assert _count(variables['params']['encoder']) == 11_168_832
  proj = variables['params']['projector']
  assert [proj[k]['kernel'].shape for k in sorted(proj)] == [(512, 2048), (2048, 128)]
  assert _count(_init(models.make_encoder('resnet10'))['params']) < 0.5 * 11_168_832  # the quick tests' model


@pytest.mark.parametrize('name,features', [('resnet18', 32), ('resnet34', 32), ('resnet50', 128)])
def test_encoders_output_named_float32_features(name, features):
  model = _simclr(models.make_encoder(name, width=0.0625), projection_dims=(16, 8))
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), _init(model), jnp.ones((3, 32, 32, 3)))
  assert out['features'].shape == (3, features) and out['features'].dtype == jnp.float32
  assert out['projection'].shape == (3, 8)


def test_bfloat16_computes_in_bf16_but_keeps_float32_params_stats_and_outputs():
  model = _simclr(models.make_encoder('resnet18', 0.125, 'bfloat16'), projection_dims=(32, 16))
  variables = _init(model)  # shapes and dtypes: nothing here needs values
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  out, updated = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']), variables,
                                jnp.ones((4, 32, 32, 3)))
  assert out['projection'].dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(updated)} == {jnp.dtype('float32')}
  hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, jnp.ones((4, 32, 32, 3))).as_text()
  assert 'bf16' in hlo and hlo.count('convolution(') > 0
  convolutions = [l for l in hlo.splitlines() if 'convolution(' in l]
  assert all('bf16' in l for l in convolutions)  # every convolution computes in bfloat16


def test_width_multiplier_narrows_every_stage():
  narrow = _count(_init(models.make_encoder('resnet18', 0.25))['params'])
  full = _count(_init(models.make_encoder('resnet18', 1.0))['params'])
  assert 0.05 * full < narrow < 0.08 * full  # about width squared


def test_strided_convolutions_pad_one_pixel_on_each_side_as_torchvision_does():
  """A stride-2 3x3 convolution of a 4x4 input, all weights 1: with one pixel of zeros on each side
  (torchvision) the top-left output sums the 2x2 corner; Flax's 'SAME' would pad 0 before and 1
  after and sum a 3x3 block."""
  x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
  conv = resnet.nn.Conv(1, (3, 3), (2, 2), padding=resnet._pad(3), use_bias=False)
  y = conv.apply({'params': {'kernel': jnp.ones((3, 3, 1, 1))}}, x)
  assert y.shape == (1, 2, 2, 1) and float(y[0, 0, 0, 0]) == 0 + 1 + 4 + 5
  assert float(y[0, 1, 1, 0]) == sum(x[0, r, c, 0] for r in (1, 2, 3) for c in (1, 2, 3))
  assert resnet._pad(7) == ((3, 3), (3, 3)) and resnet._pad(1) == ((0, 0), (0, 0))


def test_simclr_v2_head_and_the_first_head_layers_of_a_classifier():
  """SimCLR v2's projector: every Dense without bias, BatchNorm after each (the last one without
  centring), ReLU between; a classifier from head layer 1 holds the first layer, named as in the
  pretraining model."""
  head = models.MLPHead((32, 32, 16), norm=True, last_norm='scale')
  params = _init(head, (2, 64))['params']
  assert sorted(params) == ['dense_0', 'dense_1', 'dense_2', 'norm_0', 'norm_1', 'norm_2']
  assert all('bias' not in params[f'dense_{i}'] for i in range(3))
  assert sorted(params['norm_0']) == ['bias', 'scale'] and sorted(params['norm_2']) == ['scale']
  spec = {'dims': [32, 32, 16], 'norm': True, 'last_norm': 'scale'}
  classifier = models.Classifier(models.make_encoder('resnet10', 0.125), 10, models.head_layers(spec, 1, jnp.float32))
  variables = _init(classifier)
  assert sorted(variables['params']['projector']) == ['dense_0', 'norm_0']
  out = classifier.apply(jax.tree.map(jnp.ones_like, variables), jnp.ones((2, 32, 32, 3)), train=False)
  assert out['features'].shape == (2, 32) and bool(jnp.all(out['features'] >= 0))  # after the ReLU
  pretrain = _simclr(models.make_encoder('resnet10', 0.125), projection_dims=(32, 32, 16), projector_norm=True,
                     finetune_from_head_layer=1)
  assert jax.tree.map(np.shape, _init(pretrain)['params']['projector']['dense_0']) == \
      jax.tree.map(np.shape, variables['params']['projector']['dense_0'])
  # google-research/simclr's LinearLayer draws the v2 head's kernels from N(0, 0.01^2); the
  # write-up's head (v1) keeps the framework default, LeCun normal (std 1/sqrt(fan_in) = 1/sqrt(64)).
  v2 = models.init_variables(pretrain, 0, (32, 32, 3))['params']['projector']
  kernels = np.concatenate([np.ravel(v2[f'dense_{i}']['kernel']) for i in range(3)])
  assert abs(kernels.std() - 0.01) < 0.0005 and abs(kernels.mean()) < 0.0005
  v1 = models.init_variables(_simclr(models.make_encoder('resnet10', 0.125), projection_dims=(32, 16)), 0,
                             (32, 32, 3))['params']['projector']
  assert abs(np.std(v1['dense_0']['kernel']) - 1 / np.sqrt(64)) < 0.01


def test_frozen_classifier_sends_no_gradient_into_the_encoder():
  model = models.Classifier(models.make_encoder('resnet18', 0.125), num_classes=10, frozen_encoder=True)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)

  def loss(params):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                         jnp.ones((4, 32, 32, 3)), train=True, mutable=['batch_stats'])
    return out['logits'].sum()

  grads = jax.jit(jax.grad(loss))(variables['params'])
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads['encoder']))
  assert float(jnp.abs(grads['head']['kernel']).max()) > 0


def test_auto_dtype_is_bfloat16_on_accelerators_and_float32_on_the_cpu():
  assert models.resolve_dtype('auto', 'cpu') == 'float32'
  assert models.resolve_dtype('auto', 'gpu') == 'bfloat16' and models.resolve_dtype('auto', 'tpu') == 'bfloat16'
  assert models.resolve_dtype('float32', 'gpu') == 'float32'
  here = jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16  # CPU, GPU or TPU alike
  assert models.make_encoder('resnet18', 0.125, 'auto').dtype == here


@pytest.mark.parametrize('family', ['resnet', 'vit'])
def test_rematerialised_blocks_keep_the_parameters_outputs_and_gradients(family):
  """config.remat: each residual or transformer block recomputed in the backward pass, under the
  same parameter names and initial values (a checkpoint loads either way), with the same features
  and gradients."""
  make = {'resnet': lambda r: models.ResNet(stage_sizes=(1, 1), width=0.125, remat=r),  # two blocks of each
          'vit': lambda r: models.ViT(dim=24, depth=2, heads=3, patch_size=4, image_size=16, remat=r)}[family]
  plain, remat = make(False), make(True)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 3)), jnp.float32)
  variables = plain.init(jax.random.PRNGKey(0), x, train=False)
  same = remat.init(jax.random.PRNGKey(0), x, train=False)
  assert jax.tree.structure(same) == jax.tree.structure(variables)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(variables)))

  def loss(encoder):
    def fn(params):
      out, _ = encoder.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(out))
    return jax.jit(jax.value_and_grad(fn))

  (v1, g1), (v2, g2) = loss(plain)(variables['params']), loss(remat)(variables['params'])
  assert abs(float(v1) - float(v2)) < 1e-5
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
