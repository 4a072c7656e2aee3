"""``make demo-drift-prefect``: the drift demo, with detection and retraining through Prefect.

The same repository copy, small params and traffic as ``make demo-drift`` (:mod:`monitoring.demo`),
but nothing calls retraining directly:

1. ``dvc repro`` trains on period A (champion v1); the champion is served by Ray Serve;
2. a private Prefect server starts in ``<demo repo>/.prefect`` (with its services, so triggers fire),
   and ``python -m flows.serve_all --only retrain`` serves the ``retrain`` deployment with its trigger;
3. after each traffic window the ``monitor`` flow runs; on the confirmed breach it emits
   ``model.drift.detected``, the server's trigger creates a ``retrain`` run, the served process runs it
   (snapshot of the labelled rows, the ``training`` flow, the gate), and the demo waits for that run;
4. before/after accuracy on fresh period-B and period-A data, as in the plain demo.

Point a browser at the printed UI address while it runs to watch the runs, the event and the artifacts.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.errors import PipelineError

RETRAIN = "retrain/retrain"


def main(
    workdir: Annotated[
        Optional[Path], typer.Option(help="where to build the demo repo (default: a new temp dir)")
    ] = None,
    in_process: Annotated[bool, typer.Option(help="skip Ray Serve; log predictions in-process")] = False,
    port: Annotated[Optional[int], typer.Option(help="Prefect server/UI port (default: a free one)")] = None,
    retrain_timeout_s: Annotated[float, typer.Option(help="wait this long for the triggered retrain run")] = 1800,
) -> None:
    """Drift demo through Prefect: the monitor flow's event triggers the retrain deployment by itself."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.local import local_server, serving, wait_for_deployment, wait_for_run
    from flows.monitor import MonitorOptions, monitor
    from monitoring import demo
    from monitoring import demo_traffic as traffic
    from pipelines.config import load_params

    t0 = time.time()
    repo = demo.make_repo(workdir or Path(tempfile.mkdtemp(prefix="demo-drift-prefect-")), extra=("flows",))
    os.chdir(repo)
    print(f"[demo] repository copy: {repo}\n[demo] 1/4 train on period A: dvc repro ...", flush=True)
    demo.train_period_a()
    params = load_params(Path("params.yaml"))
    home = repo / ".prefect"
    with local_server(home, port, ui=True) as api, temporary_settings(updates={PREFECT_API_URL: api}):
        ui = api.removesuffix("/api")
        print(
            f"[demo] 2/4 Prefect UI {ui} (open it to watch); serving the retrain deployment with its drift trigger",
            flush=True,
        )
        with serving(repo, home, api, ["retrain"]) as (served, log):
            deployment = wait_for_deployment(RETRAIN, served, log)
            sender = traffic.Sender(params, in_process)
            try:
                print(f"[demo] 3/4 traffic {sender.mode}; after each window the monitor flow runs", flush=True)
                windows = [("A", 101)] + [("B", 200 + i) for i in range(params.monitor.persistence)]
                for period, seed in windows:
                    sender.send(traffic.period(params.monitor.window_size, seed, drift=period == "B"))
                    print(f"\n[demo] period {period} window (seed {seed}) sent; the monitor flow's pass:", flush=True)
                    summary = monitor(MonitorOptions())  # logs its own summary (the checks table)
                    if summary.get("event_id"):
                        print(
                            f"[demo] event model.drift.detected ({summary['event_id']}) emitted; no one calls "
                            "retrain: waiting for the run the trigger creates ...",
                            flush=True,
                        )
                        run = wait_for_run(deployment.id, log, retrain_timeout_s, show="[demo]   retrain")
                        print(
                            f"[demo] retrain run '{run.name}' (parameters {run.parameters}) ended {run.state.name}",
                            flush=True,
                        )
                        if not run.state.is_completed():
                            raise PipelineError(f"the retrain run failed: {run.state.message}; log: {log}")
                        break
                else:
                    print("[demo] no confirmed breach: the trigger had nothing to do", flush=True)
                print(
                    "\n[demo] 4/4 accuracy on NEW period-B data (seed 999) and new period-A data (seed 998):",
                    flush=True,
                )
                print(traffic.before_after(params), flush=True)
            finally:
                sender.close()
    print(
        f"\n[demo] Prefect database and logs: {home}; MLflow: {repo / 'mlflow.db'}\n"
        f"[demo] done in {time.time() - t0:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    from pipelines.errors import run_cli

    run_cli(main)
