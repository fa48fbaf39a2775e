"""Member networks loaded on a background thread, in the order they run, while earlier members predict.

Each file is verified against the weights manifest as it is read (sha256 while it streams through once; the loader
then memory-maps it from the page cache), so the first forward waits for the first member's hash only, not for
every member's. A network that fails to load or verify raises where it is asked for: the run stops with one error
line and writes nothing. `keep=False` holds at most `limit` networks at once (the one in use and the next) and
releases each once used: device memory for two networks instead of all. The thread is a daemon and cancel() stops
it before its next network: a run never waits at exit for the networks of members the deadline dropped.

Each image after the first loads the networks again (keep=False) in a generation of its own: a thread works only on
its own generation's futures and checks only its own cancellation, so a thread still busy with the last image can
neither load into the next image's futures nor hold more than its share of the limit. Every future ends: with its
network, its load's exception, or cancelled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future

import torch

from .members import Member, Network, load_network
from .spec import MemberId

Verify = Callable[[Member], None]


class _Generation:
    """One image's loading: a future per member and what became of each slot it took."""

    def __init__(self, members: list[Member]) -> None:
        self.futures: dict[MemberId, Future] = {m.id: Future() for m in members}
        self.cancelled = False
        self.holding: set[MemberId] = set()  # members whose network holds a slot (loading, loaded or in use)


class NetworkLoader:
    def __init__(self, members: list[Member], device: torch.device, verify: Verify | None = None,
                 keep: bool = True, limit: int = 2) -> None:
        self.members, self.device, self.verify, self.keep = members, device, verify, keep
        self.limit = None if keep else limit
        self._lock = threading.Condition()
        self._held = 0  # slots taken across generations: never more than limit
        self._generation = self._start()

    def _start(self) -> _Generation:
        generation = _Generation(self.members)
        threading.Thread(target=self._load_all, args=(generation,), name="load-networks", daemon=True).start()
        return generation

    def _load_all(self, generation: _Generation) -> None:
        for member in self.members:
            future = generation.futures[member.id]
            with self._lock:
                self._lock.wait_for(lambda: generation.cancelled or self.limit is None or self._held < self.limit)
                if generation.cancelled or not future.set_running_or_notify_cancel():
                    return
                self._take(generation, member)
            try:
                if self.verify is not None:
                    self.verify(member)
                network = load_network(member, self.device)
            except BaseException as e:  # asked for, it raises there; its slot is free again
                with self._lock:
                    self._give_back(generation, member.id)
                    future.set_exception(e)
                continue
            with self._lock:
                future.set_result(network)
                if generation.cancelled:  # nobody will ask for it
                    self._give_back(generation, member.id)
            del network

    def _take(self, generation: _Generation, member: Member) -> None:
        if self.limit is not None:
            self._held += 1
            generation.holding.add(member.id)

    def _give_back(self, generation: _Generation, key: MemberId) -> None:
        if key in generation.holding:
            generation.holding.discard(key)
            self._held -= 1
            self._lock.notify_all()

    @property
    def held(self) -> int:
        """Networks holding a slot now (keep=False): loading, loaded and not yet used, or in use."""
        return self._held

    def network(self, member: Member, timeout: float | None = None) -> Network:
        """The member's network, waiting for its loading where it is not done yet (TimeoutError after `timeout`
        seconds; CancelledError once the loader was cancelled)."""
        return self._generation.futures[member.id].result(timeout)

    def done_with(self, member: Member) -> None:
        """With keep=False, the member's network is released and the next one may load."""
        if self.keep:
            return
        generation = self._generation
        with self._lock:
            released: Future = Future()
            released.set_exception(CancelledError("released after use"))
            generation.futures[member.id] = released
            self._give_back(generation, member.id)

    def next_image(self) -> None:
        """With keep=False, load every network again (they were released after the last image) in a new
        generation; the last one is cancelled first."""
        if not self.keep:
            self.cancel()
            self._generation = self._start()

    def cancel(self) -> None:
        """Load nothing more: a network loading now is not waited for (its slot comes back when it is done); every
        future not started is cancelled; slots of networks loaded and not used are given back."""
        generation = self._generation
        with self._lock:
            generation.cancelled = True
            for key, future in generation.futures.items():
                if future.cancel() or future.done():
                    self._give_back(generation, key)
            self._lock.notify_all()
