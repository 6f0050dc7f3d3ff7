"""Deadlines on sockets, enforced from outside the thread blocked on them.

A socket timeout bounds one recv, not a whole exchange: a peer that sends one byte a second (a dripping FHIR
server, a slow-header client) or nothing at all while the kernel still acknowledges (a frozen PostgreSQL) holds a
thread for ever. One watchdog thread per process keeps the deadlines of armed sockets; when one passes, the socket
is shut down (never closed: its owner closes it), so the blocked read or write returns at once with an error.
The socket's inode is checked first, so a file descriptor number reused after its socket closed is never touched."""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time

log = logging.getLogger(__name__)


class SocketWatchdog:
    """Deadlines by token: arm(fd, seconds) -> token, disarm(token); expired sockets are shut down."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, tuple[int, int, str]] = {}       # token -> (fd, inode, what)
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.expired = 0

    def arm(self, fd: int, seconds: float, what: str = "socket") -> int | None:
        try:
            inode = os.fstat(fd).st_ino
        except OSError:
            return None
        token = next(self._ids)
        with self._cond:
            self._ensure_thread()
            self._armed[token] = (fd, inode, what)
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, seconds), token))
            self._cond.notify()
        return token

    def disarm(self, token: int | None) -> None:
        if token is None:
            return
        with self._cond:
            self._armed.pop(token, None)          # its heap entry is dropped lazily

    def armed(self) -> int:
        with self._cond:
            return len(self._armed)

    def _ensure_thread(self) -> None:
        # a forked gunicorn worker inherits this object but not its thread
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._heap = [(d, t) for d, t in self._heap if t in self._armed]
            heapq.heapify(self._heap)
            self._thread = threading.Thread(target=self._run, name="socket-deadline", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                armed = self._armed.pop(token, None)
            if armed is not None:
                self.expired += 1
                _shutdown(*armed)


def _shutdown(fd: int, inode: int, what: str) -> None:
    try:
        if os.fstat(fd).st_ino != inode:
            return                          # the socket was closed and its number reused: not ours
        dup = os.dup(fd)
    except OSError:
        return
    try:
        with socket.socket(fileno=dup) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        log.warning("socket_deadline_passed", extra={"reason": what})
    except OSError:
        pass


WATCHDOG = SocketWatchdog()
