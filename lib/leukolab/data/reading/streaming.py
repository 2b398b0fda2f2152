"""Stream a split of the dataset Parquet: row groups sharded over ranks and DataLoader workers, decoded as batches form.

A rank's memory is bounded by its shuffle buffer of encoded images and the
row group it reads, whatever the dataset's size. Each epoch:

1. The split's row groups ("pieces": a row group's rows of that split) are put
   in a seeded order, a new one per epoch (in file order without shuffling).
2. Their rows, concatenated in that order, are cut into ``world`` contiguous
   slices of ``total // world`` rows (all of them with one rank): rank ``r``
   takes slice ``r``, so ranks are disjoint and equal, as DDP needs. Each rank's
   slice is cut again into near-equal contiguous parts, one per DataLoader worker.
3. A worker reads only the row groups its part touches, keeps the encoded
   images in a buffer of ``shuffle_buffer`` rows and hands out a random one
   each time the buffer is full (seeded by seed, epoch, rank and worker),
   decoding it as it goes.

Same seed and epoch, same order on a rank. Items are those of
:class:`~leukolab.data.reading.dataset.SmearDataset`: ``(image uint8 CHW, label, mask, has_mask)``.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from leukolab.data.reading.dataset import SmearDataset
from leukolab.images import image_array
from leukolab.models.preprocessing import Preprocessing


@dataclass(frozen=True)
class Piece:
    """The rows of one split in one row group of one Parquet file."""

    file: str
    row_group: int
    rows: np.ndarray  # positions within the row group
    first: int  # the split-wide number of its first row (rows are numbered in file, row group, row order)


def plan_pieces(dataset_dir: str | Path, split: str, masked_only: bool = False) -> list[Piece]:
    """The split's pieces, reading only the small ``split`` and ``mask_status`` columns; with ``masked_only``,
    only rows with a plausible mask (what a segmentation experiment trains on)."""
    pieces, first = [], 0
    for path in sorted((Path(dataset_dir) / "data").glob("*.parquet")):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            columns = parquet.read_row_group(group, columns=["split", "mask_status"])
            keep = np.asarray(columns.column("split").to_numpy(zero_copy_only=False) == split)
            if masked_only:
                keep &= np.asarray(columns.column("mask_status").to_numpy(zero_copy_only=False) == "ok")
            rows = np.flatnonzero(keep)
            if len(rows):
                pieces.append(Piece(str(path), group, rows, first))
                first += len(rows)
    if not pieces:
        raise ValueError(f"split {split!r} is empty in {dataset_dir}" + (" (no plausible masks)" if masked_only else ""))
    return pieces


def part_bounds(total: int, world: int, rank: int, workers: int, worker: int) -> tuple[int, int]:
    """``[start, stop)`` of a worker's part of the epoch's row sequence: rank slices of ``total // world`` rows
    (all ``total`` with one rank), each cut into ``workers`` near-equal contiguous parts."""
    per_rank = total // world
    start = rank * per_rank
    return start + per_rank * worker // workers, start + per_rank * (worker + 1) // workers


def piece_order(count: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's order of ``count`` pieces: a permutation seeded by (seed, epoch), or file order."""
    return np.random.default_rng(_seed(seed, "pieces", epoch)).permutation(count) if shuffle else np.arange(count)


def part_rows(pieces: list[Piece], order: np.ndarray, start: int, stop: int) -> list[tuple[Piece, np.ndarray]]:
    """The pieces (in ``order``) that rows ``[start, stop)`` of the epoch's sequence fall in, each with the
    positions of its rows there."""
    taken, offset = [], 0
    for index in order:
        piece = pieces[index]
        low, high = max(start - offset, 0), min(stop - offset, len(piece.rows))
        if low < high:
            taken.append((piece, np.arange(low, high)))
        offset += len(piece.rows)
        if offset >= stop:
            break
    return taken


class SmearStream(IterableDataset):
    """One split streamed from the dataset Parquet (see the module's docstring).

    ``shard(rank, world)`` gives a rank's view; ``set_epoch`` picks the
    epoch's order (as :class:`~torch.utils.data.DistributedSampler`). With
    ``shuffle=False`` rows come in file order, all of them (evaluation).
    """

    def __init__(self, dataset_dir: str | Path, split: str, with_masks: bool = False, masked_only: bool = False,
                 shuffle: bool = False, shuffle_buffer: int = 2048, seed: int = 0):
        self.dataset_dir, self.split, self.with_masks = str(dataset_dir), split, with_masks
        self.pieces = plan_pieces(dataset_dir, split, masked_only)
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, max(1, shuffle_buffer), seed
        self.rank, self.world, self.epoch = 0, 1, 0
        self._labels = self._mask_flags = None
        self.preprocessing = Preprocessing()
        """Applied to every image as it is decoded (:meth:`preprocessed`); by default nothing."""

    def preprocessed(self, preprocessing: Preprocessing) -> SmearStream:
        """This stream with ``preprocessing`` applied to each image it yields, :meth:`head` and :meth:`sample` included."""
        stream = copy.copy(self)
        stream.preprocessing = preprocessing
        return stream

    def shard(self, rank: int, world: int) -> SmearStream:
        """This stream as rank ``rank`` of ``world`` sees it."""
        self.rank, self.world = rank, world
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def total(self) -> int:
        """Rows of the split."""
        return sum(len(piece.rows) for piece in self.pieces)

    def __len__(self) -> int:
        """Rows this rank sees per epoch."""
        return self.total // self.world

    def batches(self, batch_size: int, workers: int, drop_last: bool) -> int:
        """Batches a DataLoader with ``workers`` workers makes of this rank's rows per epoch (the same on every rank)."""
        parts = [part_bounds(self.total, self.world, 0, max(workers, 1), w) for w in range(max(workers, 1))]
        return sum((stop - start) // batch_size if drop_last else -(-(stop - start) // batch_size) for start, stop in parts)

    def indices(self, epoch: int | None = None) -> list[int]:
        """The split-wide numbers of the rows this rank sees in an epoch (all workers together)."""
        order = piece_order(len(self.pieces), self.seed, self.epoch if epoch is None else epoch, self.shuffle)
        start, stop = part_bounds(self.total, self.world, self.rank, 1, 0)
        return [piece.first + int(i) for piece, positions in part_rows(self.pieces, order, start, stop) for i in positions]

    @property
    def labels(self) -> torch.Tensor:
        """Every label of the split, in row-number order (a small column: for class weights)."""
        if self._labels is None:
            self._labels = torch.as_tensor(self._column("label").astype(np.int64))
        return self._labels

    @property
    def has_mask(self) -> torch.Tensor:
        """Whether each row of the split has a plausible mask, in row-number order (always False without ``with_masks``)."""
        if self._mask_flags is None:
            flags = self._column("mask_status") == "ok" if self.with_masks else np.zeros(self.total, bool)
            self._mask_flags = torch.as_tensor(np.asarray(flags, dtype=bool))
        return self._mask_flags

    @property
    def mask_images(self) -> int:
        return int(self.has_mask.sum())

    def head(self, count: int) -> SmearDataset:
        """The split's first ``count`` rows, decoded in memory."""
        frames, left = [], count
        for piece in self.pieces:
            if left <= 0:
                break
            frames.append(self._read(piece, piece.rows[:left]).to_pandas())
            left -= len(frames[-1])
        return SmearDataset(pd.concat(frames, ignore_index=True), with_masks=self.with_masks).preprocessed(self.preprocessing)

    def sample(self, count: int, seed: int) -> SmearDataset:
        """``count`` rows drawn uniformly without replacement (all when the split has fewer), decoded in memory."""
        chosen = np.sort(np.random.default_rng(_seed(seed, "sample")).permutation(self.total)[:count])
        frames = []
        for piece in self.pieces:
            inside = chosen[(chosen >= piece.first) & (chosen < piece.first + len(piece.rows))] - piece.first
            if len(inside):
                frames.append(self._read(piece, piece.rows[inside]).to_pandas())
        return SmearDataset(pd.concat(frames, ignore_index=True), with_masks=self.with_masks).preprocessed(self.preprocessing)

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        order = piece_order(len(self.pieces), self.seed, self.epoch, self.shuffle)
        start, stop = part_bounds(self.total, self.world, self.rank, workers, worker)
        rng = np.random.default_rng(_seed(self.seed, "buffer", self.epoch, self.rank, worker))
        buffer: list[tuple] = []
        for piece, positions in part_rows(self.pieces, order, start, stop):
            table = self._read(piece, piece.rows[positions])
            for row in zip(*(table.column(name).to_pylist() for name in ("image", "label", "mask"))):
                buffer.append(row)
                if self.shuffle and len(buffer) >= self.shuffle_buffer:
                    yield self._item(_pop_random(buffer, rng))
            if not self.shuffle:
                yield from map(self._item, buffer)
                buffer.clear()
        while buffer:
            yield self._item(_pop_random(buffer, rng))

    def _read(self, piece: Piece, rows: np.ndarray):
        columns = ["image", "label", "mask", "source_path", "class_name"]
        return pq.ParquetFile(piece.file).read_row_group(piece.row_group, columns=columns).take(rows)

    def _column(self, name: str) -> np.ndarray:
        return np.concatenate([pq.ParquetFile(p.file).read_row_group(p.row_group, columns=[name]).column(name)
                               .to_numpy(zero_copy_only=False)[p.rows] for p in self.pieces])

    def _item(self, row: tuple):
        image_bytes, label, mask_bytes = row
        image = torch.from_numpy(np.ascontiguousarray(image_array(image_bytes).transpose(2, 0, 1)))
        if self.preprocessing.active:
            image = self.preprocessing.apply(image[None])[0]
        has_mask = self.with_masks and mask_bytes is not None
        if has_mask:
            mask = torch.from_numpy(image_array(mask_bytes) > 0).unsqueeze(0).to(torch.uint8)
        elif self.with_masks:
            mask = torch.zeros((1, *image.shape[-2:]), dtype=torch.uint8)
        else:
            mask = torch.zeros((1, 1, 1), dtype=torch.uint8)
        return image, torch.tensor(label, dtype=torch.long), mask, torch.tensor(has_mask)


def _pop_random(buffer: list, rng: np.random.Generator):
    """Remove and return a random element in O(1) (swap with the last)."""
    index = int(rng.integers(len(buffer)))
    buffer[index], buffer[-1] = buffer[-1], buffer[index]
    return buffer.pop()


def _seed(seed: int, *salt) -> int:
    """A seed that does not depend on Python's hash randomisation."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, (seed, *salt))).encode()).digest()[:8], "little")
