r"""Fairness audit of a trained run's predictions, by group.

    python -m experiments.audit --workdir=runs/adult --group_key=sex
    python -m experiments.audit --workdir=runs/adult --group_key=sex,race \
        --out=runs/adult/audit_sex_race

The tool, its flags and its files: ``dlresearch/tools/audit.py``
(``--help``).
"""

from dlresearch.tools import audit, entry

if __name__ == '__main__':
  entry.main(audit)
