"""The background worker: claims due jobs from the store and runs them.

Jobs live in the store, so they survive restarts; a job is leased while it
runs, and a worker that dies leaves a lease that expires, after which another
worker takes the job over. A job's memory writes and its completion commit in
one transaction, so a job's effects land exactly once. Run it in-process
(`Memory.start_worker`, started by the first background add) or as its own
process (`retain worker`).

An idle worker polls every `poll_seconds`. A store that can push (PostgreSQL:
LISTEN/NOTIFY) also wakes it as soon as any process queues a job, so a job
queued by one API replica starts at once on a worker elsewhere.
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
        """Run jobs until `stop` (or an exception such as KeyboardInterrupt in the calling thread)."""
        threading.Thread(target=self._listen, name="retain-job-listener", daemon=True).start()
        try:
            while not self._stop.is_set():
                self._wake.clear()  # before looking, so a wake-up during the run is not lost
                try:
                    ran = self._memory.run_jobs(max_jobs=1)
                except Exception:  # the loop must outlive any one failure; the job itself was released
                    logger.exception("background worker iteration failed")
                    ran = 0
                if not ran:
                    self._wake.wait(self._poll)
        finally:
            self._stop.set()

    def _listen(self) -> None:
        try:
            self._memory.store.listen_for_jobs(self.wake, self._stop)
        except Exception:  # polling still finds every job
            logger.exception("job notifications stopped; polling every %s s", self._poll)
