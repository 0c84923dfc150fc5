"""One engine, one worker thread: requests wait in a bounded queue (QueueFull -> HTTP 429) and run one
at a time; their events are handed back to the asyncio loop. Setting a job's cancel event (client
disconnect) stops its generation at the next token, or skips it if it is still waiting."""
from __future__ import annotations

import asyncio
import collections
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator, Optional

_END = object()


class QueueFull(Exception):
    """The wait queue holds its maximum number of requests."""


@dataclass
class Job:
    """`run(cancel)` returns the event iterator; it is called on the worker thread."""

    run: Callable[[threading.Event], Iterator[Any]]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def _put(self, item: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
            return True
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel.set()
            return False

    async def events(self) -> AsyncIterator[Any]:
        """The job's events in order; re-raises an exception from the worker. Leaving the iteration
        early (disconnect, error) cancels the generation."""
        try:
            while True:
                item = await self.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel.set()


class EngineWorker:
    """Serialises access to the engine. `max_waiting` counts requests not yet started."""

    def __init__(self, max_waiting: int = 8):
        if max_waiting < 0:
            raise ValueError("the queue size must be >= 0")
        self.max_waiting = max_waiting
        self._jobs: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._running: Optional[Job] = None
        self._stop = False
        self._thread: Optional[threading.Thread] = None

    @property
    def depth(self) -> int:
        with self._cv:
            return len(self._jobs)

    @property
    def running(self) -> int:
        return 1 if self._running is not None else 0

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="kimi-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancels everything and joins the worker (server shutdown)."""
        with self._cv:
            self._stop = True
            for job in self._jobs:
                job.cancel.set()
            if self._running is not None:
                self._running.cancel.set()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, run: Callable[[threading.Event], Iterator[Any]]) -> Job:
        """Queues a job from the event loop; raises QueueFull when max_waiting jobs already wait (the
        running one does not count)."""
        job = Job(run=run, loop=asyncio.get_running_loop())
        with self._cv:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if len(self._jobs) >= self.max_waiting and (self._running is not None or self._jobs):
                raise QueueFull(f"{len(self._jobs)} requests are already waiting")
            self._jobs.append(job)
            self._cv.notify()
        return job

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._stop:
                    self._cv.wait()
                if self._stop and not self._jobs:
                    return
                job = self._jobs.popleft()
                self._running = job
            try:
                if not job.cancel.is_set():
                    self._run(job)
            finally:
                with self._cv:
                    self._running = None
                job._put(_END)

    @staticmethod
    def _run(job: Job) -> None:
        it = None
        try:
            it = job.run(job.cancel)
            for ev in it:
                if not job._put(ev):
                    break
        except Exception as e:  # handed to the request, which answers with an error object
            job._put(e)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
