r"""Fairness audit of a trained run's predictions, or of any system's
existing scores, by group.

    python -m experiments.audit --workdir=runs/adult --group_key=sex
    python -m experiments.audit --workdir=runs/adult --group_key=sex,race \
        --out=runs/adult/audit_sex_race
    python -m experiments.audit --dataset=compas --score_column=decile_score \
        --threshold=5 --group_key=race --out=runs/compas_score_audit
    python -m experiments.audit --predictions=FILE.csv --label_column=label \
        --score_column=score --group_key=group --out=DIR

The tool, its flags and its files: ``dlresearch/tools/audit.py``
(``--help``).
"""

from dlresearch.tools import audit, entry

if __name__ == '__main__':
  entry.main(audit)
