"""Member networks loaded on a background thread, in the order they run, while earlier members predict.

Each file is verified against the weights manifest as it is read (sha256 while it streams through once; the loader
then memory-maps it from the page cache), so the first forward waits for the first member's hash only, not for
every member's. A network that fails to load or verify raises where it is asked for: the run stops with one error
line and writes nothing. `keep=False` loads at most one network ahead and releases each once used (device memory for
two networks instead of all). The thread is a daemon and cancel() stops it before its next network: a run never
waits at exit for the networks of members the deadline dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future

import torch

from .members import Member, Network, load_network

Verify = Callable[[Member], None]


class NetworkLoader:
    def __init__(self, members: list[Member], device: torch.device, verify: Verify | None = None,
                 keep: bool = True) -> None:
        self.members, self.device, self.verify, self.keep = members, device, verify, keep
        self._cancelled = threading.Event()
        self._start()

    def _start(self) -> None:
        # by id: members are dataclasses, compared by value and unhashable
        self._futures: dict[int, Future] = {id(m): Future() for m in self.members}
        self._room = threading.Semaphore(2) if not self.keep else None  # the network in use and the next one
        threading.Thread(target=self._load_all, name="load-networks", daemon=True).start()

    def _load_all(self) -> None:
        for member in self.members:
            if self._room is not None:
                self._room.acquire()
            if self._cancelled.is_set():
                return
            future = self._futures[id(member)]
            try:
                if self.verify is not None:
                    self.verify(member)
                future.set_result(load_network(member, self.device))
            except BaseException as e:
                future.set_exception(e)

    def network(self, member: Member, timeout: float | None = None) -> Network:
        """The member's network, waiting for its loading where it is not done yet (TimeoutError after `timeout`
        seconds)."""
        return self._futures[id(member)].result(timeout)

    def done_with(self, member: Member) -> None:
        """With keep=False, the member's network is released and the next one may load."""
        if not self.keep:
            self._futures[id(member)] = _released()
            self._room.release()

    def next_image(self) -> None:
        """With keep=False, load every network again (they were released after the last image)."""
        if not self.keep:
            self.cancel()
            self._cancelled = threading.Event()
            self._start()

    def cancel(self) -> None:
        """Load nothing more; a network loading now is not waited for."""
        self._cancelled.set()
        if self._room is not None:
            self._room.release()  # a thread waiting for room sees the cancellation


def _released() -> Future:
    future: Future = Future()
    future.set_exception(CancelledError("released after use"))
    return future
