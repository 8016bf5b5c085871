"""Researcher-experience features of the engine (issue 12).

Schedules and Adam flags, window-mean train lines with ``time``, the
progress bar, EMA in the train step, keep-best + early stopping across a
resume, honest eval splits, pictures, the model summary, the profiler and
``python -m dlresearch.export`` on a trained run.
"""

import io
import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from dlresearch import config as config_lib, ema, optim, train
from dlresearch import logging as log_lib, plot, state as state_lib
from dlresearch.config import Config, ConfigError
from dlresearch import problems
from dlresearch.problems import splits
from dlresearch.tools import inference
from experiments.cnn_imagenet import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def tiny(data_dir, **overrides):
  preset = PRESETS['quickstart']
  return config_lib.override(preset.config, {
      **preset.tiny, 'data_dir': data_dir, 'progress': 'none', **overrides})


# --- optimiser flags ---------------------------------------------------------


def test_warmup_first_step_moves_and_schedules_end_where_asked():
  cfg = Config(learning_rate=1.0, warmup_steps=4, schedule='cosine',
               min_lr_ratio=0.1)
  lr = optim.schedule(cfg, 20)
  assert float(lr(0)) == pytest.approx(0.25)  # the first update moves
  assert [float(lr(s)) for s in (1, 2, 3)] == pytest.approx([0.5, 0.75, 1.0])
  assert float(lr(4)) == pytest.approx(1.0)
  assert float(lr(20)) == pytest.approx(0.1)  # cosine ends at min_lr_ratio
  inv = optim.schedule(cfg.replace(schedule='inverse_sqrt'), 20)
  # min((t)/w, sqrt(w/t)) with t = count + 1, w = 4
  for count in (0, 3, 15, 99):
    t = count + 1
    assert float(inv(count)) == pytest.approx(min(t / 4, (4 / t) ** 0.5))


def test_adam_flags_reach_optax_and_momentum_stays_with_sgd():
  params = {'w': jnp.array([1.0, -2.0])}
  grads = {'w': jnp.array([0.3, 0.1])}
  cfg = Config(optimizer='adam', learning_rate=0.1, adam_b1=0.5,
               adam_b2=0.9, adam_eps=1e-3, momentum=0.0)
  tx, _ = optim.make(cfg, 10)
  ref = optax.adam(0.1, b1=0.5, b2=0.9, eps=1e-3)
  s, r = tx.init(params), ref.init(params)
  for _ in range(3):
    u, s = tx.update(grads, s, params)
    v, r = ref.update(grads, r, params)
    np.testing.assert_allclose(u['w'], v['w'], rtol=1e-6)
  with pytest.raises(ConfigError, match='--adam_b2'):
    config_lib.validate(cfg.replace(adam_b2=1.0))


def test_wmt_preset_is_the_published_recipe():
  from experiments.transformer_translate import PRESETS as MT
  cfg = MT['wmt14_base'].config
  assert (cfg.optimizer, cfg.adam_b1, cfg.adam_b2, cfg.adam_eps) == (
      'adam', 0.9, 0.98, 1e-9)
  assert (cfg.schedule, cfg.warmup_steps, cfg.label_smoothing) == (
      'inverse_sqrt', 4000, 0.1)
  lr = optim.schedule(cfg, cfg.num_steps)
  for step in (1, 4000, 10_000):  # the paper's lrate at 1-based ``step``
    paper = 512 ** -0.5 * min(step ** -0.5, step * 4000 ** -1.5)
    assert float(lr(step - 1)) == pytest.approx(paper, rel=1e-5)


# --- logging -----------------------------------------------------------------


def test_window_mean_and_time_continuing_across_restarts(tmp_path):
  window = train.WindowMean()
  for v in (1.0, 2.0, 6.0):
    window.add({'loss': jnp.float32(v)})
  assert float(window.pop()['loss']) == pytest.approx(3.0)
  path = str(tmp_path / 'metrics.jsonl')
  clock = iter([10.0, 12.5, 100.0, 101.0])
  w = log_lib.JsonlWriter(path, clock=lambda: next(clock))
  w.write(1, 'train', {'loss': 1.0})
  w.close()
  w = log_lib.JsonlWriter(path, clock=lambda: next(clock))  # a restart
  w.write(2, 'train', {'loss': 0.5})
  w.close()
  times = [json.loads(l)['time'] for l in open(path)]
  assert times == [2.5, 3.5]


def test_progress_bar_shows_rate_loss_and_examples_per_second():
  out = io.StringIO()
  bar = log_lib.ProgressBar(100, batch_size=32, file=out)
  bar.write(10, 'train', {'loss': 1.25})
  bar.write(20, 'train', {'loss': 0.75})
  bar.write(20, 'eval', {'accuracy': 0.5})
  bar.close()
  text = out.getvalue()
  assert '20/100' in text and 'loss=0.75' in text and 'ex/s' in text
  assert 'step/s' in text and '[20/100] eval accuracy=0.5' in text


# --- EMA -----------------------------------------------------------------------


class _Linear(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(x)


def _loss_task(model, variables, batch, *, train, rng=None):
  out = model.apply(variables, batch['x'], train=train)
  loss = jnp.sum((out - batch['y']) ** 2)
  n = jnp.float32(batch['x'].shape[0])
  return {'loss': loss, 'count': n}, {}


def test_ema_in_the_train_step_equals_a_hand_computed_average():
  model = _Linear()
  x = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
  batch = {'x': x, 'y': np.ones((4, 3), np.float32)}
  tx = optax.sgd(0.1)
  state = state_lib.create(model, tx, (x,), {}, seed=0, ema=True)
  step = jax.jit(train.make_train_step(model, _loss_task, tx, ema_decay=0.5))
  history = [jax.tree.map(np.asarray, state.params)]
  for _ in range(4):
    state, _ = step(state, batch)
    history.append(jax.tree.map(np.asarray, state.params))
  expected = history[0]
  for t in range(4):  # d_t = min(0.5, (1 + t) / (10 + t)); t = updates before
    d = min(0.5, (1 + t) / (10 + t))
    expected = jax.tree.map(lambda e, p: d * e + (1 - d) * p, expected,
                            history[t + 1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               state.ema_params, expected)
  assert not np.allclose(state.ema_params['Dense_0']['kernel'],
                         state.params['Dense_0']['kernel'])


# --- keep-best, early stopping, resume ----------------------------------------


def _scripted(values):
  """An eval hook whose ``score`` at eval k is values[k] (k = step // 5 - 1)."""

  def hook(model, state):
    del model
    k = int(np.asarray(jax.device_get(state.step))) // 5 - 1
    return {'score': float(values[k])}

  return hook


def test_keep_best_survives_resume_and_early_stopping(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  scores = [0.1, 0.5, 0.3, 0.7, 0.2, 0.6, 0.65, 0.1]  # evals at 5, 10, ...
  cfg = tiny(data_dir, num_steps=20, eval_every=5, checkpoint_every=5,
             best_metric='score', eval_split='test', plots=False,
             model_summary=False)
  # First 20 steps (evals 5, 10, 15 and the final one at 20), then resume.
  train.run(cfg, workdir, eval_hooks=[_scripted(scores)])
  assert inference.restore(workdir, step='best').step == 20
  result = train.run(cfg.replace(num_steps=40, early_stopping_patience=3),
                     workdir, eval_hooks=[_scripted(scores)])
  # After the resume: 0.2 (25), 0.6 (30), 0.65 (35): three without a new best
  # (0.7 at 20, remembered across the resume), so the run stops at 35.
  assert result['step'] == 35 and result['stopped_early']
  run = inference.restore(workdir, step='best')
  latest = inference.restore(workdir)
  assert run.step == 20 and latest.step == 35
  assert not np.allclose(run.variables['params']['head']['kernel'],
                         latest.variables['params']['head']['kernel'])
  ev = train.run(cfg.replace(eval_only=True, eval_checkpoint='best'), workdir)
  assert ev['step'] == 20
  assert [n for n in os.listdir(os.path.join(workdir, 'checkpoints_best'))
          if n.isdigit()] == ['20']


def test_selection_on_test_needs_saying_so(tmp_path, data_dir):
  with pytest.raises(ConfigError, match='--best_metric: digits has no '
                     'validation split'):
    train.run(tiny(data_dir, best_metric='accuracy'), str(tmp_path / 'x'))
  assert not os.path.exists(tmp_path / 'x')


def test_test_split_name_never_duplicates_the_eval_split():
  cfg = Config()
  assert splits.test_split_name(cfg, 'validation', {'train', 'validation',
                                                   'test'}) == 'test'
  assert splits.test_split_name(cfg, 'test', {'train', 'test'}) is None
  assert splits.test_split_name(cfg.replace(test_split='none'), 'validation',
                               {'test'}) is None
  assert splits.test_split_name(cfg, 'validation', {'test'}, False) is None


# --- pictures, summary, profile, export ---------------------------------------


def test_run_writes_pictures_summary_profile_and_named_eval_lines(
    tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  cfg = tiny(data_dir, num_steps=12, log_every=4, eval_every=6,
             eval_max_examples=100, profile_steps='2:4', ema_decay=0.9)
  result = train.run(cfg, workdir)
  curves = Image.open(os.path.join(workdir, 'plots', 'curves.png'))
  confusion = Image.open(os.path.join(workdir, 'plots', 'confusion_matrix.png'))
  assert curves.size == plot.CURVES_SIZE and confusion.size == plot.CONFUSION_SIZE
  assert np.asarray(curves).std() > 0  # not a blank image
  text = open(os.path.join(workdir, 'model_summary.txt')).read()
  assert 'parameters: 21,386' in text and 'FLOPs' in text and 'conv1' in text
  traces = [f for _, _, fs in os.walk(os.path.join(workdir, 'profile'))
            for f in fs if f.endswith('.xplane.pb')]
  assert traces
  lines = log_lib.read_metrics(workdir)
  evals = [l for l in lines if l['split'] == 'eval']
  assert all(l['dataset_split'] == 'test' for l in evals)
  # --eval_max_examples=100 caps the periodic eval; the final one is whole.
  assert [(l['step'], l['num_examples']) for l in evals] == [(6, 100),
                                                            (12, 360)]
  assert all('time' in l for l in lines)
  assert 'ema_accuracy' in evals[-1] and 'ema_accuracy' in result
  assert [l['step'] for l in lines if l['split'] == 'train'] == [4, 8, 12]


def test_export_cli_reproduces_logits_in_a_fresh_process(tmp_path, data_dir):
  workdir, out = str(tmp_path / 'run'), str(tmp_path / 'export')
  train.run(tiny(data_dir, num_steps=5, plots=False, model_summary=False),
            workdir)
  env = {**os.environ, 'PYTHONPATH': ROOT}
  done = subprocess.run([sys.executable, '-m', 'dlresearch.export',
                         f'--workdir={workdir}', f'--out={out}'], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  signature = json.load(open(os.path.join(out, 'signature.json')))
  assert signature['input']['shape'] == [None, 8, 8, 1]
  assert signature['label_names'] == [str(i) for i in range(10)]
  run = inference.restore(workdir)
  x = np.random.default_rng(1).uniform(size=(7, 8, 8, 1)).astype(np.float32)
  np.save(tmp_path / 'x.npy', x)
  script = textwrap.dedent(f"""
      import sys, jax, numpy as np
      exported = jax.export.deserialize(bytearray(open(
          {os.path.join(out, 'model.jaxexport')!r}, 'rb').read()))
      x = np.load({str(tmp_path / 'x.npy')!r})
      np.save({str(tmp_path / 'y.npy')!r}, np.concatenate(
          [np.asarray(exported.call(x[:2])), np.asarray(exported.call(x[2:]))]))
      assert 'dlresearch' not in sys.modules
  """)
  clean = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  done = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path),
                        env=clean, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  np.testing.assert_allclose(np.load(tmp_path / 'y.npy'), run.predict(x),
                             rtol=1e-5, atol=1e-5)
  bad = subprocess.run([sys.executable, '-m', 'dlresearch.export',
                        f'--workdir={tmp_path}/nothing', f'--out={out}2'],
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode == 2 and bad.stderr.startswith('error:')
  assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
  assert not os.path.exists(f'{out}2')


# --- a dataset with a validation split, capped periodic evals -----------------


@pytest.fixture(scope='module')
def corpus_dir(tmp_path_factory):
  """``text_files`` with explicit train / validation / test files."""
  root = tmp_path_factory.mktemp('corpus')
  rng = np.random.default_rng(0)
  words = ('the king is dead and the queen doth weep for him my lord what '
           'say you to the clouds above fair is foul').split()
  for name, n in (('train.txt', 3000), ('validation.txt', 500),
                  ('test.txt', 300)):
    (root / name).write_text(' '.join(rng.choice(words, n)) + '\n')
  return str(root)


def test_validation_split_for_periodic_evals_test_once_and_capped_evals(
    tmp_path, corpus_dir):
  from experiments.rnn_lm import PRESETS as LM  # pylint: disable=g-import-not-at-top
  from dlresearch import policy  # pylint: disable=g-import-not-at-top
  preset = LM['shakespeare_lstm']
  cfg = config_lib.override(preset.config, {
      **preset.tiny, 'dataset': 'text_files', 'manual_dir': corpus_dir,
      'data_dir': str(tmp_path / 'tfds'), 'num_steps': 15, 'eval_every': 5,
      'checkpoint_every': 5, 'keep_checkpoints': 5, 'eval_max_examples': 10,
      'best_metric': 'loss', 'best_mode': 'min', 'progress': 'none',
      'plots': False, 'model_summary': False})
  workdir = str(tmp_path / 'run')
  result = train.run(cfg, workdir)
  data = problems.build(cfg.replace(eval_only=True), workdir, fresh=False)
  assert (data.eval_split, data.test_split) == ('validation', 'test')
  n_val, n_test = data.eval.num_examples, data.test.num_examples
  assert n_val > 10 and n_test > 0
  lines = log_lib.read_metrics(workdir)
  evals = [l for l in lines if l['split'] == 'eval']
  tests = [l for l in lines if l['split'] == 'test']
  # Periodic evals (5, 10) on the first 10 validation rows; the final one
  # (15) on all of validation; the test split once, at the end, in full.
  named = lambda lines: [(l['step'], l['dataset_split'], l['num_examples'])
                         for l in lines]
  assert named(evals) == [(5, 'validation', 10), (10, 'validation', 10),
                          (15, 'validation', n_val)]
  assert named(tests) == [(15, 'test', n_test)]
  assert result['test_loss'] == tests[0]['loss']
  # The capped eval really is the first 10 rows: recompute it by hand from
  # the checkpoint of step 5 (and check that all rows would differ).
  run = inference.restore(workdir, step=5)

  def loss(n):
    batch = data.eval.get(np.arange(n), None)
    batch['_valid'] = np.ones(n, np.float32)
    sums, _ = data.task(run.model, run.variables, batch, train=False)
    return float(sums['loss'] / sums['count'])

  assert evals[0]['loss'] == pytest.approx(loss(10), rel=1e-4)
  assert abs(loss(n_val) - loss(10)) > 1e-3
  # Keep-best ranks the periodic validation lines only (never the test line,
  # nor the uncapped final eval, which is not comparable with them).
  periodic = evals[:2]
  best_line = min(periodic, key=lambda l: l['loss'])
  best = policy.BestCheckpoint(policy.best_checkpoint_dir(workdir))
  try:
    _, info = best.restore()
  finally:
    best.close()
  assert info['step'] == best_line['step']
  assert info['metrics']['loss'] == pytest.approx(best_line['loss'], rel=1e-6)
  assert inference.restore(workdir, step='best').step == best_line['step']
