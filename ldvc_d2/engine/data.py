"""The training data stream: a pure function of (seed, position), so it is the same on detectron2 v0.6
and current detectron2 and ``--resume`` continues it exactly.

Definition. With N training images, seed s and total batch B (SOLVER.IMS_PER_BATCH):

* stream position p -> image ``perm_e[p mod N]`` with epoch e = p div N and ``perm_e`` a permutation of
  range(N) drawn by NumPy's PCG64 seeded with ``derive_seed(s, 0, e)``: every image once per epoch;
* iteration i uses positions ``[i*B, (i+1)*B)``, cut into world × K micro-batches of B / (world*K)
  consecutive positions; micro-batch ``j = k*world + rank`` is what process ``rank`` takes at its
  accumulation step k, so every split of B (1 process × 4 steps, 4 processes × 1 step) sees the same
  images in each step;
* the augmentation of position p runs with NumPy's and Python's global random state seeded with
  ``derive_seed(s, 1, p)`` (detectron2's augmentations draw from ``np.random``), then restored.

s is cfg.SEED, or (SEED < 0) a random seed shared by all processes and stored in the checkpoint.
"""
import logging
import random
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetFromList, get_detection_dataset_dicts
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset, Sampler

from .schedule import BatchPlan, batch_plan

__all__ = ["SeededMapDataset", "StreamBatchSampler", "TrainStream", "build_train_stream", "derive_seed", "shared_seed"]

logger = logging.getLogger(__name__)
_PERMUTATION, _AUGMENTATION = 0, 1


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from non-negative integers (NumPy's SeedSequence: well mixed, version-stable)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class StreamBatchSampler(Sampler):
    """Yields, from iteration ``start_iter`` on, this process's micro-batches as lists of
    ``(position, image index)``: ``plan.steps`` lists per iteration (module docstring)."""

    def __init__(self, num_images: int, plan: BatchPlan, rank: int, seed: int, start_iter: int = 0):
        if num_images <= 0:
            raise ValueError("The training set is empty: check DATASETS.TRAIN and its registration.")
        self.num_images, self.plan, self.rank, self.seed, self.start_iter = num_images, plan, rank, seed, start_iter
        self._epoch, self._perm = -1, np.arange(0)

    def image_index(self, position: int) -> int:
        epoch = position // self.num_images
        if epoch != self._epoch:
            rng = np.random.Generator(np.random.PCG64(derive_seed(self.seed, _PERMUTATION, epoch)))
            self._epoch, self._perm = epoch, rng.permutation(self.num_images)
        return int(self._perm[position % self.num_images])

    def positions(self, iteration: int, step: int) -> range:
        """Stream positions of this process's micro-batch at ``step`` of ``iteration``."""
        p = self.plan
        start = iteration * p.total + (step * p.world + self.rank) * p.per_step
        return range(start, start + p.per_step)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        iteration = self.start_iter
        while True:
            for step in range(self.plan.steps):
                yield [(pos, self.image_index(pos)) for pos in self.positions(iteration, step)]
            iteration += 1


class SeededMapDataset(Dataset):
    """``dataset[(position, index)]`` = mapper(dicts[index]) with the augmentation seeded by position."""

    def __init__(self, dicts: Sequence[Dict], mapper, seed: int):
        self.dicts, self.mapper, self.seed = dicts, mapper, seed

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, key: Tuple[int, int]) -> Dict:
        position, index = key
        np_state, py_state = np.random.get_state(), random.getstate()
        seed = derive_seed(self.seed, _AUGMENTATION, position)
        np.random.seed(seed)
        random.seed(seed)
        try:
            out = self.mapper(self.dicts[index])
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        if out is None:
            raise ValueError(f"The training mapper returned None for image {index} of DATASETS.TRAIN.")
        return out


class TrainStream:
    """Iterable over iterations: each item is the list of ``plan.steps`` micro-batches (lists of
    dataset dicts) of this process. The DataLoader starts on the first ``next``, from ``start_iter``
    (set by the trainer after loading a checkpoint); ``seed`` may be replaced from a checkpoint too."""

    def __init__(self, dicts: Sequence[Dict], mapper, plan: BatchPlan, seed: int, num_workers: int):
        self.dicts, self.mapper, self.plan, self.seed, self.num_workers = dicts, mapper, plan, seed, num_workers
        self.start_iter = 0

    def __iter__(self) -> Iterator[List[List[Dict]]]:
        sampler = StreamBatchSampler(len(self.dicts), self.plan, comm.get_rank(), self.seed, self.start_iter)
        loader = DataLoader(SeededMapDataset(self.dicts, self.mapper, self.seed), batch_sampler=sampler,
                            num_workers=self.num_workers, collate_fn=list)
        micro = iter(loader)
        while True:
            yield [next(micro) for _ in range(self.plan.steps)]


def shared_seed(cfg_seed: int) -> int:
    """cfg.SEED, or one random seed shared by every process when it is negative."""
    return int(cfg_seed) if cfg_seed >= 0 else int(comm.shared_random_seed()) % (2 ** 31)


def build_train_stream(cfg, mapper, dicts: Optional[Sequence[Dict]] = None) -> TrainStream:
    """The stream of DATASETS.TRAIN through ``mapper`` with the batch split of :func:`batch_plan`."""
    if dicts is None:
        dicts = DatasetFromList(get_detection_dataset_dicts(list(cfg.DATASETS.TRAIN), filter_empty=False), copy=False)
    plan = batch_plan(cfg, comm.get_world_size())
    seed = shared_seed(cfg.SEED)
    logger.info(f"Training stream: {len(dicts)} images, seed {seed}, {plan.steps} x {plan.per_step} images per process per step.")
    return TrainStream(dicts, mapper, plan, seed, cfg.DATALOADER.NUM_WORKERS)
