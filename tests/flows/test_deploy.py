"""deploy and promote flows for real: a local Ray head node, the Serve app, a promotion, a hot swap, a rollback.

Prefect's test harness runs the flows; the registry is a temp SQLite store with two tiny scikit-learn
versions. ``deploy`` starts ``ray start --head`` on 127.0.0.1 (no cluster is running) and serves the
champion; ``promote`` moves the alias, the replica follows it (``serve.watch_interval_s: 1``) and the
answers name the new version; a second ``deploy`` updates the running app in place; ``rollback`` returns.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from pipelines.io import free_port
from tests.helpers.flows import register, split

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    from prefect.testing.utilities import prefect_test_harness

    if (
        subprocess.run([RAY, "status"], capture_output=True, env={"RAY_AUTH_MODE": "disabled", "PATH": ""}).returncode
        == 0
    ):
        pytest.skip("a Ray cluster is already running here: the deploy flow would use it")
    tmp = tmp_path_factory.mktemp("deploy")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.chdir(tmp)
    (tmp / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "mlflow": {
                    "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
                    "artifact_root": str(tmp / "art"),
                    "experiment": "t",
                    "registered_model": "tiny",
                },
                "serve": {
                    "port": free_port(),
                    "watch_interval_s": 1,
                    "log_dir": str(tmp / "production"),
                    "replica_cpus": 0.5,
                },
            }
        )
    )
    try:
        with prefect_test_harness(server_startup_timeout=90):
            yield tmp
    finally:
        import ray

        if ray.is_initialized():
            from serving.app import stop_local

            stop_local()
        subprocess.run([RAY, "stop", "--force"], capture_output=True)
        mp.undo()


def versions_answering(url: str, seconds: float) -> set[str]:
    seen, deadline = set(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = requests.post(f"{url}/predict", json={"texts": ["my invoice was charged twice"]}, timeout=30)
        assert r.status_code == 200, r.text
        seen.add(r.json()["model_version"])
    return seen


def test_deploy_serves_the_champion_and_follows_promotion_and_rollback(project):
    from flows.deploy import DeployOptions, deploy
    from flows.promote import PromoteOptions, promote
    from pipelines.classifier.gate import run_classifier_gate
    from pipelines.config import load_params
    from pipelines.registry import tracking

    params = load_params()
    train, test = split(200, 0), split(80, 1)
    reg = tracking.Registry(params.mlflow)
    good = make_pipeline(TfidfVectorizer(), LogisticRegression(C=10)).fit(train.text, train.label)
    v1 = register(params, good, "good", test)
    run_classifier_gate(reg, test, params.register_)
    assert reg.alias("champion") == v1

    first = deploy(DeployOptions(wait_ready_s=240))
    url = first["url"]
    assert first["version"] == v1 and url.startswith("http://127.0.0.1:")
    r = requests.post(
        f"{url}/predict", json={"texts": ["my invoice was charged twice", "where is my parcel"]}, timeout=30
    )
    assert r.status_code == 200 and r.json()["model_version"] == v1
    expected = good.predict(["my invoice was charged twice", "where is my parcel"]).tolist()
    assert [p["label"] for p in r.json()["predictions"]] == expected

    majority = DummyClassifier(strategy="most_frequent").fit(pd.DataFrame({"x": range(len(train))}), train.label)
    v2 = register(params, majority, "majority", test)
    moved = promote(PromoteOptions(version=v2))
    assert (moved["champion_before"], moved["champion_after"]) == (v1, v2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and versions_answering(url, 1) != {v2}:
        pass
    assert versions_answering(url, 2) == {v2}, "the replica did not follow the promotion within 60 s"

    again = deploy(DeployOptions(wait_ready_s=240))  # updates the running app in place
    assert again == {"url": url, "version": v2}
    assert versions_answering(url, 1) == {v2}

    back = promote(PromoteOptions(rollback=True))
    assert back["champion_after"] == v1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and versions_answering(url, 1) != {v1}:
        pass
    assert versions_answering(url, 2) == {v1}


def test_promote_refuses_two_actions_and_an_unknown_version(project):
    from flows.promote import PromoteOptions, promote

    with pytest.raises(ValueError, match="version and rollback"):
        PromoteOptions(version="1", rollback=True)
    with pytest.raises(Exception, match="99"):
        promote(PromoteOptions(version="99"))
