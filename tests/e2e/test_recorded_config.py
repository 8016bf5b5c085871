"""One recorded config: config.json, refusal on resume, replay, --helpfull."""

import hashlib
import json

import pytest

from dlresearch import config as config_lib, train
from dlresearch.config import Config, ConfigError

import _forked  # pylint: disable=g-bad-import-order


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def first(tmp_path_factory, data_dir):
  """A 10-step run's command line, and --helpfull (one warm parent)."""
  tmp = tmp_path_factory.mktemp('recorded')
  work = tmp / 'run'
  run, helpfull = _forked.run([
      {'module': 'experiments.cnn_imagenet', 'argv': [
          '--preset=quickstart', '--tiny', f'--data_dir={data_dir}',
          f'--workdir={work}', '--num_steps=10']},
      {'module': 'experiments.cnn_imagenet', 'argv': [
          '--preset=fashion_mnist', '--helpfull']}], tmp)
  return tmp, work, run, helpfull


def test_cli_flows_on_a_recorded_workdir(first, data_dir):
  tmp_path, work, r, _ = first
  assert r['code'] == 0, r['stderr'][-3000:]
  record = json.loads((work / 'config.json').read_text())
  recorded = config_lib.flatten(record['config'])  # by section after e5bc124
  assert recorded['preset'] == 'quickstart'
  assert recorded['num_steps'] == 10 and record['num_steps'] == 10
  assert '--num_steps=10' in record['command_line']
  assert 'git_dirty' in record and 'versions' in record
  config_bytes = (work / 'config.json').read_bytes()
  before = _forked.snapshot(work)

  # Each command line its own process, in order (one warm parent); the
  # workdir's files are hashed just before each starts.
  replay = tmp_path / 'replay'
  changed, evaluated, replayed = _forked.run([
      # A resume that changes what the checkpoints mean: one line, nothing
      # written.
      {'module': 'experiments.cnn_imagenet', 'snapshot': [str(work)],
       'argv': ['--preset=quickstart', '--tiny', f'--data_dir={data_dir}',
                f'--workdir={work}', '--num_steps=10', '--optimizer=sgd']},
      # --eval_only needs no training flags (it reads config.json) and
      # leaves config.json byte-identical.
      {'module': 'experiments.cnn_imagenet', 'snapshot': [str(work)],
       'argv': [f'--workdir={work}', '--eval_only']},
      # --config replays the run exactly in a new workdir.
      {'module': 'experiments.cnn_imagenet', 'snapshot': [str(work)],
       'argv': [f'--config={work}/config.json', f'--workdir={replay}']},
  ], tmp_path)
  assert changed['code'] == 2 and 'Traceback' not in changed['stderr']
  assert changed['stderr'].strip().splitlines() == [
      f"error: --optimizer: {work} holds checkpoints trained with "
      "--optimizer='adam', not 'sgd'; resume with the same value (or leave "
      "the flag out: the recorded config is used) or use a new --workdir"]
  assert changed['before'][str(work)] == before
  assert evaluated['before'][str(work)] == before  # the refusal wrote nothing

  assert evaluated['code'] == 0, evaluated['stderr'][-3000:]
  assert 'final eval at step 10:' in evaluated['stdout']
  assert replayed['before'][str(work)]['config.json'] == (
      hashlib.sha256(config_bytes).hexdigest())  # after --eval_only
  assert (work / 'config.json').read_bytes() == config_bytes

  assert replayed['code'] == 0, replayed['stderr'][-3000:]
  assert json.loads((replay / 'config.json').read_text())['config'] == \
      record['config']
  final = [l for l in replayed['stdout'].splitlines()
           if l.startswith('final eval')]
  first_eval = train.run(config_lib.read_recorded(str(work)).replace(
      eval_only=True), str(work))
  assert f'accuracy={first_eval["accuracy"]:.4f}' in final[0]


def test_helpfull_explains_flags_with_the_chosen_presets_values(first):
  r = first[3]
  out = ' '.join(r['stdout'].split())  # absl wraps lines (and exits 1 on help)
  assert 'Global batch size, across all devices' in out
  assert "preset fashion_mnist: 'fashion_mnist_local'" in out
  assert 'Models: ' in out and 'resnet50' in out and 'Data kinds: ' in out


def test_changed_max_len_on_a_translation_workdir_is_refused(tmp_path):
  """The reported reproduction, in process: nothing is written."""
  recorded = Config(data_kind='seq2seq', dataset='number_words/en-de',
                    model='transformer_seq2seq', tokenizer='bpe', max_len=16)
  (tmp_path / 'checkpoints' / '30').mkdir(parents=True)
  (tmp_path / 'config.json').write_text(json.dumps(
      {'config': config_lib.to_json(recorded)}))
  before = _forked.snapshot(tmp_path)
  with pytest.raises(ConfigError, match='--max_len: .* --max_len=16, not 12'):
    train.run(recorded.replace(max_len=12), str(tmp_path))
  assert _forked.snapshot(tmp_path) == before
