"""The library's import layering: experiments -> cli -> train (and inference,
which restores trained runs) -> (problems, tasks, optim, parallel, ...) ->
(data, models) -> config; models may also use ``kernels`` (the native GEMM),
which imports nothing else of the library. Read from the source with ``ast``.

The walls (``wall_violations``): the engine never imports an application
(``dlresearch/apps/``: problems are found by scanning, not imported);
``data`` imports no task, problem, model, hook or evaluator; an application
imports the engine (and ``dlresearch.rai``), never a tool or another
application; the engine never imports ``rai`` or ``tools`` either, and ``rai``
imports neither (``breaches``).
"""

import ast
import pathlib
import shutil

PKG = pathlib.Path(__file__).resolve().parents[2] / 'dlresearch'

# Wings: packages the engine never imports.
APPS, RAI, TOOLS = 'dlresearch.apps', 'dlresearch.rai', 'dlresearch.tools'
# The old command paths (``python -m dlresearch.export|runs``): tools too.
TOOLS_AT_TOP = frozenset({'dlresearch.export', 'dlresearch.runs',
                          'dlresearch.sweep'})
# What data (sources -> arrays -> batches) sits below.
ABOVE_DATA = ('dlresearch.tasks', 'dlresearch.problems', 'dlresearch.models',
              'dlresearch.evaluators',
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


def _is_main_guard(node: ast.stmt) -> bool:
  """``if __name__ == '__main__':`` -- runs only as a command, never on import."""
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
          and isinstance(node.test.left, ast.Name)
          and node.test.left.id == '__name__')


def import_graph(pkg: pathlib.Path = PKG) -> dict[str, set[str]]:
  """dlresearch module -> the dlresearch modules it imports (anywhere but in
  its ``if __name__ == '__main__':`` block)."""
  modules = {_module_name(p, pkg): p for p in pkg.rglob('*.py')}
  graph = {}
  for name, path in modules.items():
    deps = set()
    tree = ast.parse(path.read_text())
    tree.body = [n for n in tree.body if not _is_main_guard(n)]
    for node in ast.walk(tree):
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
  upper = {'dlresearch.cli', 'dlresearch.train', *TOOL_SHIMS,
           *(m for m in graph if _inside(m, 'dlresearch.tools'))}
  for name, deps in graph.items():
    if name in upper or name == 'dlresearch':
      continue
    assert not deps & upper, (name, deps & upper)
  for name, deps in graph.items():
    if name.startswith('dlresearch.models'):
      allowed = {d for d in deps if d.startswith('dlresearch.models')
                 or d in ('dlresearch.config', 'dlresearch.kernels')}
      assert deps == allowed, (name, deps - allowed)
  for name in [n for n in graph if _inside(n, 'dlresearch.kernels')]:  # a leaf
    assert all(_inside(d, 'dlresearch.kernels') for d in graph[name]), name
  for name in [n for n in graph if n.startswith('dlresearch.config')]:
    assert all(d.startswith('dlresearch.config.') for d in graph[name]), name


# The rooms the engine never imports, and the old command paths
# (``python -m dlresearch.export|runs``) that re-export tools.
WINGS = ('dlresearch.apps', 'dlresearch.rai', 'dlresearch.tools')
TOOL_SHIMS = TOOLS_AT_TOP


def _inside(module: str, package: str) -> bool:
  return module == package or module.startswith(package + '.')


def breaches(graph: dict[str, set[str]], importers, forbidden
             ) -> dict[str, list[str]]:
  """{module: the forbidden modules it imports} over ``importers(module)``."""
  out = {}
  for name, deps in graph.items():
    if importers(name):
      bad = sorted(d for d in deps if forbidden(d))
      if bad:
        out[name] = bad
  return out


def _engine(module: str) -> bool:
  return module not in TOOL_SHIMS and not any(_inside(module, w)
                                              for w in WINGS)


def _rai_or_tools(module: str) -> bool:
  return (module in TOOL_SHIMS or _inside(module, 'dlresearch.rai')
          or _inside(module, 'dlresearch.tools'))


def test_engine_never_imports_rai_or_tools():
  assert breaches(import_graph(), _engine, _rai_or_tools) == {}


def test_rai_imports_neither_tools_nor_apps():
  graph = import_graph()
  bad = breaches(graph, lambda m: _inside(m, 'dlresearch.rai'),
                 lambda d: d in TOOL_SHIMS or _inside(d, 'dlresearch.tools')
                 or _inside(d, 'dlresearch.apps'))
  assert bad == {}
  assert any(_inside(m, 'dlresearch.rai') for m in graph)  # not vacuous


def test_the_rai_and_tools_wall_fails_on_a_violation(tmp_path):
  """A copy of the package whose tasks.py imports audit again (as before
  GroupMetrics) and whose plot.py imports a tool: both are caught."""
  pkg = tmp_path / 'dlresearch'
  for rel in ('__init__.py', 'rai/__init__.py', 'rai/audit.py',
              'tools/__init__.py', 'tools/runs.py', 'plot.py'):
    (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
    (pkg / rel).write_text((PKG / rel).read_text())
  (pkg / 'tasks.py').write_text('from dlresearch.rai import audit\n')
  (pkg / 'plot.py').write_text((PKG / 'plot.py').read_text()
                               + '\nfrom dlresearch.tools import runs\n')
  assert breaches(import_graph(pkg), _engine, _rai_or_tools) == {
      'dlresearch.plot': ['dlresearch.tools', 'dlresearch.tools.runs'],
      'dlresearch.tasks': ['dlresearch.rai', 'dlresearch.rai.audit'],
  }


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
          'dlresearch.tools.export', 'dlresearch.export'},
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
      'dlresearch.apps.anomaly.problem -> dlresearch.export (an app never '
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
