"""The Ray Serve application: the only module that imports Ray.

``build(args)`` is the application builder used by ``serve run`` / ``serve deploy`` with
``serving/serve_config.yaml`` (``import_path: serving.app:build``); ``python -m serving.app``
(what ``make serve`` runs) starts a local Ray, deploys it on 127.0.0.1 and blocks until
Ctrl-C, then shuts down gracefully so the prediction log is flushed.

Each replica builds a :class:`~serving.service.ClassifierService` and the FastAPI app of
:mod:`serving.api` (the app's lifespan starts the batcher, the champion watcher and the
log writer, and stops them when Ray Serve shuts the replica down). The champion is loaded in
``params.yaml: evaluate.precision``, the precision the gate judged it in.

**The generative model** (``/v1``, OpenAI-compatible; :mod:`serving.llm`) is a second deployment of the same
application, ``llm`` (:class:`LLMDeployment`), reached from the classifier's ingress through a
``DeploymentHandle`` with ``stream=True``. Why two deployments rather than both models in one ingress: the LM
replica holds one continuous-batching engine whose model runs in its own thread; it must be exactly one per
replica with its own CPUs, concurrency limit (``serve_llm.max_ongoing_requests``, running + waiting) and
replica count, independent of the classifier's autoscaling (a second classifier replica must not load a second
LM). Streaming handles (Ray Serve 2.60) carry each token event to the ingress, and cancel the call when the
ingress's response is cancelled: a client that goes away aborts its generation in the engine. With
``llm.enabled`` or ``serve_llm.enabled`` false the ``llm`` deployment is not built and ``/v1`` answers 503; with
no generative champion registered it keeps looking for one (``/v1`` 503 with the reason meanwhile), and the
classifier serves either way.

**The API key** is resolved here, in the application builder (:func:`build_settings`: ``TICKETOPS_API_KEY``, else
``serve.api_key_file``, else ``serve.api_key``; :func:`serving.security.resolve_api_key`) and passed to every
replica inside its ``serve`` config; replicas never read it from their own environment, which under
``serve deploy`` is the cluster's and may lack the variable. The builder also refuses a non-loopback
``serve.host`` without a key (pass ``host`` in the config's ``args`` to mirror ``http_options.host``). **The key of
the prediction log's text hashes** travels the same way (``serve.hash_key_env``, else ``serve.hash_key_file``, else
``serve.hash_key``, else a random key drawn once per build), to the classifier's replicas and to the LM's, so a
text hashes the same in every replica and after a replica restarts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from ray import serve

from pipelines.classifier.model_api import PRECISIONS
from pipelines.config import MlflowConfig, Params, ServeConfig, ServeLlmConfig, load_params
from pipelines.errors import ConfigError
from pipelines.registry.tracking import tracking_uri
from serving.batching import ItemResult, QueueFull, predict_isolated
from serving.llm.openai_api import LocalBackend
from serving.security import check_bind, redact, resolve_api_key, resolve_hash_key
from serving.telemetry import ServiceMetrics

APP_NAME = "ticketops"
HEALTH_TIMEOUT_S = 2.0  # /readyz waits this long for the LM replica's health
log = logging.getLogger(__name__)


class ServeBatchRunner:
    """``batching: serve_batch``: Ray's ``@serve.batch`` (per text, wait timeout) for comparison with ours."""

    def __init__(self, cfg: ServeConfig, metrics: ServiceMetrics) -> None:
        self.max_queue, self.metrics, self._waiting = cfg.max_queue, metrics, 0
        ServeBatchRunner._batched.set_max_batch_size(cfg.max_batch_size)
        ServeBatchRunner._batched.set_batch_wait_timeout_s(cfg.serve_batch_wait_ms / 1000)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def depth(self) -> int:
        return self._waiting

    async def submit(self, texts: list[str], model: Any) -> list[ItemResult]:
        if self._waiting + len(texts) > self.max_queue:
            raise QueueFull(f"queue full ({self._waiting} texts waiting, limit {self.max_queue})")
        self._waiting += len(texts)
        try:
            return list(await asyncio.gather(*(self._batched((t, model)) for t in texts)))
        finally:
            self._waiting -= len(texts)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[tuple[str, Any]]) -> list[ItemResult]:
        out: list[ItemResult | None] = [None] * len(items)
        for model in {id(m): m for _, m in items}.values():  # a swap may leave two versions in one batch
            idx = [i for i, (_, m) in enumerate(items) if m is model]
            start = time.perf_counter()
            rows = await asyncio.to_thread(predict_isolated, model, [items[i][0] for i in idx])
            self.metrics.observe_batch(len(idx), time.perf_counter() - start)
            for j, i in enumerate(idx):  # a text the model cannot take fails alone (its request), not the batch
                out[i] = rows[j] if isinstance(rows[j], BaseException) else ItemResult(rows[j], model, len(idx))
        return out  # type: ignore[return-value]


@serve.deployment(name="classifier", health_check_period_s=10, graceful_shutdown_timeout_s=30)
@serve.ingress()
class ClassifierDeployment:
    """One replica: loads the champion in the background, serves the FastAPI app of :mod:`serving.api`."""

    def __init__(
        self,
        serve_cfg: dict,
        mlflow_cfg: dict,
        project_dir: str,
        precision: str | None = None,
        llm: Any = None,
        llm_off_reason: str = "",
    ) -> None:
        from serving.model_source import ChampionSource
        from serving.service import ClassifierService, make_runner

        os.chdir(project_dir)  # relative paths in params (sqlite:///mlflow.db, data/production) mean the project
        cfg, mcfg = ServeConfig(**serve_cfg), MlflowConfig(**mlflow_cfg)
        metrics = ServiceMetrics()
        runner = ServeBatchRunner(cfg, metrics) if cfg.batching == "serve_batch" else make_runner(cfg, metrics)
        source = ChampionSource(mcfg, cfg.model_alias, cfg.torch_threads, precision)
        self.service = ClassifierService(cfg, source, runner=runner, metrics=metrics)
        self.llm, self.llm_off_reason = llm, llm_off_reason

    def __serve_build_asgi_app__(self) -> Any:
        from serving.api import build_app
        from serving.llm.openai_api import UnavailableBackend, attach

        app = build_app(self.service)
        backend = HandleBackend(self.llm) if self.llm is not None else UnavailableBackend(self.llm_off_reason)
        # the key the builder resolved (in the deployment's config), never this replica's environment
        return attach(app, backend, self.service.cfg.api_key, self.service.metrics, self.service.metrics.render)

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose batching loop died is restarted."""
        problem = self.service.fatal_problem()
        if problem:
            raise RuntimeError(problem)


class HandleBackend:
    """The ``/v1`` backend under Ray Serve: the :class:`LLMDeployment` through its handle (streaming)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.streaming = handle.options(stream=True)

    async def stream(self, call: dict) -> Any:
        gen = self.streaming.generate.remote(call)
        done = False
        try:
            async for event in gen:
                yield event
            done = True
        finally:
            if not done:
                gen.cancel()  # the client went away: Ray cancels the replica's generator, which aborts the request

    async def models(self) -> dict:
        return await self.handle.models.remote()

    async def feedback(self, body: dict) -> dict:
        return await self.handle.feedback.remote(body)

    async def metrics(self) -> bytes:
        return await self.handle.metrics.remote()

    async def health(self, timeout_s: float = HEALTH_TIMEOUT_S) -> str | None:
        """The LM replica's :meth:`~serving.llm.service.LLMService.problem`. A replica too busy to answer within
        ``timeout_s`` (or Ray's queue full) is not reported: load is not a fault, and Ray's own health check
        restarts a dead replica; one that cannot be reached at all is."""
        from ray.serve.exceptions import BackPressureError

        async def ask() -> str | None:
            return await self.handle.health.remote()

        try:
            return await asyncio.wait_for(ask(), timeout_s)
        except (asyncio.TimeoutError, BackPressureError):
            return None
        except Exception as err:  # noqa: BLE001 - e.g. the replica is dead or being restarted
            return f"the generative model's replica did not answer: {type(err).__name__}"


@serve.deployment(name="llm", health_check_period_s=10, graceful_shutdown_timeout_s=30)
class LLMDeployment(LocalBackend):
    """One LM replica: the generative champion in the continuous-batching engine (:mod:`serving.llm.service`).

    ``models``, ``feedback`` and ``metrics`` are :class:`~serving.llm.openai_api.LocalBackend`'s; ``generate`` is
    the async generator the ingress's streaming handle calls."""

    async def __init__(
        self,
        llm_cfg: dict,
        serve_cfg: dict,
        mlflow_cfg: dict,
        registered_model: str,
        system_template: str,
        project_dir: str,
    ) -> None:
        from serving.llm.service import LLMService
        from serving.llm.source import LMSource

        os.chdir(project_dir)
        cfg, scfg = ServeLlmConfig(**llm_cfg), ServeConfig(**serve_cfg)
        source = LMSource(MlflowConfig(**mlflow_cfg), registered_model, cfg.model_alias)
        self.service = LLMService(cfg, scfg, source, system_template=system_template)
        await self.service.start()  # the champion loads in the background; /v1 answers 503 until it is in

    async def generate(self, call: dict) -> Any:
        async for event in self.service.generate(call):
            yield event

    async def __del__(self) -> None:
        await self.service.stop()  # graceful: admitted requests finish, the generation log is flushed


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """Replicas, concurrency, a bounded Ray-side queue and CPUs from ``params.yaml: serve``."""
    return {
        "num_replicas": cfg.num_replicas,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": 4 * cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.replica_cpus},
    }


def build_settings(args: dict[str, Any] | None = None) -> tuple[ServeConfig, MlflowConfig, Path, str]:
    """What :func:`build` deploys: the serve config (``args`` overriding ``serve:`` keys; ``api_key`` resolved,
    see :func:`serving.security.resolve_api_key`, and ``hash_key``, :func:`serving.security.resolve_hash_key`, or a
    random one drawn here when none is set), the MLflow config, the project directory and the inference
    precision (``evaluate.precision``, the one the gate judged the champion in; ``args["precision"]`` overrides it,
    for measurements such as ``benchmarks/serving.py``). A non-loopback ``host`` without a key is a ConfigError."""
    args = dict(args or {})
    project_dir = Path(args.pop("project_dir", None) or os.getcwd()).resolve()
    params_path = Path(args.pop("params", "params.yaml"))
    params: Params = load_params(params_path if params_path.is_absolute() else project_dir / params_path)
    precision = args.pop("precision", None) or params.evaluate.precision
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cfg = params.serve.model_copy(update=args) if args else params.serve
    cfg = ServeConfig.model_validate(cfg.model_dump())  # re-validate overrides
    key = resolve_api_key(cfg.api_key, cfg.api_key_file, os.environ, project_dir)
    check_bind(cfg.host, key)
    if not key:
        log.warning("no API key (TICKETOPS_API_KEY, serve.api_key_file, serve.api_key): every route is open")
    hash_key = resolve_hash_key(cfg.hash_key, cfg.hash_key_file, cfg.hash_key_env, os.environ, project_dir)
    if not hash_key:
        hash_key = secrets.token_urlsafe(32)
        log.warning(
            "no hash key (%s, serve.hash_key_file, serve.hash_key): the log's text hashes use a random key of this "
            "deployment (the same in all its replicas; another deployment's hashes will not match)",
            cfg.hash_key_env,
        )
    cfg = ServeConfig.model_validate(
        {**cfg.model_dump(), "api_key": key, "api_key_file": None, "hash_key": hash_key, "hash_key_file": None}
    )
    mcfg = params.mlflow.model_copy(update={"tracking_uri": tracking_uri(params.mlflow)})
    return cfg, mcfg, project_dir, precision


def llm_settings(args: dict[str, Any] | None = None) -> tuple[ServeLlmConfig, Params | None, str]:
    """``serve_llm`` (``args["serve_llm"]``, a mapping, overriding its keys), the params, and why the LM is off
    ("" when it is served)."""
    args = dict(args or {})
    project_dir = Path(args.get("project_dir") or os.getcwd()).resolve()
    params_path = Path(args.get("params", "params.yaml"))
    params = load_params(params_path if params_path.is_absolute() else project_dir / params_path)
    cfg = ServeLlmConfig.model_validate({**params.serve_llm.model_dump(), **(args.get("serve_llm") or {})})
    if not params.llm.enabled:
        return cfg, params, "the generative model is disabled (params.yaml llm.enabled: false)"
    if not cfg.enabled:
        return cfg, params, "the generative model is not served (params.yaml serve_llm.enabled: false)"
    return cfg, params, ""


def build(args: dict[str, Any] | None = None) -> Any:
    """Application builder. ``args``: ``params`` (path), ``project_dir``, ``precision``, ``serve_llm`` (a mapping
    of ``serve_llm:`` keys to override), and any ``serve:`` key to override (:func:`build_settings`)."""
    args = dict(args or {})
    llm_args = {k: args[k] for k in ("params", "project_dir", "serve_llm") if k in args}
    args.pop("serve_llm", None)
    cfg, mcfg, project_dir, precision = build_settings(args)
    lcfg, params, off = llm_settings(llm_args)
    llm = None
    if not off:
        llm = LLMDeployment.options(
            num_replicas=1,
            max_ongoing_requests=lcfg.max_ongoing_requests,
            max_queued_requests=4 * lcfg.max_ongoing_requests,
            ray_actor_options={"num_cpus": lcfg.replica_cpus},
        ).bind(
            lcfg.model_dump(), cfg.model_dump(), mcfg.model_dump(), params.register_llm.registered_model,
            params.llm.system_prompt, str(project_dir),
        )  # fmt: skip
    return ClassifierDeployment.options(**deployment_options(cfg)).bind(
        cfg.model_dump(), mcfg.model_dump(), str(project_dir), precision, llm, off
    )


def start_ray() -> None:
    """A local Ray instance for this process (no-op when Ray is already initialised). ``address="local"``: a new
    one even when a ``ray start`` cluster is up on this machine (Ray would otherwise try to join it and refuse
    ``num_cpus``)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)


def run_local(
    params: Params, app: Any, wait_ready_s: float = 300.0, name: str = APP_NAME, route_prefix: str = "/"
) -> str:
    """Start Ray and Serve on this machine (loopback), deploy ``app``, wait until /readyz answers 200.

    Returns its URL."""
    import requests

    cfg = params.serve
    start_ray()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    url = f"http://{cfg.host}:{cfg.port}{route_prefix.rstrip('/')}"
    key = resolve_api_key(cfg.api_key, cfg.api_key_file, os.environ, Path.cwd())
    headers = {"X-API-Key": key} if key else {}  # /readyz needs the key too
    deadline, detail, shown = time.monotonic() + wait_ready_s, None, None
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/readyz", timeout=2, headers=headers)
            if r.status_code == 200:
                return url
            detail = r.json().get("detail")
        except (requests.RequestException, ValueError):
            detail = None
        if detail and detail != shown:
            print(f"waiting for the model: {detail}", flush=True)
            shown = detail
        time.sleep(0.5)
    raise TimeoutError(f"the model did not load within {wait_ready_s:.0f} s: {detail or 'no answer from ' + url}")


def stop_local() -> None:
    """Graceful: replicas drain and flush the prediction log, then Ray stops."""
    import ray

    serve.shutdown()
    if ray.is_initialized():
        ray.shutdown()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(params: Path = Path("params.yaml"), port: int | None = None) -> None:
    """Serve the registry champion on 127.0.0.1 (port from params serve.port) until Ctrl-C or SIGTERM."""
    from pipelines.errors import PipelineError
    from pipelines.logs import quiet_libraries

    quiet_libraries()
    p = load_params(params)
    if port is not None:
        p.serve.port = port
    app = build({"params": str(params.resolve()), "port": p.serve.port})
    print(
        f"starting Ray Serve; serving models:/{p.mlflow.registered_model}@{p.serve.model_alias} "
        f"from {redact(tracking_uri(p.mlflow))} in {p.evaluate.precision} (evaluate.precision) ...",
        flush=True,
    )
    _, _, llm_off = llm_settings({"params": str(params.resolve())})
    print(
        f"  and /v1: {llm_off}"
        if llm_off
        else f"  and on /v1 models:/{p.register_llm.registered_model}@{p.serve_llm.model_alias} (OpenAI-compatible)",
        flush=True,
    )
    try:
        start_ray()
        # SIGTERM (systemd, docker stop, kill) stops like Ctrl-C: drain, flush the prediction log, then exit 0.
        # Installed after ray.init, whose own SIGTERM handler aborts the driver without a graceful shutdown,
        # and before the app is deployed, so a SIGTERM that follows a first answer is always ours.
        signal.signal(signal.SIGTERM, _interrupt)
        url = run_local(p, app)
        print(
            f"ready: {url}  (docs {url}/docs, metrics {url}/metrics, log {p.serve.log_dir}/). Ctrl-C stops.", flush=True
        )
        while True:
            time.sleep(3600)
    except TimeoutError as err:
        raise PipelineError(f"{err}. Is there a champion? Run `make run` (register stage) first.") from None
    except KeyboardInterrupt:
        print("\nstopping (flushing the prediction log) ...", flush=True)
    finally:
        stop_local()


if __name__ == "__main__":
    from pipelines.errors import run_cli

    run_cli(main)
