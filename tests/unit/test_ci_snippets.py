""".ci/snippets.py: the ```python blocks of README.md and docs/*.md that CI
runs. Every block of the repository parses, defines every name it uses and
has no stale marker; the markers do what .ci/run's header says."""

import importlib.util
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location('ci_snippets',
                                               ROOT / '.ci' / 'snippets.py')
snippets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snippets)
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]


def _all_blocks():
  return [b for path in DOCS for b in snippets.blocks(str(path))]


def test_every_python_block_runs_as_pasted_by_its_names():
  found = _all_blocks()
  assert len(found) >= 4  # README's "Use it from Python", extending.md's three
  for block in found:
    code = block.tiny()  # no stale marker
    compile(code, f'{block.file}:{block.line}', 'exec')
    assert snippets.undefined_names(code) == set(), (
        f'{block.file}:{block.line} uses names it never defines')


def test_undefined_names_finds_what_a_paste_would_miss():
  assert snippets.undefined_names(
      'import numpy as np\nlogits = run.predict(images)\n') == {'run', 'images'}
  assert snippets.undefined_names(
      'import os.path\nfrom a import b as c\nx = [i for i in c]\n'
      'def f(y):\n  return y, x, os\nfor k in x: print(k)\n') == set()


def test_markers_substitute_skip_and_refuse_to_drift(tmp_path):
  doc = tmp_path / 'doc.md'
  doc.write_text(
      'text\n\n```bash\necho not python\n```\n'
      '<!-- ci: python num_steps=300 => num_steps=20 -->\n'
      '<!-- ci: python runs/a => runs/tiny -->\n\n'
      '```python\nrun(num_steps=300, workdir="runs/a")\n```\n'
      '<!-- ci: python skip: needs a GPU -->\n'
      '```python\nfast()\n```\n'
      '```python\nplain()\n```\n')
  first, skipped, plain = snippets.blocks(str(doc))
  assert first.line == 9 and first.tiny() == (
      'run(num_steps=20, workdir="runs/tiny")\n')
  assert skipped.skip == 'needs a GPU' and plain.tiny() == 'plain()\n'
  written = subprocess.run(
      ['python3', str(ROOT / '.ci' / 'snippets.py'), '--write',
       str(tmp_path / 'out'), str(doc)], capture_output=True, text=True,
      check=True).stdout.split()
  assert [pathlib.Path(p).read_text() for p in written] == [
      first.tiny(), 'plain()\n']
  doc.write_text('<!-- ci: python gone => here -->\n```python\nx = 1\n```\n')
  with pytest.raises(ValueError, match="replaces 'gone', which the block"):
    snippets.blocks(str(doc))[0].tiny()
  doc.write_text('<!-- ci: python a => b -->\nprose\n```python\na\n```\n')
  with pytest.raises(ValueError, match='directly above a ```python block'):
    snippets.blocks(str(doc))
  doc.write_text('<!-- ci: python a b -->\n```python\na\n```\n')
  with pytest.raises(ValueError, match='expected'):
    snippets.blocks(str(doc))


def test_ci_list_names_the_python_blocks():
  listed = subprocess.run(['bash', str(ROOT / '.ci' / 'run'), '--list'],
                          capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout.splitlines()
  python = [l for l in listed if ': python (' in l]
  assert python == [f'{pathlib.Path(b.file).relative_to(ROOT)}:{b.line}: '
                    f'python ({b.code.count(chr(10))} lines, as written)'
                    for b in _all_blocks()]
  assert listed[0].startswith('quickstart: ')
