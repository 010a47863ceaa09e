"""Batches of stored uint8 tensors for the trainer: the same order in memory and streamed, sharded by rank.

Why it is built this way (each point a defect of the first loader, issue 9):

- Order: the split's positions are cut into blocks of neighbouring rows; the blocks are shuffled, then the
  positions within each window of `mix_blocks` blocks. A streamed read then touches few neighbouring rows of
  few shards per Zarr call, and batches still mix clips from across the split.
- Sharding: every rank draws the same epoch order and takes an equal, contiguous share of it (the remainder
  of `len(split) % world` clips sits out that epoch), so each step on each rank has a non-empty batch and
  all ranks take the same number of steps. Evaluation splits every clip once over the ranks (shares may
  differ by one) and the trainer gathers the results.
- Streaming: one DataLoader for the whole run, with persistent "spawn" workers (zarr 3's event loop does not
  survive a fork) that serve every epoch and every evaluation pass. A task is a range of a pass's rows (up
  to `task_rows` and `task_bytes`: a 3D concat batch is split over several tasks, a short pass over every
  worker); a worker decodes them with one read per run of neighbours straight into a ring of shared batch
  buffers allocated once, so nothing is pickled, stacked or collated and no fresh page is touched. Batches
  stay uint8: the conversion to float happens on the device.
- In memory: rows are copied one by one straight into the batch (one memcpy each, no stacking, no float):
  on a GPU from pinned memory into a device tensor (DMA, no CPU copy), on a CPU by numpy into one of two
  reused buffers (a fresh 77 MB batch of 3D concat costs more in page faults than in copying); a batch of
  neighbouring rows in order is a view. So a CPU batch's tensors are valid until the next-but-one batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from stores.torchdata import StoreSplit

MAX_WORKERS = 64


@dataclass(frozen=True)
class LoaderConfig:
    workers: int = 2  # streaming DataLoader processes; 0 reads in the trainer's process
    block_rows: int = 16  # neighbouring rows shuffled as one block
    mix_blocks: int = 4  # blocks whose clips are shuffled together
    task_rows: int = 32  # rows one worker reads per task at most
    task_bytes: int = 32 << 20  # and bytes at most (at least one row): a 3D concat row is 4.8 MB
    prefetch: int = 2  # tasks queued ahead per worker


def default_workers() -> int:
    """The CPU cores this rank may use, capped at 8 (torchrun's ranks on one node share the cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, per_rank))


def check_workers(workers: int) -> int:
    """`workers` if sensible, else ValueError naming the fix (negative, or more than 64 / 4x the cores)."""
    limit = min(MAX_WORKERS, 4 * (os.cpu_count() or 1))
    if workers < 0 or workers > limit:
        raise ValueError(f"--loader-workers {workers} is outside 0..{limit} (0 reads in the training process; the default follows the CPU count)")
    return workers


CPU_IN_MEMORY_CAP_GB = 0.5
"""The most a CPU run holds in memory by default. On CPU the training step itself takes ~2.2 GB (resnet18, 2D
concat, 224 px, batch 32: its activations), and a step is far slower than streaming the rows it needs, so holding
the splits buys no speed there; uncapped, the process grew with the corpus (4.5 GB at CREMA-D size, issue 11).
On a GPU the activations live on the device and the loader can be the bottleneck: half the available RAM."""


def memory_budget(max_memory_gb: float | None, device: str) -> tuple[float, str]:
    """Bytes of splits to hold in memory, and where that figure comes from (train.log says it beside the path
    taken): as asked, else half the RAM available now, shared by the node's ranks, and on CPU at most
    CPU_IN_MEMORY_CAP_GB."""
    if max_memory_gb is not None:
        return max_memory_gb * 1e9, f"--max-memory-gb {max_memory_gb:g}"
    available = None
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    limit = available / 2 / ranks
    share = f"half the {available / 1e9:.1f} GB of RAM available" + (f", shared by {ranks} ranks" if ranks > 1 else "")
    if device.startswith("cuda") or limit <= CPU_IN_MEMORY_CAP_GB * 1e9:
        return limit, share
    return CPU_IN_MEMORY_CAP_GB * 1e9, f"the CPU cap; {share} would be {limit / 1e9:.1f} GB"


def epoch_order(n: int, generator: torch.Generator | None, *, block_rows: int = 16, mix_blocks: int = 4) -> np.ndarray:
    """Positions 0..n-1 in block-shuffled order; in order when `generator` is None (evaluation)."""
    if generator is None:
        return np.arange(n)
    blocks = [np.arange(s, min(s + block_rows, n)) for s in range(0, n, block_rows)]
    blocks = [blocks[i] for i in torch.randperm(len(blocks), generator=generator).tolist()]
    order = []
    for w in range(0, len(blocks), mix_blocks):
        window = np.concatenate(blocks[w : w + mix_blocks])
        order.append(window[torch.randperm(len(window), generator=generator).numpy()])
    return np.concatenate(order) if order else np.zeros(0, np.int64)


def rank_share(order: np.ndarray, rank: int, world: int, *, equal: bool) -> np.ndarray:
    """This rank's contiguous share of `order`: equal shares (training) or every clip once (evaluation)."""
    if world == 1:
        return order
    if equal:
        per_rank = len(order) // world
        return order[rank * per_rank : (rank + 1) * per_rank]
    return np.array_split(order, world)[rank]


class _Tasks:
    """The DataLoader's sampler: the current pass's tasks, made as the DataLoader dispatches them.

    Ring mode (`cuts` set): a task is a range of the pass's rows, decoded into the slots of the batches it
    covers; a batch gets the ring's next slot when its first task is dispatched. When the trainer gets batch
    j, the task that completed it ended less than a task's rows past it, the DataLoader has at most
    workers x prefetch tasks outstanding beyond that, and the trainer still holds batch j - 1; so a ring of
    ceil((workers x prefetch + 1) x rows per task / batch size) + 2 slots never overwrites a batch in use
    (the count runs over the whole run, so that holds across an abandoned pass too).
    Otherwise a task is one batch, read into fresh shared memory.
    """

    def __init__(self) -> None:
        self.name, self.mine, self.cuts, self.ranges = "", np.zeros(0, np.int64), None, []
        self.slots = 0  # slots in the ring (0: no ring yet)
        self.batch_rows = 0  # the batch size the ring is for
        self.dispatched = 0  # batches given a slot, over the whole run
        self.slot_of: list[int] = []  # this pass's batch -> its slot

    def __iter__(self):
        if self.cuts is None:
            for a, b in self.ranges:
                yield self.name, [(self.mine[a:b], None, 0)]
            return
        self.slot_of = []
        for lo, hi in self.ranges:
            segments = []
            for k in range(lo // self.batch_rows, (hi - 1) // self.batch_rows + 1):
                if k == len(self.slot_of):
                    self.slot_of.append(self.dispatched % self.slots)
                    self.dispatched += 1
                a, b = max(lo, self.cuts[k][0]), min(hi, self.cuts[k][1])
                segments.append((self.mine[a:b], self.slot_of[k], a - self.cuts[k][0]))
            yield self.name, segments

    def __len__(self) -> int:
        return len(self.ranges)


class _ReadTasks(torch.utils.data.Dataset):
    """Runs in a worker: a task (split name, [(positions, slot, first row in the slot), ...]) -> its rows.

    Into a slot, the rows are decoded in place in the ring's shared memory (allocated once by the trainer's
    process, its pages mapped once per worker) and nothing travels back but the acknowledgement. Without a
    slot, they are decoded into fresh shared memory, whose tensors travel back as handles.
    """

    def __init__(self, splits: dict[str, StoreSplit]) -> None:
        self.splits = splits
        self.slots: list[list[torch.Tensor]] = []  # per slot, one shared tensor per part

    def __getitem__(self, task) -> list[torch.Tensor] | None:
        name, segments = task
        for positions, slot, first in segments:
            if slot is None:
                return self.splits[name].read(positions)
            self.splits[name].read(positions, out=[t[first : first + len(positions)] for t in self.slots[slot]])
        return None

    def __len__(self) -> int:  # never asked: the sampler decides
        return 0


class Loader:
    """Batches of one run's splits; `batches` yields (uint8 tensors on `device`, labels, split positions).

    A batch's tensors stay valid until the batch after the next one is asked for (buffers are reused).
    """

    def __init__(self, splits: dict[str, StoreSplit], config: LoaderConfig, device: str) -> None:
        self.splits, self.config, self.device = splits, config, device
        self.pin = device.startswith("cuda")
        self.streamed = {name: s for name, s in splits.items() if s.memory is None}
        self.memory = {name: [m.pin_memory() if self.pin else m for m in s.memory] for name, s in splits.items() if s.memory is not None}
        self.buffers: dict[tuple[int, int], torch.Tensor] = {}
        self.flip = 0
        self.reader = _ReadTasks(self.streamed)
        self.tasks = _Tasks()
        self.loader = None
        if self.streamed and config.workers > 0:
            self.loader = torch.utils.data.DataLoader(
                self.reader, batch_size=None, sampler=self.tasks, num_workers=config.workers, persistent_workers=True,
                prefetch_factor=config.prefetch, multiprocessing_context="spawn", pin_memory=self.pin,
            )

    def batches(self, name: str, batch_size: int, *, generator: torch.Generator | None = None, rank: int = 0, world: int = 1
                ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, np.ndarray]]:
        """One pass over split `name`: shuffled by `generator` and in equal shares for training, else in order
        and every clip once over the ranks."""
        split = self.splits[name]
        order = epoch_order(len(split), generator, block_rows=self.config.block_rows, mix_blocks=self.config.mix_blocks)
        mine = rank_share(order, rank, world, equal=generator is not None)
        cuts = [(s, min(s + batch_size, len(mine))) for s in range(0, len(mine), batch_size)]
        if name not in self.streamed:
            raws = (self._gather(name, mine[a:b]) for a, b in cuts)  # lazily: buffers are reused
        elif self.loader is None:
            raws = (split.read(mine[a:b]) for a, b in cuts)  # in this process
        else:
            raws = self._stream(name, mine, cuts, batch_size)
        for (a, b), raw in zip(cuts, raws):
            positions = mine[a:b]
            if self.pin and raw[0].device.type == "cpu" and not raw[0].is_pinned():
                raw = [r.pin_memory() for r in raw]
            labels = split.labels[torch.as_tensor(positions)]
            yield [r.to(self.device, non_blocking=True) for r in raw], labels.to(self.device, non_blocking=True), positions

    def task_rows(self, split: StoreSplit) -> int:
        """Rows per worker task: `task_rows` at most, and `task_bytes` (at least one row)."""
        return max(1, min(self.config.task_rows, self.config.task_bytes // max(1, split.row_nbytes())))

    def _stream(self, name: str, mine: np.ndarray, cuts: list, batch_size: int) -> Iterator[list[torch.Tensor]]:
        """The pass's batches from the workers: in the ring when it is for this batch size."""
        split = self.splits[name]
        if self.loader._iterator is None and not self.reader.slots:  # before the workers start: they map the ring once
            self._allocate_ring(split, batch_size)
        tasks = self.tasks
        tasks.name, tasks.mine = name, mine
        if batch_size != tasks.batch_rows:  # another batch size than the ring's: a task per batch, fresh memory
            tasks.cuts, tasks.ranges = None, cuts
            yield from self.loader
            return
        rows = max(1, min(self.task_rows(split), -(-len(mine) // self.config.workers)))  # a short pass still busies every worker
        tasks.cuts, tasks.ranges = cuts, [(lo, min(lo + rows, len(mine))) for lo in range(0, len(mine), rows)]
        done = 0
        for (_, hi), _ in zip(tasks.ranges, self.loader, strict=True):
            while done < len(cuts) and cuts[done][1] <= hi:  # tasks come back in order: every batch up to hi is whole
                a, b = cuts[done]
                yield [t[: b - a] for t in self.reader.slots[tasks.slot_of[done]]]
                done += 1

    def _allocate_ring(self, split: StoreSplit, batch_size: int) -> None:
        """The shared batch buffers the workers decode into, for `batch_size` (see `_Tasks`)."""
        count = -(-(self.config.workers * self.config.prefetch + 1) * self.task_rows(split) // batch_size) + 2
        self.reader.slots = [[torch.empty((batch_size, *shape), dtype=dtype).share_memory_() for shape, dtype in split.row_layout()]
                             for _ in range(count)]
        self.tasks.slots, self.tasks.batch_rows = count, batch_size

    def _gather(self, name: str, positions: np.ndarray) -> list[torch.Tensor]:
        """An in-memory batch: at most one memcpy per row, into a device tensor (GPU) or a reused buffer (CPU).

        A batch of neighbouring rows in order (every evaluation batch) is a view on CPU and one copy on a GPU.
        On CPU the rows are copied by numpy: torch's `copy_` splits each row over its thread pool, which on a
        busy machine made it ~5x slower than a plain memcpy (issue 9: 80 samples/s for 3D concat).
        """
        run = len(positions) > 0 and np.array_equal(positions, np.arange(positions[0], positions[0] + len(positions)))
        out = []
        for k, m in enumerate(self.memory[name]):
            shape = (len(positions), *m.shape[1:])
            if self.pin:  # DMA from pinned memory straight into the device tensor, no CPU copy
                if run:
                    out.append(m[positions[0] : positions[0] + len(positions)].to(self.device, non_blocking=True))
                    continue
                batch = torch.empty(shape, dtype=m.dtype, device=self.device)
                for j, i in enumerate(positions.tolist()):
                    batch[j].copy_(m[i], non_blocking=True)
                out.append(batch)
                continue
            if run:
                out.append(m[positions[0] : positions[0] + len(positions)])
                continue
            buffer = self.buffers.get((k, self.flip))
            if buffer is None or len(buffer) < len(positions) or buffer.shape[1:] != m.shape[1:] or buffer.dtype != m.dtype:
                buffer = self.buffers[(k, self.flip)] = torch.empty(shape, dtype=m.dtype)
            source, target = m.numpy(), buffer.numpy()
            for j, i in enumerate(positions.tolist()):
                target[j] = source[i]
            out.append(buffer[: len(positions)])
        self.flip ^= 1
        return out

    def close(self) -> None:
        """Stop the persistent workers now rather than at interpreter exit."""
        if self.loader is not None and getattr(self.loader, "_iterator", None) is not None:
            self.loader._iterator._shutdown_workers()
            self.loader._iterator = None
        self.reader.slots, self.tasks.slots, self.tasks.batch_rows = [], 0, 0  # the ring goes with its workers
