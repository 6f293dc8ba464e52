"""Infinite, seeded, resumable batch samplers whose global stream does not depend on the process count: the plain
stream of permutations (`StreamSampler`) and the class-aware one (`MPerClassSampler`, MCL's batches), chosen per
stage by its `sampler:` block (`SamplerConfig`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import Field

from ssl_kd.data.hashing import mix_seeds
from ssl_kd.options import Strict


class _Batches:
    """What both samplers share: batch t as (position, sample seed) pairs from `batch_arrays`, computed directly
    (O(1) in t: resume needs no replay), and an endless iterator from `start_batch` (a DataLoader's batch_sampler)."""

    start_batch: int

    def batch_arrays(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def batch(self, t: int) -> list[tuple[int, int]]:
        pos, seeds = self.batch_arrays(t)
        return list(zip(pos.tolist(), seeds.tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        t = self.start_batch
        while True:
            yield self.batch(t)
            t += 1


class StreamSampler(_Batches):
    """Batch sampler (for `DataLoader(batch_sampler=...)`) over an endless stream of seeded permutations.

    The global stream concatenates permutations of range(n); pass p is drawn by a generator seeded with
    (seed, p). With drop_last each pass keeps its first (n // G) * G items, G = batch_size * world_size, so a
    global batch never spans two passes; a set smaller than one global batch (e.g. 40 labels, batch 64)
    cannot drop anything and streams across passes instead, like the references' samplers with replacement.
    Rank r's t-th batch is global positions [t*G + r*b, t*G + (r+1)*b), so the ranks together see exactly the
    single-process stream. Items are (pos, sample_seed) with sample_seed = mix_seed(seed, global position):
    augmentation depends on where a sample sits in the stream, never on which worker or rank drew it.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, drop_last: bool = True,
        start_batch: int = 0,
    ):  # fmt: skip
        if n < 1:
            raise ValueError("StreamSampler needs a non-empty dataset")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start_batch < 0:
            raise ValueError(
                f"bad sampler layout: batch_size={batch_size} rank={rank}/{world_size} start={start_batch}"
            )
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last, self.start_batch = bool(drop_last), int(start_batch)
        self.global_batch = self.batch_size * self.world_size
        whole = (self.n // self.global_batch) * self.global_batch
        self.pass_len = whole if self.drop_last and whole > 0 else self.n  # stream items per pass
        self._perms: dict[int, np.ndarray] = {}

    @property
    def batches_per_pass(self) -> int:
        """Global batches that make one pass over the data (rounded up when passes are not cut to batches)."""
        return -(-self.pass_len // self.global_batch)

    def permutation(self, p: int) -> np.ndarray:
        if p not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed & ((1 << 64) - 1), int(p)])
            self._perms[p] = rng.permutation(self.n)
        return self._perms[p]

    def batch_arrays(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's t-th batch as (positions, sample seeds) arrays, for batched (device-resident) datasets."""
        start = t * self.global_batch + self.rank * self.batch_size
        q = np.arange(start, start + self.batch_size, dtype=np.int64)
        passes, offsets = np.divmod(q, self.pass_len)
        pos = np.empty(self.batch_size, np.int64)
        for p in np.unique(passes):
            sel = passes == p
            pos[sel] = self.permutation(int(p))[offsets[sel]]
        return pos, mix_seeds(self.seed, q)

    def __repr__(self) -> str:
        return (
            f"StreamSampler(n={self.n}, batch_size={self.batch_size}, seed={self.seed}, rank={self.rank}, "
            f"world_size={self.world_size}, drop_last={self.drop_last}, start_batch={self.start_batch})"
        )


class SamplerConfig(Strict):
    """A stage's `sampler:` block: how its labelled streams draw batches.

    `random` (default): the stream of seeded permutations. `m_per_class`: every global batch holds batch / m
    distinct classes with exactly m images each (MCL's MPerClassSampler, m = 2, so the supervised contrastive
    losses always find positives). Applied to the streams named in `streams` (default the labelled `train`
    stream; an unlabelled stream must not be sampled by its hidden labels)."""

    kind: Literal["random", "m_per_class"] = "random"
    m: int = Field(2, ge=1)  # images per class in a batch (m_per_class)
    streams: list[str] = Field(default_factory=lambda: ["train"])


class MPerClassSampler(_Batches):
    """Class-aware batch sampler with the StreamSampler interface (`batch`, `batch_arrays`, iteration).

    Global batch t (G = batch_size * world_size items) is drawn by a generator seeded with (seed, t): a random
    permutation of the classes present, its first G / m taken, and for each m positions of that class uniformly
    without replacement (with replacement when the class has fewer than m images; all classes drawn at once, no
    per-class loop), laid out class by class. This is
    pytorch-metric-learning's MPerClassSampler as MCL uses it (labels shuffled per batch, `safe_random_choice`),
    except that each batch is a pure function of (seed, t) rather than one global NumPy stream, so a resumed or
    multi-process run draws the same batches. Rank r takes the global batch's items [r*b, (r+1)*b); since b is a
    multiple of m, each rank holds whole classes: m images of each class it draws. Sample seeds are
    mix_seed(seed, global position) as in StreamSampler. Epochs are len(data) // batch steps as in the reference
    (`length_before_new_iter` = the train set size); images are drawn per batch, not as a pass over the set.
    """

    def __init__(
        self, labels: np.ndarray, m: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
        start_batch: int = 0,
    ):  # fmt: skip
        labels = np.asarray(labels, dtype=np.int64)
        if m < 1 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start_batch < 0:
            raise ValueError(f"bad sampler layout: m={m} batch_size={batch_size} rank={rank}/{world_size}")
        if batch_size % m:
            raise ValueError(f"the per-process batch {batch_size} is not a multiple of m = {m}")
        self.m, self.batch_size, self.seed = int(m), int(batch_size), int(seed)
        self.rank, self.world_size, self.start_batch = int(rank), int(world_size), int(start_batch)
        self.global_batch = self.batch_size * self.world_size
        self.order = np.argsort(labels, kind="stable")  # positions grouped by class, ascending within a class
        self.classes, self.starts, self.counts = np.unique(labels[self.order], return_index=True, return_counts=True)
        self.classes_per_batch = self.global_batch // self.m
        if self.classes_per_batch > len(self.classes):
            raise ValueError(
                f"a global batch of {self.global_batch} needs {self.classes_per_batch} distinct classes with "
                f"m = {self.m} each, but the data has only {len(self.classes)}"
            )

    def global_positions(self, t: int) -> np.ndarray:
        """The t-th global batch's dataset positions (class groups of m, in draw order)."""
        rng = np.random.default_rng([self.seed & ((1 << 64) - 1), int(t)])
        chosen = rng.permutation(len(self.classes))[: self.classes_per_batch]
        counts, u = self.counts[chosen], rng.random((len(chosen), self.m))
        enough = counts >= self.m  # else drawn with replacement, as the reference's safe_random_choice
        picks = np.empty((len(chosen), self.m), np.int64)
        for k in range(self.m):  # all classes at once: the k-th draw among the members not yet drawn
            j = np.floor(u[:, k] * np.where(enough, counts - k, counts)).astype(np.int64)
            for prev in np.sort(picks[:, :k], axis=1).T:  # skip past earlier picks (ascending): j-th unused member
                j += enough & (prev <= j)
            picks[:, k] = j
        return self.order[self.starts[chosen][:, None] + picks].reshape(-1)

    def batch_arrays(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's t-th batch as (positions, sample seeds)."""
        lo = self.rank * self.batch_size
        q = np.arange(t * self.global_batch + lo, t * self.global_batch + lo + self.batch_size, dtype=np.int64)
        return self.global_positions(t)[lo : lo + self.batch_size], mix_seeds(self.seed, q)

    def __repr__(self) -> str:
        return (
            f"MPerClassSampler(m={self.m}, classes={len(self.classes)}, batch_size={self.batch_size}, "
            f"seed={self.seed}, rank={self.rank}, world_size={self.world_size}, start_batch={self.start_batch})"
        )


def stream_labels(dataset) -> np.ndarray:
    """The label of each position of a stream dataset (ViewDataset: `targets`; DeviceViewDataset: its images'
    targets at its indices), for class-aware sampling."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return np.asarray(targets, dtype=np.int64)
    images = getattr(dataset, "images", None)
    targets = getattr(images, "targets", None)
    if targets is None:
        raise ValueError(f"{type(dataset).__name__} has no labels to sample by class")
    targets = targets.cpu().numpy() if hasattr(targets, "cpu") else np.asarray(targets)
    indices = getattr(dataset, "indices", None)
    return np.asarray(targets if indices is None else targets[indices], dtype=np.int64)
