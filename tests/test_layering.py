"""The library's import layering: experiments -> cli -> train (and inference,
which restores trained runs) -> (problems, tasks, optim, parallel, ...) ->
(data, models) -> config. Read from the source with ``ast``.

The walls (``wall_violations``): the engine never imports an application
(``dlresearch/apps/``: problems are found by scanning, not imported);
``data`` imports no task, problem, model, hook or evaluator; an application
imports the engine (and ``dlresearch.rai``), never a tool or another
application.
"""

import ast
import pathlib
import shutil

PKG = pathlib.Path(__file__).resolve().parents[1] / 'dlresearch'

# Wings: packages the engine never imports.
APPS, RAI, TOOLS = 'dlresearch.apps', 'dlresearch.rai', 'dlresearch.tools'
# Tools (they read finished runs) still at the top level until they move to
# dlresearch/tools/ (issue 19); drop each name when it moves.
TOOLS_AT_TOP = frozenset({'dlresearch.export', 'dlresearch.inference',
                          'dlresearch.plot', 'dlresearch.runs',
                          'dlresearch.transfer'})
# What data (sources -> arrays -> batches) sits below.
ABOVE_DATA = ('dlresearch.tasks', 'dlresearch.problems', 'dlresearch.models',
              'dlresearch.hooks', 'dlresearch.evaluators',
              'dlresearch.callbacks', 'dlresearch.train', APPS, RAI, TOOLS)


def _under(name: str, package: str) -> bool:
  return name == package or name.startswith(package + '.')


def _app(name: str) -> str | None:
  """``dlresearch.apps.<app>`` for a module inside an application."""
  parts = name.split('.')
  return '.'.join(parts[:3]) if _under(name, APPS) and len(parts) > 2 else None


def wall_violations(graph: dict[str, set[str]]) -> list[str]:
  """Every import of ``graph`` that breaks a wall, as ``'a -> b (why)'``."""
  out = []
  for name, deps in graph.items():
    app = _app(name)
    wing = any(_under(name, w) for w in (APPS, RAI, TOOLS))
    for dep in sorted(deps):
      if not wing and name not in TOOLS_AT_TOP and _under(dep, APPS):
        out.append(f'{name} -> {dep} (the engine never imports an app)')
      if _under(name, 'dlresearch.data') and any(
          _under(dep, above) for above in ABOVE_DATA):
        out.append(f'{name} -> {dep} (data imports nothing above it)')
      if app and (_under(dep, TOOLS) or dep in TOOLS_AT_TOP):
        out.append(f'{name} -> {dep} (an app never imports a tool)')
      if app and _app(dep) not in (None, app):
        out.append(f'{name} -> {dep} (an app never imports another app)')
  return out


def _module_name(path: pathlib.Path, pkg: pathlib.Path = PKG) -> str:
  rel = path.relative_to(pkg.parent).with_suffix('')
  parts = list(rel.parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def import_graph(pkg: pathlib.Path = PKG) -> dict[str, set[str]]:
  """dlresearch module -> the dlresearch modules it imports (anywhere)."""
  modules = {_module_name(p, pkg): p for p in pkg.rglob('*.py')}
  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        base = node.module
        targets = [f'{base}.{a.name}' for a in node.names] + [base]
      else:
        continue
      deps |= {t for t in targets if t in modules and t != name}
    graph[name] = deps - {'dlresearch'}
  return graph


def test_no_module_imports_the_cli_or_sits_above_it():
  graph = import_graph()
  importers = sorted(m for m, deps in graph.items() if 'dlresearch.cli' in deps)
  assert importers == [], importers


def test_lower_layers_do_not_import_upper_ones():
  graph = import_graph()
  # The top: the CLI, the loop, and what consumes trained runs.
  upper = {'dlresearch.cli', 'dlresearch.train', 'dlresearch.inference',
           'dlresearch.export'}
  for name, deps in graph.items():
    if name in upper or name == 'dlresearch':
      continue
    assert not deps & upper, (name, deps & upper)
  for name, deps in graph.items():
    if name.startswith('dlresearch.models'):
      allowed = {d for d in deps if d.startswith('dlresearch.models')
                 or d == 'dlresearch.config'}
      assert deps == allowed, (name, deps - allowed)
  assert graph['dlresearch.config'] == set()


def test_no_import_cycles():
  graph = import_graph()
  state = {}

  def visit(node, stack):
    state[node] = 'open'
    for dep in graph.get(node, ()):
      if state.get(dep) == 'open':
        raise AssertionError(' -> '.join(stack + [node, dep]))
      if dep not in state:
        visit(dep, stack + [node])
    state[node] = 'done'

  for node in graph:
    if node not in state:
      visit(node, [])


def test_distributed_initialize_is_called_only_by_the_cli():
  callers = sorted(
      _module_name(p) for p in PKG.rglob('*.py')
      if 'distributed.initialize(' in p.read_text()
      and p.name != 'distributed.py')
  assert callers == ['dlresearch.cli'], callers


def test_the_walls_hold():
  assert wall_violations(import_graph()) == []


def test_the_walls_catch_each_kind_of_violation():
  graph = {
      'dlresearch.train': {'dlresearch.apps.anomaly.problem'},
      'dlresearch.problems': {'dlresearch.apps'},
      'dlresearch.data.pipeline': {'dlresearch.tasks', 'dlresearch.config'},
      'dlresearch.data.text': {'dlresearch.models.registry'},
      'dlresearch.apps.anomaly.problem': {
          'dlresearch.apps.anomaly.task', 'dlresearch.problems',
          'dlresearch.rai', 'dlresearch.apps.recommend.metrics',
          'dlresearch.tools.export', 'dlresearch.inference'},
      'dlresearch.tools.export': {'dlresearch.apps.anomaly.metrics'},
  }
  found = wall_violations(graph)
  assert sorted(found) == sorted([
      'dlresearch.train -> dlresearch.apps.anomaly.problem (the engine '
      'never imports an app)',
      'dlresearch.problems -> dlresearch.apps (the engine never imports an '
      'app)',
      'dlresearch.data.pipeline -> dlresearch.tasks (data imports nothing '
      'above it)',
      'dlresearch.data.text -> dlresearch.models.registry (data imports '
      'nothing above it)',
      'dlresearch.apps.anomaly.problem -> dlresearch.apps.recommend.metrics '
      '(an app never imports another app)',
      'dlresearch.apps.anomaly.problem -> dlresearch.inference (an app never '
      'imports a tool)',
      'dlresearch.apps.anomaly.problem -> dlresearch.tools.export (an app '
      'never imports a tool)',
  ]), found


def test_the_walls_catch_violations_written_into_a_copy_of_the_tree(tmp_path):
  copy = tmp_path / 'dlresearch'
  shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns('__pycache__'))
  assert wall_violations(import_graph(copy)) == []
  breaks = {  # a late import inside a function is an import all the same
      'train.py': 'from dlresearch.apps.anomaly import metrics',
      'data/pipeline.py': 'from dlresearch import problems',
      'apps/anomaly/task.py': 'from dlresearch.apps.recommend import readers',
  }
  for rel, line in breaks.items():
    with open(copy / rel, 'a', encoding='utf-8') as f:
      f.write(f'\n\ndef _late():\n  {line}\n')
  found = wall_violations(import_graph(copy))
  assert sorted(found) == sorted([
      'dlresearch.train -> dlresearch.apps.anomaly (the engine never '
      'imports an app)',
      'dlresearch.train -> dlresearch.apps.anomaly.metrics (the engine never '
      'imports an app)',
      'dlresearch.data.pipeline -> dlresearch.problems (data imports nothing '
      'above it)',
      'dlresearch.apps.anomaly.task -> dlresearch.apps.recommend (an app '
      'never imports another app)',
      'dlresearch.apps.anomaly.task -> dlresearch.apps.recommend.readers (an '
      'app never imports another app)',
  ]), found
