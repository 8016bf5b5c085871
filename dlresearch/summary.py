"""The model summary printed at the start of a run (``model_summary.txt``).

Layers with their output shapes and parameter counts (flax's ``tabulate``
over ``jax.eval_shape``: nothing is computed), the total parameter count
and bytes, the optimizer and EMA state bytes, and what XLA says about the
compiled train step: FLOPs per step (its cost analysis) and the memory of
its temporaries (activations and workspace) and arguments.
"""

import os

import jax
import numpy as np

SUMMARY_FILE = 'model_summary.txt'


def _bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree) if hasattr(x, 'shape')))


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)
                 if hasattr(x, 'shape')))


def human(n: float, unit: str = '') -> str:
  """1234567 -> '1.23M' (B for bytes uses powers of 1024)."""
  base = 1024.0 if unit == 'B' else 1000.0
  for prefix in ('', 'K', 'M', 'G', 'T', 'P'):
    if abs(n) < base or prefix == 'P':
      return f'{n:.3g}{prefix}{unit}' if prefix else f'{n:.0f}{unit}'
    n /= base
  return f'{n}{unit}'


def layer_table(model, args, kwargs, depth: int = 2) -> str:
  """flax's layer table (outputs and parameters per module), as text."""
  try:
    return model.tabulate(
        jax.random.PRNGKey(0), *args, train=False, depth=depth,
        console_kwargs={'width': 120, 'force_terminal': False,
                        'no_color': True}, **kwargs)
  except Exception as e:  # pylint: disable=broad-exception-caught
    return f'(no layer table: {type(e).__name__}: {e})\n'


def compiled_costs(compiled) -> dict:
  """FLOPs and memory of a compiled XLA program (``jit(...).lower().compile()``)."""
  out = {}
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    if cost and cost.get('flops', -1) >= 0:
      out['flops'] = float(cost['flops'])
  except Exception:  # pylint: disable=broad-exception-caught
    pass
  try:
    mem = compiled.memory_analysis()
    if mem is not None:
      out['temp_bytes'] = int(mem.temp_size_in_bytes)
      out['argument_bytes'] = int(mem.argument_size_in_bytes)
  except Exception:  # pylint: disable=broad-exception-caught
    pass
  return out


def summary(model, args, kwargs, state, compiled=None,
            batch_size: int | None = None) -> str:
  """The text of the summary. ``state`` may be abstract; ``compiled`` is the
  ahead-of-time compiled train step (or None)."""
  lines = [f'Model summary: {type(model).__name__}', '',
           layer_table(model, args, kwargs).rstrip(), '']
  params = _count(state.params)
  lines.append(f'parameters: {params:,} ({human(_bytes(state.params), "B")})')
  lines.append(f'optimizer state: {human(_bytes(state.opt_state), "B")}')
  if getattr(state, 'ema_params', None) is not None:
    lines.append(f'EMA params: {human(_bytes(state.ema_params), "B")}')
  model_state = _bytes(state.model_state)
  if model_state:
    lines.append(f'model state (e.g. batch statistics): {human(model_state, "B")}')
  costs = compiled_costs(compiled) if compiled is not None else {}
  devices = jax.device_count()
  if 'flops' in costs:
    per = f' (batch {batch_size})' if batch_size else ''
    lines.append(f'train step FLOPs (XLA cost analysis, per device program, '
                 f'{devices} device{"s" if devices > 1 else ""}){per}: '
                 f'{human(costs["flops"])}')
    if batch_size:
      lines.append(f'  = {human(costs["flops"] * devices / batch_size)} FLOPs '
                   'per training example (forward + backward + update)')
  if 'temp_bytes' in costs:
    lines.append(f'train step temporaries (activations, workspace) per '
                 f'device: {human(costs["temp_bytes"], "B")}; arguments: '
                 f'{human(costs["argument_bytes"], "B")}')
  if not costs:
    lines.append('train step FLOPs/memory: not available from XLA here')
  return '\n'.join(lines) + '\n'


def write(workdir: str, text: str) -> str:
  path = os.path.join(workdir, SUMMARY_FILE)
  os.makedirs(workdir, exist_ok=True)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(path + '.tmp', path)
  return path
