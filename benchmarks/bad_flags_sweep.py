"""Sweep: every experiment module with bad flags must fail cleanly.

    python benchmarks/bad_flags_sweep.py [--root=CHECKOUT] [--data_dir=DIR]

For each of the seven ``experiments/*.py`` and each bad input below, runs
``python -m experiments.X --tiny BAD --workdir=W`` (as a forked child of one
warm process, ``tests/_fork_cli.py``) on a workdir W that holds only
``keep.txt``, and counts the cases that end in a traceback, exit 0, more
than one line on stderr (besides log lines), or change anything in W.
``--root`` runs the sweep against another checkout (e.g. an export of main)
to compare before/after.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ('cnn_imagenet', 'mnist1d', 'rnn_lm', 'text_classify',
           'transformer_lm', 'transformer_translate', 'vit_imagenet')
BAD = (
    ['--bogus_flag=1'], ['--num_steps=abc'], ['--num_steps=-1'],
    ['--batch_size=0'], ['--batch_size=12'], ['--batch_size=1048576'],
    ['--learning_rate=0'], ['--learning_rate=inf'], ['--learning_rate=1e39'],
    ['--learning_rate=nan'], ['--num_epochs=inf', '--num_steps=0'],
    ['--seed=-1'], ['--momentum=-1'], ['--weight_decay=-0.1'],
    ['--label_smoothing=1'], ['--optimizer=lion'], ['--model=nope'],
    ['--model_kwargs={"nope": 1}'], ['--model_kwargs=[1]'],
    ['--mesh=data:0'], ['--mesh=data:-2'], ['--mesh=bogus'],
    ['--grad_accum_steps=3'], ['--eval_only'],
    ['--init_from=/nonexistent/run'], ['--dataset=no_such_dataset'],
    ['--coordinator_address=nohost', '--num_processes=2', '--process_id=0'],
    ['--num_processes=2', '--process_id=5'], ['--freeze=('],
    ['--vocab_size=0'], ['unexpected_positional'],
)


def _tree(path):
  out = {}
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      full = os.path.join(root, name)
      out[os.path.relpath(full, path)] = (os.path.isdir(full) or
                                          open(full, 'rb').read())
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--root', default=HERE)
  parser.add_argument('--data_dir', default=os.path.expanduser(
      '~/tensorflow_datasets'))
  args = parser.parse_args()
  tmp = tempfile.mkdtemp(prefix='bad-flags-')
  cases, names = [], []
  for module in MODULES:
    for i, bad in enumerate(BAD):
      workdir = os.path.join(tmp, f'{module}-{i}')
      os.makedirs(workdir)
      with open(os.path.join(workdir, 'keep.txt'), 'w') as f:
        f.write('precious')
      cases.append({'module': f'experiments.{module}', 'cwd': args.root,
                    'argv': ['--tiny', f'--data_dir={args.data_dir}',
                             f'--workdir={workdir}', *bad]})
      names.append((module, ' '.join(bad), workdir))
  path = os.path.join(tmp, 'cases.json')
  with open(path, 'w') as f:
    json.dump(cases, f)
  driver = os.path.join(HERE, 'tests', '_fork_cli.py')
  env = dict(os.environ, FORK_CLI_ROOT=args.root)
  subprocess.run([sys.executable, driver, path, path + '.out'], check=True,
                 cwd=args.root, env=env)
  with open(path + '.out') as f:
    results = json.load(f)
  counts = {'traceback': 0, 'exit 0': 0, 'not one line': 0, 'wrote': 0}
  bad_cases = 0
  for (module, bad, workdir), r in zip(names, results):
    lines = [l for l in r['stderr'].splitlines() if l.strip() and
             not l.startswith(('I1', 'W1', 'E1', 'I0', 'W0', 'E0'))]
    problems = []
    if 'Traceback' in r['stderr']:
      problems.append('traceback')
    if r['code'] == 0:
      problems.append('exit 0')
    if len(lines) != 1:
      problems.append('not one line')
    if _tree(workdir) != {'keep.txt': b'precious'}:
      problems.append('wrote')
    for p in problems:
      counts[p] += 1
    bad_cases += bool(problems)
    if problems:
      print(f'{module} {bad}: {", ".join(problems)} (exit {r["code"]}): '
            f'{(lines or [""])[-1][:160]}')
  print(f'{len(results)} cases, {bad_cases} not clean: '
        + ', '.join(f'{k} {v}' for k, v in counts.items()))
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  main()
