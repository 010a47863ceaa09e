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
  survive a fork) that serve every epoch and every evaluation pass. A task is a group of batches; a worker
  reads all their rows (about one window: one Zarr slice per run of neighbouring rows) and returns the
  batches ready, as uint8: the conversion
  to float happens on the device.
- In memory: rows are copied one by one straight into the batch: on a GPU from pinned memory into a device
  tensor (DMA, no CPU copy), on a CPU into one of two reused buffers (a fresh 77 MB batch of 3D concat costs
  more in page faults than in copying). So a CPU batch's tensors are valid until the next-but-one batch.
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
    task_rows: int = 32  # rows one worker reads per task (a whole number of batches, at least one)
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
    """The DataLoader's sampler: the current pass's tasks, swapped in before each pass (workers persist)."""

    def __init__(self) -> None:
        self.tasks: list = []

    def __iter__(self):
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


class _ReadTasks(torch.utils.data.Dataset):
    """Runs in a worker: a task (split name, positions, batch bounds) -> the batches' stored tensors."""

    def __init__(self, splits: dict[str, StoreSplit]) -> None:
        self.splits = splits

    def __getitem__(self, task) -> list[list[torch.Tensor]]:
        name, positions, bounds = task
        parts = self.splits[name].read(positions)
        return [[p[a:b] for p in parts] for a, b in bounds]

    def __len__(self) -> int:  # never asked: the sampler decides
        return 0


class Loader:
    """Batches of one run's splits; `batches` yields (uint8 tensors on `device`, labels, split positions)."""

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
        per_task = max(1, self.config.task_rows // batch_size)
        groups = [cuts[i : i + per_task] for i in range(0, len(cuts), per_task)]
        for group, parts in zip(groups, self._read(name, mine, groups)):
            for (a, b), raw in zip(group, parts):
                positions = mine[a:b]
                if self.pin and raw[0].device.type == "cpu" and not raw[0].is_pinned():
                    raw = [r.pin_memory() for r in raw]
                labels = split.labels[torch.as_tensor(positions)]
                yield [r.to(self.device, non_blocking=True) for r in raw], labels.to(self.device, non_blocking=True), positions

    def _read(self, name: str, mine: np.ndarray, groups: list) -> Iterator[list[list[torch.Tensor]]]:
        tasks = []
        for group in groups:
            lo, hi = group[0][0], group[-1][1]
            tasks.append((name, mine[lo:hi], [(a - lo, b - lo) for a, b in group]))
        if name not in self.streamed:  # in memory: gather batch by batch, nothing to prefetch
            for _, positions, bounds in tasks:
                yield (self._gather(name, positions[a:b]) for a, b in bounds)  # lazily: buffers are reused
        elif self.loader is None:
            for task in tasks:
                yield self.reader[task]
        else:
            self.tasks.tasks = tasks
            yield from self.loader

    def _gather(self, name: str, positions: np.ndarray) -> list[torch.Tensor]:
        """An in-memory batch: its rows copied into a device tensor (GPU) or a reused buffer (CPU)."""
        out = []
        for k, m in enumerate(self.memory[name]):
            shape = (len(positions), *m.shape[1:])
            if self.pin:
                batch = torch.empty(shape, dtype=m.dtype, device=self.device)
            else:
                buffer = self.buffers.get((k, self.flip))
                if buffer is None or len(buffer) < len(positions) or buffer.shape[1:] != m.shape[1:]:
                    buffer = self.buffers[(k, self.flip)] = torch.empty(shape, dtype=m.dtype)
                batch = buffer[: len(positions)]
            if self.pin or m[0].nbytes >= 1 << 20:  # DMA to the GPU, or big rows: torch's (threaded) copy
                for j, i in enumerate(positions.tolist()):
                    batch[j].copy_(m[i], non_blocking=True)
            else:  # small rows: a plain memcpy each, without torch's per-call threading overhead
                source, target = m.numpy(), batch.numpy()
                for j, i in enumerate(positions.tolist()):
                    target[j] = source[i]
            out.append(batch)
        self.flip ^= 1
        return out

    def close(self) -> None:
        """Stop the persistent workers now rather than at interpreter exit."""
        if self.loader is not None and getattr(self.loader, "_iterator", None) is not None:
            self.loader._iterator._shutdown_workers()
            self.loader._iterator = None
