"""The background worker: claims due jobs from the store and runs them.

Jobs live in the store, so they survive restarts; a job is leased while it
runs, and a worker that dies leaves a lease that expires, after which another
worker takes the job over. A job's memory writes and its completion commit in
one transaction, so a job's effects land exactly once. Run it in-process
(`Memory.start_worker`, started by the first background add) or as its own
process (`retain worker`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .memory import Memory

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, memory: Memory, *, poll_seconds: float = 1.0) -> None:
        self._memory = memory
        self._poll = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="retain-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self._memory.run_jobs(max_jobs=1)
            except Exception:  # the loop must outlive any one failure; the job itself was released
                logger.exception("background worker iteration failed")
                ran = 0
            if not ran:
                self._wake.wait(self._poll)
                self._wake.clear()
