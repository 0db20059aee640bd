"""Optuna studies around training: alpha, injection layer, architecture, learning rate,
dropout; pruned on per-epoch validation AUC; every trial a nested MLflow run.

The search space is static, so every trial suggests every parameter (alpha too, even
where the injection layer would make it moot) and Optuna's samplers and importance
analysis see one fixed space. Parameters are named by the config key they set:

* ``model.arch``: categorical over ``tune.archs``;
* ``model.loc``: categorical over ``tune.injections``;
* ``model.alpha``: log-uniform in [``tune.alpha_low``, ``tune.alpha_high``];
* ``train.learning_rate``: log-uniform in [``tune.learning_rate_low``, ``..._high``];
* ``model.dropout_rate``: uniform in [``tune.dropout_low``, ``tune.dropout_high``];

so the best trial is reproduced with ``wmh train --set model.alpha=... --set ...``.

Storage: by default a journal file ``<data.cache_dir>/optuna/journal.log`` (one machine;
several ``wmh tune`` processes may share it). ``tune.storage`` (``--storage``) takes a
``postgresql://user:password@host:port/database`` URL to share one study between processes
on several machines (``sqlite:///file.db`` also works, on one machine).

``tune.n_trials`` is the total number of trials the *study* should hold, in any state
(complete, pruned, failed), not a number per call: each worker claims the next trial
under a lock (a PostgreSQL advisory lock, or a file lock beside a local store), so
workers together stop at exactly ``n_trials``, and running ``wmh tune`` again with the
same ``--study`` resumes the study and only adds what is missing (raise ``--n-trials``
to extend it).

Failures: a trial whose training raises (NaN loss, any exception) is recorded as FAIL
with its reason in the trial's ``fail_reason`` attribute, and the study goes on. Finished
trials are committed to the storage when they finish, so killing a worker loses nothing
but the trial it was running: with an RDB storage the heartbeat marks that trial failed
after ``2 x tune.heartbeat_seconds``; with the journal file the next worker on the same
machine marks trials of workers that no longer exist as failed.

MLflow: each ``wmh tune`` process opens a parent run (tags ``optuna.study``,
``optuna.storage``, ``optuna.worker``) and each trial it runs is a run nested under it
(``trial-<number>``). Two workers on one study therefore give two parent runs with the
same ``optuna.study`` tag; each trial records its own MLflow run id and its parent's in the
trial's user attributes (``mlflow_run_id``, ``mlflow_parent_run_id``). When a worker
finishes it logs the study's best trial so far (``best.<param>`` params, ``best_value``)
and Optuna's figures of the whole study (``figures/optimization_history.png``,
``figures/param_importances.png`` from two completed trials on,
``figures/intermediate_values.png``) to its parent run.

The package, one job per module (each imports only those above it in this list):

- :mod:`~wmh.tune.space`: the static search space, the checks of ``tune.*`` settings, the
  suggestions of a trial and the space a study records;
- :mod:`~wmh.tune.storage`: Optuna storages (journal file, PostgreSQL, SQLite), the
  claim locks and the trials of dead workers;
- :mod:`~wmh.tune.trial`: one trial: its callbacks (pruning, run recording) and its
  objective, a nested training run;
- :mod:`~wmh.tune.study`: a worker's part of the study (:func:`~wmh.tune.study.tune`), the
  summary and what the parent run logs.

:func:`tune`, :func:`format_summary` and :class:`TuneSummary` are importable from here.
"""

from wmh.tune.study import TuneSummary, format_summary, tune

__all__ = ["TuneSummary", "format_summary", "tune"]
