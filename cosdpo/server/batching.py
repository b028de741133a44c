"""Gathering concurrent requests into one forward.

A request's work joins a queue; one worker takes the first waiting item,
then whatever else is waiting or arrives within ``max_wait`` seconds, up to
``max_batch`` items and ``max_size`` units (ranked items), and runs the
whole batch in one call on a worker thread. Under load the queue fills
while the model is busy, so batches grow by themselves: ``cosdpo serve``
waits 0 s by default, which served 16 clients as fast as a 2 ms wait and a
lone client 30% faster (docs/benchmarks.md). Requests are checked before they join (the routes do it), so a
batch only fails on an internal error, and then every request in it gets
that error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class Batcher:
    def __init__(
        self,
        run: Callable[[list], list],
        max_batch: int = 32,
        max_wait: float = 0.002,
        size: Callable[[object], int] = lambda item: 1,
        max_size: int | None = None,
    ):
        if max_batch < 1 or max_wait < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait >= 0, got {max_batch} and {max_wait}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait
        self.size, self.max_size = size, max_size
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        # one thread: the model runs one batch at a time, and torch parallelises inside it
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="cosdpo-batch")
        self.batches = self.items = 0  # counters for /v1/model: how well batching is working

    def start(self):
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._work())

    async def stop(self):
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, item):
        """The result of ``run`` for ``item``, computed in a batch with whatever else is waiting."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    def _fits(self, batch, item) -> bool:
        if len(batch) >= self.max_batch:
            return False
        if self.max_size is None:
            return True
        return sum(self.size(i) for i, _ in batch) + self.size(item) <= self.max_size

    async def _gather(self, first=None):
        batch = [first if first is not None else await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        held = None
        while len(batch) < self.max_batch:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            if not self._fits(batch, nxt[0]):
                held = nxt  # over the size bound: it opens the next batch
                break
            batch.append(nxt)
        return batch, held

    async def _work(self):
        loop = asyncio.get_running_loop()
        held = None
        while True:
            batch, held = await self._gather(held)
            live = [(item, fut) for item, fut in batch if not fut.done()]  # a client that left is not computed
            if not live:
                continue
            self.batches, self.items = self.batches + 1, self.items + len(live)
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in live])
            except Exception as exc:
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)


class BatchedService:
    """What a ranker and an LLM service share: a batcher that starts and stops with the app, and its counters."""

    batcher: Batcher
    batching_enabled: bool

    def start(self):
        self.batcher.start()

    async def stop(self):
        await self.batcher.stop()

    def batching(self) -> dict:
        return {"enabled": self.batching_enabled, "batches": self.batcher.batches, "requests": self.batcher.items}
