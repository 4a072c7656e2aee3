"""The generation engine in a child process: :class:`AsyncLLMEngine`'s interface, the model elsewhere.

Why: in a server the engine thread shares one interpreter lock with the event loop (HTTP, streaming, the
prediction log). A decode step dispatches hundreds of small torch ops, each of which takes the lock back when it
returns, so every burst of event-loop work stalls the step (on 2 cores the served step ran about 20% slower
than the same step offline, with the engine thread waiting for no other reason). In a process of its own the
engine's only other thread is the prefill thread, and the server's loop runs without waiting for the model.

How: the child builds the engine with a picklable ``factory`` (it loads the weights itself; they never cross
the pipe), then runs :func:`~pipelines.llm.engine.drive`, the same loop the thread engine runs, fed by a pipe:

- parent → child: ``("add", id, prompt_ids, params)``, ``("abort", id)``, ``("idle", token, fn)`` (``fn``
  picklable: a module-level function or a ``functools.partial`` of one), ``("stop",)``;
- child → parent: ``("ready", max_model_len, kv_cache_tokens, stats)`` once, then ``("added", id, error)``,
  ``("events", [TokenEvent, ...], stats)`` (one message per step), ``("failed", error)``,
  ``("idle", token, result, error)`` and ``("stopped",)``.

A reader thread in the parent hands each step's events to the event loop with one ``call_soon_threadsafe``.
If the child dies (killed, out of memory), every request in flight ends with :class:`EngineError` and later
ones are refused with it at once (:meth:`ProcessLLMEngine.problem` says why; the server reports it unhealthy).
The child exits when its parent does (the pipe closes).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import queue
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pipelines.llm.engine import (
    AsyncLLMEngine,
    EngineError,
    LLMEngine,
    SamplingParams,
    _settle,
    drive,
)

log = logging.getLogger(__name__)


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling, else an :class:`EngineError` with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any exception that cannot cross the pipe
        return EngineError(f"{type(error).__name__}: {error}")


def _outcome(done: Future) -> tuple[Any, BaseException | None]:
    error = done.exception()
    if error is not None:
        return None, _portable(error)
    try:
        pickle.dumps(done.result())
        return done.result(), None
    except Exception as e:  # noqa: BLE001
        return None, EngineError(f"the idle function's result cannot be sent back: {e}")


def _exited_while_loading(process) -> EngineError:
    return EngineError(f"the engine process exited (exit code {process.exitcode}) while loading the model")


def _child_main(conn, factory: Callable[[], LLMEngine]) -> None:
    """The child process: build the engine, report ready, run the step loop on the pipe's commands."""
    try:
        engine = factory()
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", _portable(e), traceback.format_exc()))
        return
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            conn.send(message)

    send(("ready", engine.max_model_len, engine.kv_cache_tokens, engine.stats()))
    commands: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                commands.put(conn.recv())
        except (EOFError, OSError):  # the parent is gone: stop
            commands.put(("stop",))

    threading.Thread(target=read, name="llm-engine-commands", daemon=True).start()

    def apply(command: tuple) -> bool:
        kind = command[0]
        if kind == "add":
            _, request_id, prompt_ids, params = command
            try:
                engine.add_request(request_id, prompt_ids, params)
                send(("added", request_id, None))
            except Exception as e:  # QueueFull, RequestTooLong, ValueError: raised in the caller
                send(("added", request_id, _portable(e)))
        elif kind == "abort":
            engine.abort(command[1])
        elif kind == "idle":
            _, token, fn = command
            engine.run_when_idle(fn).add_done_callback(lambda f: send(("idle", token, *_outcome(f))))
        return kind != "stop"

    try:
        drive(
            engine,
            commands,
            apply,
            lambda events, stats: send(("events", events, stats)),
            lambda error: send(("failed", _portable(error))),
        )
        engine.close()
        send(("stopped",))
    except (BrokenPipeError, EOFError, OSError):  # the parent went away mid-send
        pass


class ProcessLLMEngine(AsyncLLMEngine):
    """:class:`AsyncLLMEngine` with the engine (weights, KV cache, step loop) in a child process.

    ``factory`` runs in the child and returns the :class:`LLMEngine` (it must be picklable: a module-level
    function, or a ``functools.partial`` of one). :meth:`launch` starts the child and waits until its engine is
    built (blocking: call it from a worker thread); :meth:`start` then starts delivering events.
    """

    def __init__(self, factory: Callable[[], LLMEngine], *, start_timeout_s: float = 900.0) -> None:
        self.factory, self.start_timeout_s = factory, start_timeout_s
        self.max_model_len = self.kv_cache_tokens = 0
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._pending: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._idle: dict[int, Future] = {}
        self._tokens = iter(range(1, 1 << 62))
        self._stats: dict = {}
        self._process = None
        self._conn = None
        self._send_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._thread = None  # AsyncLLMEngine's engine thread: none in this process
        self._lost: EngineError | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def launch(self) -> None:
        """Start the child and wait for its engine (the factory's errors are raised here, with their traceback
        from the child in the log)."""
        if self._process is not None:
            return
        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads (Ray, torch)
        conn, child = ctx.Pipe(duplex=True)
        process = ctx.Process(target=_child_main, args=(child, self.factory), name="llm-engine", daemon=True)
        process.start()
        child.close()  # only the child holds its end: its exit closes the pipe here

        def failed(error: BaseException, detail: str | None = None) -> BaseException:
            """The child gone (killed if it still runs) and the pipe closed; the failure logged once, here."""
            if process.is_alive():
                process.kill()
            process.join()
            conn.close()
            log.error("%s", detail or error)
            return error

        deadline = time.monotonic() + self.start_timeout_s
        while not conn.poll(0.5):  # a child that exits closes its end of the pipe: poll returns, recv fails
            if not process.is_alive():
                process.join()
                raise failed(_exited_while_loading(process))
            if time.monotonic() > deadline:
                raise failed(EngineError("the engine process timed out while loading the model"))
        try:
            message = conn.recv()
        except EOFError:  # it exited before reporting
            process.join()
            raise failed(_exited_while_loading(process)) from None
        if message[0] == "error":
            raise failed(message[1], f"the engine process failed to start:\n{message[2]}")
        _, self.max_model_len, self.kv_cache_tokens, self._stats = message
        self._process, self._conn = process, conn

    async def start(self) -> None:
        if self._reader is not None:
            return
        if self._process is None:
            await asyncio.to_thread(self.launch)
        self._reader = threading.Thread(target=self._read, name="llm-engine-events", daemon=True)
        self._reader.start()

    async def stop(self) -> None:
        """Stop the child's loop (requests in flight end with an "abort" event) and wait for it to exit."""
        if self._process is None:
            return
        try:
            self._send(("stop",))
        except EngineError:  # it is gone already
            pass
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 60)
        await asyncio.to_thread(self._process.join, 30)
        if self._process.is_alive():
            self._process.kill()
            await asyncio.to_thread(self._process.join)
        self._conn.close()
        self._process = self._reader = None
        self._lost = self._lost or EngineError("the engine was stopped")
        self._abort_streams()

    def problem(self) -> str | None:
        """Why this engine cannot serve (its process died), or None."""
        return str(self._lost) if self._lost is not None else None

    async def run_when_idle(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` (picklable) in the child's engine thread once its running sequences have finished."""
        try:
            pickle.dumps(fn)
        except Exception as e:  # noqa: BLE001 - a lambda, a closure, a bound method of something unpicklable
            raise TypeError(
                f"run_when_idle sends its function to the engine process, so it must be picklable (a module-level "
                f"function or a functools.partial of one): {e}"
            ) from None
        done: Future = Future()
        token = next(self._tokens)
        self._idle[token] = done
        self._send(("idle", token, fn))
        return await asyncio.wrap_future(done)

    # ------------------------------------------------------------------ the asyncio side
    def _submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams, loop, events, added) -> None:
        if self._reader is None:
            raise RuntimeError("ProcessLLMEngine.start() was not awaited")
        self._streams[request_id] = (loop, events)
        self._pending[request_id] = (loop, added)
        try:
            self._send(("add", request_id, list(prompt_ids), params))
        except EngineError:
            self._streams.pop(request_id, None)
            self._pending.pop(request_id, None)
            raise

    def _abort(self, request_id: str) -> None:
        if self._lost is None:
            self._send(("abort", request_id))

    def _send(self, message: tuple) -> None:
        if self._lost is not None:
            raise self._lost
        try:
            with self._send_lock:
                self._conn.send(message)
        except (BrokenPipeError, EOFError, OSError) as e:
            raise EngineError(f"the engine process is gone: {e}") from None

    # ------------------------------------------------------------------ the reader thread
    def _read(self) -> None:
        try:
            while True:
                message = self._conn.recv()
                kind = message[0]
                if kind == "events":
                    self._publish(message[1], message[2])
                elif kind == "added":
                    _, request_id, error = message
                    loop, added = self._pending.pop(request_id)
                    if error is not None:
                        self._streams.pop(request_id, None)
                    loop.call_soon_threadsafe(_settle, added, error)
                elif kind == "failed":
                    self._fail(message[1])
                elif kind == "idle":
                    _, token, result, error = message
                    done = self._idle.pop(token)
                    done.set_exception(error) if error is not None else done.set_result(result)
                elif kind == "stopped":
                    return
        except (EOFError, OSError):
            self._process.join(5)
            self._lost = EngineError(f"the engine process exited (exit code {self._process.exitcode})")
            log.error("%s; ending the requests in flight", self._lost)
            for request_id, (loop, added) in list(self._pending.items()):
                self._streams.pop(request_id, None)
                loop.call_soon_threadsafe(_settle, added, self._lost)
            self._pending.clear()
            self._fail(self._lost)
            for done in self._idle.values():
                done.set_exception(self._lost)
            self._idle.clear()
