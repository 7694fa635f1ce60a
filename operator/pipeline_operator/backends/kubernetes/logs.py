"""A pipeline's log: its pod's log read through the API server (``pods/log``) in a thread of its own,
followed across the pipeline's runs."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from ...identity import PipelineKey
from ...kube.client import Forbidden, Unavailable
from .. import LogsUnavailable
from .children import ChildObjects, _reason
from .objects import child_name

log = logging.getLogger(__name__)


class PodLogs(ChildObjects):
    """Reads the log of a pipeline's pod, across its runs."""

    @contextlib.asynccontextmanager
    async def logs(self, key: PipelineKey, follow: bool, tail_lines: int = 50_000, open_timeout: float = 30.0,
                   next_pod_poll: float = 1.0) -> AsyncIterator[AsyncIterator[bytes]]:
        """The log of the pipeline's pod (:meth:`_pod_log`); with ``follow``, across the pipeline's runs, as
        Feldera's runner follows a pipeline's log across stops and starts: once a pod's log ends (the pipeline
        stopped, or it had no pod), the log of the next pod the pipeline's StatefulSet runs (another uid, once
        its container started, looked for every ``next_pod_poll`` seconds in the cache), from its first line, and
        so on for as long as it is read (the API ends the stream when the pipeline is deleted). A stream that
        ends while its pod still runs (quiet for an hour) ends here too: the reader asks again. The first log
        that cannot be read is :class:`LogsUnavailable`, raised on opening; a later one ends the stream."""
        async with self._pod_log(key, follow, tail_lines, open_timeout) as first:
            if not follow:
                yield first
                return
            followed = self._pod_uid(key)

            async def runs() -> AsyncIterator[bytes]:
                nonlocal followed
                async for chunk in first:
                    yield chunk
                while True:
                    for _ in range(5):  # the container's end reaches the cache a moment after its log's
                        if followed is None or followed != self._pod_uid(key) or self._ended(key):
                            break
                        await asyncio.sleep(next_pod_poll)
                    else:
                        return  # the pod runs on: its stream ended by its own bound
                    while True:  # the cache changes on its own thread: looked at, not waited on
                        uid = self._pod_uid(key)
                        if uid is not None and uid != followed and self._started(key):
                            break
                        await asyncio.sleep(next_pod_poll)
                    followed = uid
                    try:
                        async with self._pod_log(key, True, tail_lines, open_timeout) as chunks:
                            async for chunk in chunks:
                                yield chunk
                    except LogsUnavailable as exc:
                        log.info("%s: the log of its next pod cannot be read: %s", key, exc)
                        return

            yield runs()

    def _pod_uid(self, key: PipelineKey) -> str | None:
        pod = self._pod(key)
        return None if pod is None else pod["metadata"].get("uid")

    def _container_states(self, key: PipelineKey) -> list[dict[str, Any]]:
        pod = self._pod(key) or {}
        return [c.get("state") or {} for c in (pod.get("status") or {}).get("containerStatuses") or []
                if c.get("name") == "pipeline"]

    def _started(self, key: PipelineKey) -> bool:
        """The pipeline's pod's container has started (it has a log)."""
        return any("running" in s or "terminated" in s for s in self._container_states(key))

    def _ended(self, key: PipelineKey) -> bool:
        """The pipeline's pod's container is no longer running (or the pod is gone)."""
        return not any("running" in s for s in self._container_states(key))

    @contextlib.asynccontextmanager
    async def _pod_log(self, key: PipelineKey, follow: bool, tail_lines: int = 50_000,
                       open_timeout: float = 30.0) -> AsyncIterator[AsyncIterator[bytes]]:
        """The logs of the pipeline's pod through the API server (``pods/log``, which the API server reads from
        the pod's kubelet): its last ``tail_lines`` lines (as many as Feldera's runner keeps), then, with
        ``follow``, what the container writes until it ends.

        Only the pipeline's own pod is read: the one in the cache that its StatefulSet controls (a pod of that
        name made by someone else is refused). The blocking client reads the stream in a thread of its own,
        with an API client of its own (a log stream holds its connection for as long as it is read, which must
        starve neither the monitoring loops' pool nor the watches), and hands the chunks to the event loop
        through a queue of a few chunks: a reader that does not keep up slows the stream down, nothing piles
        up. Leaving the ``async with`` shuts the connection down, which ends a read blocked in the thread. No
        pod is an empty log, a container that has not started one line saying why; a stream the API server
        does not open within ``open_timeout`` seconds, or refuses otherwise, is :class:`LogsUnavailable`."""
        namespace, pod = key.namespace, f"{child_name(key)}-0"
        try:
            await self._cached(namespace, "statefulset", "pod")
        except (Unavailable, Forbidden) as exc:
            raise LogsUnavailable(str(exc)) from exc
        if self._cache("pod", namespace, pod) is None:
            yield self._empty()  # no pod (not yet, or no more): nothing to read
            return
        if self._pod(key) is None:
            raise LogsUnavailable(f"pod {namespace}/{pod} is not the one the pipeline's StatefulSet controls; the "
                                  "operator does not read its log")
        loop = asyncio.get_running_loop()
        client = kubernetes.client.ApiClient(copy.deepcopy(self.kube.api_client.configuration))
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        room = threading.Semaphore(8)  # chunks handed over and not read yet
        stop = threading.Event()
        opened: asyncio.Future[Any] = loop.create_future()  # the response, or why there is none
        # Following, a quiet container sends nothing for as long as it likes: a stream quiet for an hour
        # ends (the reader asks again), the least bound that never cuts a live pipeline's log in practice.
        request_timeout = (5.0, 3600.0) if follow else (5.0, 30.0)

        def settle(value: Any) -> None:  # on the event loop
            if opened.done():  # given up on (open_timeout): nobody reads this stream
                if not isinstance(value, BaseException):
                    value.close()
            elif isinstance(value, BaseException):
                opened.set_exception(value)
            else:
                opened.set_result(value)

        def hand(chunk: bytes | None) -> bool:  # in the thread; False once the reader is gone
            while not room.acquire(timeout=1.0):
                if stop.is_set():
                    return False
            if stop.is_set():
                return False
            try:
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except RuntimeError:  # the event loop is closed
                return False
            return True

        def read() -> None:  # the thread
            try:
                stream: Any = kubernetes.client.CoreV1Api(client).read_namespaced_pod_log(
                    pod, namespace, container="pipeline", follow=follow, tail_lines=tail_lines,
                    _preload_content=False, _request_timeout=request_timeout)
            except Exception as exc:  # noqa: BLE001 - handed to the reader, which says what it means
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(settle, exc)
                return
            try:
                loop.call_soon_threadsafe(settle, stream)
                while not stop.is_set() and (chunk := stream.read1(64 * 1024)):
                    if not hand(chunk):
                        return
            except Exception as exc:  # noqa: BLE001 - the connection was cut, or shut down by the reader
                if not stop.is_set():
                    log.info("%s: the log stream of pod %s/%s ended: %s", key, namespace, pod, exc)
            finally:
                stream.close()
            hand(None)

        async def streamed() -> AsyncIterator[bytes]:
            while (chunk := await queue.get()) is not None:
                room.release()
                yield chunk

        async def once(line: bytes) -> AsyncIterator[bytes]:
            if line:
                yield line

        response: Any = None
        chunks = streamed()
        try:
            threading.Thread(target=read, name=f"pod-log-{namespace}/{pod}", daemon=True).start()
            try:
                async with asyncio.timeout(open_timeout):
                    response = await opened
            except TimeoutError:
                raise LogsUnavailable(f"the Kubernetes API server did not start sending the logs of pod "
                                      f"{namespace}/{pod} within {open_timeout:g}s; try again") from None
            except ApiException as exc:
                if exc.status == 404:  # no pod (not yet, or no more): nothing to read
                    chunks = once(b"")
                elif exc.status == 400:  # the container has not started (yet): the API server says why
                    chunks = once(f"No logs from pod {namespace}/{pod} yet: {_reason(exc)}\n".encode())
                elif exc.status == 403:
                    raise LogsUnavailable(f"the operator may not get pods/log in namespace {namespace}: give its "
                                          "Role the verb get on pods/log") from exc
                else:
                    raise LogsUnavailable(f"the Kubernetes API server could not read the logs of pod "
                                          f"{namespace}/{pod}: {exc.status} {_reason(exc)}") from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise LogsUnavailable(f"the Kubernetes API server is unreachable ({exc})") from exc
            yield chunks
        finally:
            stop.set()
            if response is not None:
                with contextlib.suppress(Exception):
                    response.shutdown()  # ends a read blocked in the thread
            await asyncio.to_thread(client.close)

    @staticmethod
    async def _empty() -> AsyncIterator[bytes]:
        return
        yield b""  # an async generator that yields nothing
