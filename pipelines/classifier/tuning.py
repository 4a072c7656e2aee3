"""Hyperparameter search for the finetune stage on Ray Tune: the one module that imports ``ray.tune``.

The search space, budget and resources come from ``params.yaml: tune`` (:class:`pipelines.config.TuneConfig`);
every finetune key that is not searched keeps its ``finetune`` value. The first trial is the current ``finetune``
configuration, so the search also says whether it beats what params already has.

**One implementation.** A trial trains with the finetune stage's own code: it joins a one-rank process group
(world size 1, gloo on a free loopback port) and runs :func:`pipelines.classifier.finetune_worker.build_session`
and :func:`~pipelines.classifier.finetune_worker.run_epochs` through the same DeepSpeed engine
(:mod:`pipelines.training.engine`). The alternative, the same loop over a plain torch optimizer, would score a
different recipe: the stage's learning rates mean DeepSpeed's warm-up/decay schedule, its per-group peaks for the
head, bf16 where the CPU has it and gradient clipping, and a search must rank configurations the way the stage
will train them. DeepSpeed in-process needs only the ``torch.distributed`` environment, which a trial sets for
itself, and each trial runs in a fresh Ray worker process (``reuse_actors=False``), so no state crosses trials.

After each epoch a trial reports its validation macro-F1 (and loss, speed) to Tune; ASHA stops the weak ones.
The driver, not the trials, writes MLflow (:class:`TrialRuns`): one parent run, one child run per trial with its
configuration and per-epoch curves. Only the driver needs the tracking store, so the same search runs on a
Ray cluster whose workers cannot see it, and the trials need only the data, which the driver ships to them.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pandas as pd

from pipelines.config import FinetuneConfig, Params, TuneConfig
from pipelines.errors import ConfigError, PipelineError
from pipelines.io import free_port
from pipelines.registry import tracking

METRIC = "val_macro_f1"
REPORTED = ("train_loss", "val_macro_f1", "samples_per_s", "epoch_seconds")


# --------------------------------------------------------------------------- search space
def search_space(cfg: TuneConfig) -> dict[str, Any]:
    """``tune.search_space`` as Ray Tune domains."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, dim in cfg.search_space.items():
        if dim.loguniform is not None:
            space[key] = tune.loguniform(*dim.loguniform)
        elif dim.uniform is not None:
            space[key] = tune.uniform(*dim.uniform)
        else:
            space[key] = tune.choice(list(dim.choice))
    return space


def current_point(p: Params) -> dict[str, Any]:
    """The ``finetune`` section's own values of the searched keys: the first trial.

    A null head rate means the adapters' rate, and is given as that number (Tune compares a preset with the
    range); any other null is left for Tune to sample."""
    point = {k: getattr(p.finetune, k) for k in p.tune.search_space}
    if "head_learning_rate" in point and point["head_learning_rate"] is None:
        point["head_learning_rate"] = p.finetune.learning_rate
    return {k: v for k, v in point.items() if v is not None}


def max_epochs(p: Params) -> int:
    """The most epochs any trial can run (ASHA's ``max_t``)."""
    dim = p.tune.search_space.get("epochs")
    return max([p.finetune.epochs, *(dim.values() if dim else [])])


def trial_finetune(finetune: FinetuneConfig, sampled: dict[str, Any]) -> FinetuneConfig:
    """A trial's finetune configuration: the params section with the sampled values, as one in-process rank."""
    return FinetuneConfig.model_validate(
        {**finetune.model_dump(), **sampled, "world_size": 1, "num_nodes": 1, "hostfile": None}
    )


def check(p: Params) -> None:
    """:class:`ConfigError` for a search that cannot run as configured, before Ray starts."""
    cfg = p.tune
    if cfg.grace_period > max_epochs(p):
        raise ConfigError(
            f"tune.grace_period is {cfg.grace_period} but a trial runs at most {max_epochs(p)} epoch(s) "
            "(finetune.epochs, tune.search_space.epochs): lower it"
        )


# --------------------------------------------------------------------------- one trial (in a Ray worker)
def join_as_single_rank(cpus: float, gpus: float):
    """This process becomes rank 0 of a one-rank group (the trial's own; a free port on loopback)."""
    import torch

    from pipelines.training import ranks

    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )  # fmt: skip
    if not (gpus and torch.cuda.is_available()):
        os.environ["DS_ACCELERATOR"] = "cpu"
    me = ranks.start()
    if me.accelerator == "cpu":
        torch.set_num_threads(max(1, int(cpus)))
    return me


def run_trial(
    config: dict[str, Any],
    *,
    finetune: dict[str, Any],
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    cpus: float,
    gpus: float,
) -> None:
    """Ray Tune function trainable: train the sampled ``config`` with the stage's loop, report every epoch."""
    import torch.distributed as dist
    from ray import tune

    from pipelines.classifier.base_model import resolve_base_model
    from pipelines.classifier.finetune_worker import build_session, new_state, run_epochs

    cfg = trial_finetune(FinetuneConfig.model_validate(finetune), config)
    me = join_as_single_rank(cpus, gpus)
    try:
        session = build_session(cfg, me, train_df, val_df, resolve_base_model(cfg.base_model))
        state = new_state()

        def report(record: dict, improved: bool) -> None:
            tune.report({**record, "best_val_macro_f1": state["best_f1"], "planned_epochs": cfg.epochs})

        run_epochs(session, state, report, progress=False)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the driver
def _short(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


class TrialRuns:
    """Driver-side Tune callback (made a ``ray.tune.Callback`` by :func:`trial_runs`): an MLflow child run per
    trial (under the active parent), a line per epoch.

    A child run is reopened for each epoch's metrics (the fluent MLflow API holds one active run at a time and
    trials interleave); a trial that fails ends its run FAILED."""

    def __init__(self, parent_run_id: str, out=sys.stdout) -> None:
        self.parent = parent_run_id
        self.out = out
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.number: dict[str, int] = {}
        self.configs: dict[str, dict] = {}
        self.history: dict[str, list[dict]] = {}
        self.errors: dict[str, str] = {}

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        tid = trial.trial_id
        self.number[tid] = _trial_number(tid, len(self.number) + 1)
        self.configs[tid] = dict(trial.config)
        self.history[tid] = []
        tags = {"mlflow.parentRunId": self.parent, "tune.trial_id": tid, "tune.trial": str(self.number[tid])}
        name = f"trial-{self.number[tid]}"
        with tracking.run(name, "tune", params=self.configs[tid], tags=tags, nested=True) as child:
            self.runs[tid] = child.info.run_id
        self._say(f"trial {self.number[tid]} started: {_short(self.configs[tid])}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
        tid = trial.trial_id
        record = {k: result[k] for k in ("epoch", "step", "planned_epochs", *REPORTED) if k in result}
        self.history[tid].append(record)
        with tracking.run("", "tune", run_id=self.runs[tid], nested=True):
            tracking.log_metrics({k: record[k] for k in REPORTED if k in record}, step=record.get("epoch"))
        self._say(
            f"trial {self.number[tid]} epoch {record.get('epoch')}/{record.get('planned_epochs')}: "
            f"val macro-F1 {record.get(METRIC, float('nan')):.4f}, loss {record.get('train_loss', float('nan')):.4f}"
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        tid = trial.trial_id
        rows = self.history.get(tid, [])
        if not rows:
            return
        best = max(r[METRIC] for r in rows)
        with tracking.run("", "tune", run_id=self.runs[tid], nested=True):
            tracking.log_metrics({"best_val_macro_f1": best, "epochs_run": len(rows)})
        planned = rows[-1].get("planned_epochs", len(rows))
        how = "" if len(rows) >= planned else " (stopped early)"
        self._say(f"trial {self.number[tid]} done after {len(rows)} epoch(s){how}: best val macro-F1 {best:.4f}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        tid = trial.trial_id
        self.errors[tid] = str(getattr(trial, "error_file", "") or "failed")
        if tid in self.runs:
            try:  # leaving the block by an exception ends the run FAILED
                with tracking.run("", "tune", run_id=self.runs[tid], nested=True):
                    raise _TrialFailed
            except _TrialFailed:
                pass
        self._say(f"trial {self.number.get(tid, '?')} failed (see the error below)")

    def table(self) -> pd.DataFrame:
        """One row per trial: its configuration, epochs run, best val macro-F1 and its epoch, MLflow run."""
        rows = []
        for tid, n in self.number.items():
            hist = self.history.get(tid, [])
            best = max(hist, key=lambda r: r[METRIC]) if hist else {}
            rows.append(
                {
                    "trial": n,
                    **self.configs[tid],
                    "epochs_run": len(hist),
                    "best_epoch": best.get("epoch"),
                    "best_val_macro_f1": best.get(METRIC),
                    "status": _status(hist, tid in self.errors),
                    "mlflow_run_id": self.runs.get(tid),
                }
            )
        return pd.DataFrame(rows)


def _status(history: list[dict], failed: bool) -> str:
    """error | no result (stopped before its first epoch: the time budget) | stopped early (ASHA, early stopping
    or the budget) | done."""
    if failed:
        return "error"
    if not history:
        return "no result"
    return "stopped early" if len(history) < history[-1].get("planned_epochs", 0) else "done"


def _trial_number(trial_id: str, fallback: int) -> int:
    """1 for the first trial Tune created (the current params), 2 for the next...: ids end in ``_00000``, ..."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) + 1 if tail.isdigit() else fallback


class _TrialFailed(Exception):
    pass


def _best_of(runs: TrialRuns, trial_id: str | None) -> float | None:
    rows = runs.history.get(trial_id, []) if trial_id else []
    return max(r[METRIC] for r in rows) if rows else None


def _quiet_tune() -> None:
    """Our own line per trial epoch replaces Tune's tables; its notices about files in a temporary folder, and
    about the current configuration's values lying outside a searched choice (they may), are dropped."""
    import logging

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the engine that honours verbose=0
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    logging.getLogger("ray.tune.search.variant_generator").setLevel(logging.ERROR)


def trial_runs(parent_run_id: str) -> TrialRuns:
    """A :class:`TrialRuns` that is a ``ray.tune.Callback`` (Ray is imported only once :func:`start_ray` has
    chosen how: this module imports it nowhere at the top)."""
    from ray.tune import Callback

    return type("TrialRunsCallback", (TrialRuns, Callback), {})(parent_run_id)


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_ray(cfg: TuneConfig) -> str:
    """Connect to the cluster at ``RAY_ADDRESS`` (or ``tune.ray_address``), else start an embedded Ray that
    listens on 127.0.0.1 only. Returns where the search runs."""
    address = os.environ.get("RAY_ADDRESS") or cfg.ray_address
    if not address:
        # Ray publishes its node address from the network interface unless told otherwise; this setting (named
        # for laptops) makes it use and bind the loopback address: nothing of the embedded instance listens
        # outside. Ray reads it when first imported, hence no Ray import at the top of this module.
        os.environ.setdefault(LOOPBACK_ENV, "0")
    import ray

    if ray.is_initialized():
        return "the Ray instance of this process"
    if address and address.startswith("ray://"):
        raise ConfigError(
            f"RAY_ADDRESS={address}: Ray Client runs Tune's driver, which writes MLflow, on the head node; run the "
            "search there (RAY_ADDRESS=auto)"
        )
    if address:
        ray.init(address=address, log_to_driver=False)
        return f"the Ray cluster at {address}"
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    node = ray.nodes()[0]["NodeManagerAddress"]
    if node != "127.0.0.1":
        print(f"warning: the embedded Ray uses the address {node} (Ray was imported before {LOOPBACK_ENV} was set)")
    return f"an embedded Ray on {node} ({os.cpu_count()} CPUs)"


def check_resources(cfg: TuneConfig) -> None:
    """:class:`ConfigError` when one trial asks for more than the cluster has (Tune would wait for ever)."""
    import ray

    have = ray.cluster_resources()
    for key, want in (("cpus_per_trial", cfg.cpus_per_trial), ("gpus_per_trial", cfg.gpus_per_trial)):
        unit = "CPU" if key.startswith("cpu") else "GPU"
        if want > have.get(unit, 0):
            raise ConfigError(f"tune.{key} is {want:g} but the Ray cluster has {have.get(unit, 0):g} {unit}(s)")


def search(p: Params, train_df: pd.DataFrame, val_df: pd.DataFrame, storage: str) -> dict[str, Any]:
    """Run the search (Ray started or joined, trials as MLflow children of one parent run); return the results.

    ``train_df``/``val_df``: the trial rows (already capped); ``storage``: an absolute folder for Tune's own files.
    Returns ``{"best", "current", "table", "history", "parent_run_id", "where", "seconds"}``;
    :class:`PipelineError` when no trial reported a result."""
    cfg = p.tune
    check(p)
    _quiet_tune()
    tracking.setup(p.mlflow)
    where = start_ray(cfg)  # first: it decides how Ray is imported
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    try:
        check_resources(cfg)
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial,
                finetune=p.finetune.model_dump(),
                train_df=train_df,
                val_df=val_df,
                cpus=cfg.cpus_per_trial,
                gpus=cfg.gpus_per_trial,
            ),
            {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial},
        )
        logged = {"tune": cfg.model_dump(), "finetune": p.finetune.model_dump(), "train_rows": len(train_df)}
        t0 = time.perf_counter()
        with tracking.run("tune-finetune", "tune", params={**logged, "val_rows": len(val_df)}) as parent:
            runs = trial_runs(parent.info.run_id)
            tuner = tune.Tuner(
                trainable,
                param_space=search_space(cfg),
                tune_config=tune.TuneConfig(
                    metric=METRIC,
                    mode="max",
                    search_alg=BasicVariantGenerator(
                        points_to_evaluate=[current_point(p)],  # the first trial: what params has now
                        max_concurrent=cfg.max_concurrent_trials,  # (Tune ignores TuneConfig's for this searcher)
                        random_state=cfg.seed,
                    ),
                    scheduler=ASHAScheduler(
                        time_attr="training_iteration",
                        max_t=max_epochs(p),
                        grace_period=cfg.grace_period,
                        reduction_factor=cfg.reduction_factor,
                    ),
                    num_samples=cfg.num_samples,
                    time_budget_s=cfg.time_budget_s,
                    reuse_actors=False,  # a fresh process per trial: its own process group and DeepSpeed state
                ),
                run_config=tune.RunConfig(name="finetune-search", storage_path=storage, verbose=0, callbacks=[runs]),
            )
            grid = tuner.fit()
            table = runs.table()
            scored = table.dropna(subset=["best_val_macro_f1"])
            if scored.empty:
                first = next((r.error for r in grid if r.error is not None), None)
                raise PipelineError(f"no trial reported a validation score; first error: {first}")
            top = scored.loc[scored["best_val_macro_f1"].idxmax()]
            tracking.log_metrics({"best_val_macro_f1": float(top["best_val_macro_f1"]), "trials": len(table)})
        for r in grid:
            if r.error is not None:
                print(f"a trial failed: {r.error}", file=sys.stderr)
        by_number = {n: tid for tid, n in runs.number.items()}
        point = current_point(p)
        current = next((n for tid, n in runs.number.items() if runs.configs[tid] == point), None)
        return {
            "best": {
                "trial": int(top["trial"]),
                "config": runs.configs[by_number[int(top["trial"])]],
                "val_macro_f1": float(top["best_val_macro_f1"]),
                "epoch": int(top["best_epoch"]),
                "mlflow_run_id": top["mlflow_run_id"],
            },
            "current": {"trial": current, "config": point, "val_macro_f1": _best_of(runs, by_number.get(current))},
            "table": table,
            "history": {runs.number[t]: h for t, h in runs.history.items()},
            "parent_run_id": parent.info.run_id,
            "where": where,
            "seconds": time.perf_counter() - t0,
        }
    finally:
        ray.shutdown()
