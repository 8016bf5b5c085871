"""dlresearch.config: sections, their validate, field metadata, the recorded
form and its migration, and the flags an experiment defines from them; range
checks, overrides and parsing, device divisibility, help for every field."""

import dataclasses
import json
import os

from absl import flags
import pytest

from dlresearch import cli, config as config_lib
from dlresearch.config import Config, ConfigError, declare, engine, options
from dlresearch.apps.anomaly import options as anomaly_options
from dlresearch.apps.recommend import options as recommend_options
from experiments import anomaly, cnn_imagenet, transformer_lm
from experiments import transformer_translate


ENGINE = ('data', 'model', 'optimisation', 'loop', 'evaluation', 'parallelism',
          'cluster', 'transfer', 'tracking')
FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures',
                       'legacy_workdir_e5bc124', 'config.json')

# What e5bc124's flat config declared; the sections must keep it.
OLD_CHOICES = {
    'optimizer': ('sgd', 'nesterov', 'adam', 'adamw'),
    'schedule': ('constant', 'cosine', 'step', 'inverse_sqrt'),
    'best_mode': ('max', 'min'), 'progress': ('auto', 'bar', 'lines', 'none'),
    'loss': ('softmax_xent', 'sigmoid_xent', 'mse'),
    'augment': ('none', 'flip', 'pad_crop_flip', 'crop_flip'),
    'normalize': ('none', 'scale', 'imagenet', 'standardize'),
    'pipeline': ('auto', 'memory', 'grain'), 'parallelism': ('jit', 'pmap'),
    'dtype': ('float32', 'bfloat16'), 'tokenizer': ('char', 'bpe', 'unigram'),
    # Added since (issue 24).
    'attention_impl': ('auto', 'explicit', 'xla', 'cudnn'),
    'cpu_kernels': ('auto', 'xla', 'native'),  # issue 21
    'lora_save': ('full', 'adapters'),
    'feature_scaling': ('standard', 'robust'),  # issue 26
    'time_feature': ('none', 'hour'),
    'anomaly_score': ('mse', 'standardized', 'mahalanobis'),
}
OLD_MAY_CHANGE = {
    'preset', 'data_dir', 'manual_dir', 'pipeline', 'grain_workers',
    'grain_threads', 'eval_split', 'eval_batch_size', 'num_steps',
    'num_epochs', 'log_every', 'eval_every', 'checkpoint_every',
    'keep_checkpoints', 'eval_only', 'init_from', 'sample', 'prompt',
    'max_new_tokens', 'temperature', 'top_k', 'beam_size', 'bleu_examples',
    'bleu_tokenize', 'mesh', 'parallelism', 'grad_accum_steps', 'remat',
    'coordinator_address', 'num_processes', 'process_id',
    'heartbeat_timeout_s', 'init_timeout_s', 'audit_group', 'alert_rate',
    'ranking_k', 'early_stopping_patience', 'eval_max_examples', 'test_split',
    'top_p', 'progress', 'model_summary', 'plots', 'compilation_cache',
    'profile_steps', 'eval_checkpoint', 'new_head', 'pretrained_tokenizer',
    'cpu_eigen_convs', 'attention_impl', 'cpu_kernels',  # issue 21
    'tracker', 'tracker_uri'}  # issue 23


def test_every_field_is_declared_by_one_section_and_read_flat():
  declared = [f.name for s in config_lib.sections() for f in s.fields()]
  # 94 at e5bc124, less the retired 'pretrained' (now the xray tool's
  # flag), plus 11 of augmentation (image section) and 6 of issue 24
  # (attention_impl, lora_* with lora_save), cpu_kernels (issue 21),
  # tracker and tracker_uri (issue 23), 4 of the anomaly section (issue 26:
  # feature_scaling, time_feature, anomaly_score, score_holdout).
  assert len(declared) == len(set(declared)) == 117
  assert set(declared) == {f.name for f in dataclasses.fields(Config)}
  names = [s.name for s in config_lib.sections()]
  assert names[:len(ENGINE)] == list(ENGINE)
  assert {'image', 'text', 'generation', 'translation', 'anomaly'} <= set(names)
  # Grouped by concept, not by the batch of work that added a field.
  for together in (('optimizer', 'adam_b1', 'min_lr_ratio', 'ema_decay'),
                   ('top_k', 'top_p'), ('eval_split', 'test_split'),
                   ('best_metric', 'early_stopping_patience'),
                   ('init_from', 'new_head', 'probe', 'lr_multipliers')):
    assert len({config_lib.section_of(n).name for n in together}) == 1, together
  cfg = Config(learning_rate=0.5, top_p=0.9, image_size=32)  # flat access
  assert (cfg.learning_rate, cfg.top_p, cfg.image_size) == (0.5, 0.9, 32)
  assert isinstance(cfg, engine.Optimisation) and isinstance(cfg, options.Image)
  assert cfg.replace(seed=3).seed == 3 and cfg.seed == 0
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.seed = 1  # pytype: disable=not-writable


@pytest.mark.parametrize('section_cls, field, value, needle', [
    (engine.Optimisation, 'adam_b1', 1.0, 'in \\[0, 1\\)'),
    (engine.Optimisation, 'batch_size', 0, '> 0'),
    (engine.Loop, 'log_every', 0, '> 0'),
    (engine.Evaluation, 'eval_checkpoint', 'last', "'best' or a step"),
    (engine.Cluster, 'coordinator_address', 'nohost', 'host:port'),
    (engine.Transfer, 'probe', True, 'needs --new_head'),
    (options.Text, 'vocab_size', 100, 'BPE needs >= 260'),
    (options.Generation, 'top_p', 0.0, 'in \\(0, 1\\]'),
    (anomaly_options.Anomaly, 'alert_rate', 2.0, 'in \\(0, 1\\]'),
])
def test_each_section_validates_its_own_fields(section_cls, field, value,
                                               needle):
  kwargs = {field: value}
  if section_cls is options.Text:
    kwargs['tokenizer'] = 'bpe'
  section_cls().validate()  # the defaults are valid
  with pytest.raises(ConfigError, match=f'--{field}: .*{needle}'):
    section_cls(**kwargs).validate()  # alone, without the other sections
  with pytest.raises(ConfigError, match=f'--{field}: .*{needle}'):
    config_lib.override(Config(), kwargs)  # and through the composed config


def test_checks_across_sections_and_choices_run_on_the_config():
  with pytest.raises(ConfigError, match='--grad_accum_steps: must divide '
                     '--batch_size=10'):
    config_lib.override(Config(), {'batch_size': 10, 'grad_accum_steps': 3})
  with pytest.raises(ConfigError, match='--schedule: must be one of constant'):
    config_lib.override(Config(), {'schedule': 'linear'})
  with pytest.raises(ConfigError, match='--temperature: must be a finite'):
    config_lib.override(Config(), {'temperature': float('inf')})


def test_choices_and_resume_rule_are_metadata_next_to_the_field():
  fields = {f.name: f for f in dataclasses.fields(Config)}
  assert fields['optimizer'].metadata['choices'] == OLD_CHOICES['optimizer']
  assert fields['eval_every'].metadata['on_resume'] == declare.MAY_CHANGE
  assert fields['learning_rate'].metadata['on_resume'] == declare.MUST_MATCH
  assert config_lib.CHOICES == OLD_CHOICES
  assert config_lib.MAY_CHANGE_ON_RESUME == OLD_MAY_CHANGE
  assert not config_lib.is_flag('preset') and config_lib.is_flag('seed')
  with pytest.raises(ValueError, match='on_resume must be'):
    declare._f(0, 'help', on_resume='sometimes')  # pylint: disable=protected-access


def test_config_json_records_sections_and_a_flat_record_migrates():
  cfg = Config(model='mlp', learning_rate=0.003, step_boundaries=(0.5,),
               model_kwargs={'hidden': 8}, top_p=0.9)
  recorded = json.loads(json.dumps(config_lib.to_json(cfg)))
  assert list(recorded) == [s.name for s in config_lib.sections()]
  assert recorded['optimisation']['learning_rate'] == 0.003
  assert recorded['generation']['top_p'] == 0.9
  assert config_lib.is_sectioned(recorded)
  assert config_lib.from_json(recorded) == cfg
  flat = config_lib.flatten(recorded)
  assert not config_lib.is_sectioned(flat) and flat['model'] == 'mlp'
  assert config_lib.from_json(flat) == cfg  # the e5bc124 form reads the same
  with open(FIXTURE, encoding='utf-8') as f:
    legacy = json.load(f)['config']
  old = config_lib.from_json(legacy)
  assert (old.model, old.num_steps, old.preset) == ('mlp', 20, 'quickstart')
  retired = {k: legacy.pop(k) for k in config_lib.RETIRED_FIELDS}
  assert retired == {'pretrained': ''}
  # Fields added since e5bc124 (augmentation, attention, LoRA) record their
  # defaults.
  default = config_lib.flatten(config_lib.to_json(Config()))
  added = {k: default[k] for k in default.keys() - legacy.keys()}
  assert config_lib.flatten(config_lib.to_json(old)) == {**legacy, **added}
  assert added['attention_impl'] == 'auto'


def test_damaged_or_newer_records_fail_with_the_field_named(tmp_path):
  recorded = config_lib.to_json(Config())
  with pytest.raises(ConfigError, match='--seed: recorded in two sections'):
    config_lib.flatten({**recorded, 'model': {**recorded['model'], 'seed': 1}})
  with pytest.raises(ConfigError, match='--frobnicator: unknown config section'):
    config_lib.from_json({'dataset': 'digits', 'frobnicator': {'name': 'x'}})
  with pytest.raises(ConfigError, match='--frobs: unknown config field'):
    config_lib.from_json({**recorded, 'loop': {'frobs': 1}})
  path = tmp_path / 'config.json'
  path.write_text(json.dumps({'config': recorded}))
  assert config_lib.read_recorded(str(tmp_path)) == Config()


def _flags(presets, **kwargs):
  fv = flags.FlagValues()
  cli.define_flags(presets, next(iter(presets)), flag_values=fv, **kwargs)
  return fv


def test_helpfull_groups_flags_by_section():
  fv = _flags(cnn_imagenet.PRESETS)
  by_module = fv.flags_by_module_dict()
  group = [m for m in by_module if m.startswith('dlresearch.config.optimisation')]
  assert len(group) == 1 and group[0].endswith(
      '(the batch, the loss, the optimizer and its schedule)')
  assert {f.name for f in by_module[group[0]]} == {
      f.name for f in config_lib.sections()[2].fields()}
  help_ = fv.get_help()
  assert help_.index('dlresearch.config.loop (') < help_.index('--num_steps')
  assert 'dlresearch.config.image (' in help_ and 'data kind classification' in help_


def test_an_image_experiment_defines_no_application_or_text_flags():
  fv = _flags(cnn_imagenet.PRESETS)
  defined = set(cli.defined_fields(fv))
  for name in ('beam_size', 'alert_rate', 'ranking_k', 'top_p', 'prompt',
               'tokenizer', 'pretrained', 'normal_class'):
    assert name not in fv, name
  assert {'learning_rate', 'image_size', 'audit_group', 'mesh'} <= defined
  wanted = {s.name for s in config_lib.sections()
            if s.kinds is None or 'classification' in s.kinds}
  assert defined == {f.name for s in config_lib.sections() if s.name in wanted
                     for f in s.fields() if f.name != 'preset'}
  # e5bc124 defined one flag per field but preset: 93 (+4 of cli: 97).
  # + 11 augmentation fields (issue 22), attention_impl, lora_* (issue 24),
  # cpu_kernels (issue 21), tracker, tracker_uri (issue 23).
  assert len(defined) == 91 < 93


@pytest.mark.parametrize('presets, kwargs, present, absent', [
    (transformer_lm.PRESETS, {}, ('top_p', 'prompt', 'seq_len'),
     ('beam_size', 'image_size', 'alert_rate')),
    (transformer_translate.PRESETS, {}, ('beam_size', 'max_len'),
     ('top_p', 'image_size')),
    (anomaly.PRESETS, {}, ('alert_rate', 'normal_class'), ('beam_size',)),
    (cnn_imagenet.PRESETS, {'kinds': ('lm',)}, ('top_p', 'image_size'),
     ('beam_size',)),
    (cnn_imagenet.PRESETS, {'options': ('retrieval',)}, ('ranking_k',),
     ('top_p',)),
])
def test_option_flags_follow_the_experiments_data_kinds(presets, kwargs,
                                                        present, absent):
  fv = _flags(presets, **kwargs)
  assert all(name in fv for name in present), present
  assert not any(name in fv for name in absent), absent


def test_flag_overrides_reads_the_defined_flags_typed():
  fv = _flags(cnn_imagenet.PRESETS)
  fv(['prog', '--learning_rate=0.1', '--step_boundaries=0.5,0.9',
      '--model_summary=false', '--image_size=16'])
  assert cli.flag_overrides(fv) == {
      'learning_rate': 0.1, 'step_boundaries': (0.5, 0.9),
      'model_summary': False, 'image_size': 16}
  with pytest.raises(ValueError, match="unknown config section 'nope'"):
    cli.flag_sections(cnn_imagenet.PRESETS, options=('nope',))


def test_a_problem_registers_an_option_section_for_its_kind(monkeypatch):
  monkeypatch.setattr(declare, '_SECTIONS', dict(declare._SECTIONS))  # pylint: disable=protected-access
  presets = {'p': cli.Preset(Config(data_kind='my_kind'))}
  assert 'ranking_k' not in _flags(presets)
  config_lib.register_options(recommend_options.Retrieval, kinds=('my_kind',))
  assert config_lib.section_of('ranking_k').name == 'retrieval'
  assert declare.get('retrieval').kinds == ('retrieval', 'my_kind')
  assert 'ranking_k' in _flags(presets)
  with pytest.raises(ValueError, match='is not a config section'):
    config_lib.register_options(dict, kinds=('my_kind',))


def test_data_kind_on_the_command_line_adds_its_option_flags():
  argv = ['prog', '--num_steps=3', '--data_kind=lm', '--data_kind', 'seq2seq']
  kinds = cli._kinds_in_argv(argv)  # pylint: disable=protected-access
  assert kinds == ('lm', 'seq2seq')
  names = [s.name for s in cli.flag_sections(cnn_imagenet.PRESETS, kinds)]
  assert {'generation', 'translation', 'text', 'image'} <= set(names)
  assert 'anomaly' not in names


@pytest.mark.parametrize('field,value,needle', [
    ('batch_size', 0, '--batch_size: must be > 0'),
    ('learning_rate', -1.0, '--learning_rate: must be > 0'),
    ('num_steps', -5, '--num_steps: must be >= 0'),
    ('optimizer', 'lion', '--optimizer: must be one of sgd, nesterov, adam, adamw'),
    ('label_smoothing', 1.0, '--label_smoothing'),
    ('grad_accum_steps', 3, '--grad_accum_steps: must divide --batch_size=128'),
])
def test_config_rejects_out_of_range(field, value, needle):
  with pytest.raises(ConfigError, match=needle.replace('(', r'\(')) as e:
    config_lib.validate(Config().replace(**{field: value}))
  assert e.value.flag == field


def test_config_overrides_and_parsing():
  cfg = config_lib.override(Config(num_epochs=5), {'num_steps': 7})
  assert cfg.num_steps == 7
  # num_epochs on the command line wins over a preset's num_steps.
  cfg = config_lib.override(Config(num_steps=7), {'num_epochs': 2.0})
  assert (cfg.num_steps, cfg.num_epochs) == (0, 2.0)
  cfg = config_lib.override(Config(model_kwargs={'a': 1}),
                            {'model_kwargs': {'b': 2}})
  assert cfg.model_kwargs == {'a': 1, 'b': 2}
  assert config_lib.parse_value('batch_size', '32') == 32
  assert config_lib.parse_value('step_boundaries', '0.5,0.75') == (0.5, 0.75)
  with pytest.raises(ConfigError, match='--batch_size: expected int'):
    config_lib.parse_value('batch_size', 'abc')
  with pytest.raises(ConfigError, match='--model_kwargs: expected dict'):
    config_lib.parse_value('model_kwargs', '[1]')
  with pytest.raises(ConfigError, match='unknown config field'):
    config_lib.override(Config(), {'bogus': 1})
  assert config_lib.from_json(config_lib.to_json(cfg)) == cfg


def test_batch_must_divide_devices():
  config_lib.check_devices(Config(batch_size=64), 8)
  with pytest.raises(ConfigError, match='--batch_size: 12 does not divide evenly over 8'):
    config_lib.check_devices(Config(batch_size=12), 8)
  with pytest.raises(ConfigError, match='--eval_batch_size'):
    config_lib.check_devices(Config(batch_size=64, eval_batch_size=10), 8)


def test_probe_needs_a_head():
  with pytest.raises(ConfigError, match='--probe: needs --new_head'):
    config_lib.validate(Config(probe=True))


def test_config_fields_all_have_help_and_may_change_names_real_fields():
  for name in config_lib.field_types():
    assert len(config_lib.field_help(name)) > 10, name
  assert config_lib.MAY_CHANGE_ON_RESUME <= set(config_lib.field_types())
  old = Config(max_len=64)
  assert config_lib.changed_fields(old, old.replace(max_len=12)) == ['max_len']
  assert config_lib.changed_fields(old, old.replace(eval_every=5)) == []
  with pytest.raises(ConfigError, match=r'--max_len: W holds checkpoints '
                     r'trained with --max_len=64, not 12'):
    config_lib.check_resume(old, old.replace(max_len=12), 'W')


@pytest.mark.parametrize('field', ['learning_rate', 'num_epochs', 'momentum'])
def test_infinite_floats_are_rejected(field):
  with pytest.raises(ConfigError, match=f'--{field}: must be a finite number'):
    config_lib.override(Config(), {field: float('inf')})
