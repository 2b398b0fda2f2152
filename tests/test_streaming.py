"""Streaming a split from the dataset Parquet: shards disjoint, complete and equal across ranks and workers,
shuffled per epoch, deterministic by seed; and the loader choice."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from leukolab.config.experiment import load_experiment
from leukolab.data.etl.schema import DATASET_SCHEMA
from leukolab.data.reading.loading import choose_loading, load_experiment_splits
from leukolab.data.reading.streaming import SmearStream, part_bounds, plan_pieces
from leukolab.training.loop import evaluate, fit


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """103 train and 20 val rows over 3 files of row groups of 7 rows; each image's pixels spell its row number."""
    root = tmp_path_factory.mktemp("stream-dataset")
    (root / "data").mkdir()
    number, rng = 0, np.random.default_rng(0)
    for part, rows in enumerate((50, 40, 33)):
        frame = {name: [None] * rows for name in DATASET_SCHEMA.names}
        for k in range(rows):
            split = "val" if number % 6 == 5 and number < 120 else "train"
            label = int(rng.integers(2))
            pixels = np.zeros((32, 32, 3), np.uint8)
            pixels[..., 0], pixels[..., 1], pixels[..., 2] = number % 256, number // 256, 40 + 150 * label
            frame["image"][k], frame["label"][k], frame["split"][k] = png(pixels), label, split
            frame["class_name"][k], frame["source_path"][k] = f"c{label}", f"x/{number:05d}.png"
            frame["mask_status"][k] = "missing"
            number += 1
        pq.write_table(pa.table(frame, schema=DATASET_SCHEMA), root / "data" / f"part-{part:05d}.parquet", row_group_size=7)
    (root / "manifest.json").write_text(json.dumps({"image_size": 32, "classes": ["c0", "c1"]}))
    return root


def numbers(items) -> list[int]:
    """The row numbers the images spell."""
    return [int(image[0, 0, 0]) + 256 * int(image[1, 0, 0]) for image, *_ in items]


def train_numbers() -> list[int]:
    return [n for n in range(123) if not (n % 6 == 5 and n < 120)]


def test_pieces_number_the_split_in_file_order(dataset):
    pieces = plan_pieces(dataset, "train")
    assert sum(len(p.rows) for p in pieces) == 103 and [p.first for p in pieces] == list(np.cumsum([0] + [len(p.rows) for p in pieces[:-1]]))
    assert numbers(SmearStream(dataset, "train")) == train_numbers()  # no shuffle: file order, every row
    with pytest.raises(ValueError, match="empty"):
        plan_pieces(dataset, "test")


@pytest.mark.parametrize("world, workers", [(1, 1), (2, 1), (3, 2), (2, 3)])
def test_ranks_and_workers_share_an_epoch_disjointly_and_completely(dataset, world, workers):
    seen = []
    for rank in range(world):
        stream = SmearStream(dataset, "train", shuffle=True, shuffle_buffer=10, seed=5).shard(rank, world)
        stream.set_epoch(1)
        loader = DataLoader(stream, batch_size=4, num_workers=workers, drop_last=True)
        batches = list(loader)
        assert len(batches) == stream.batches(4, workers, drop_last=True)  # equal on every rank: DDP steps together
        rank_rows = numbers(_items(stream, workers))
        assert len(rank_rows) == 103 // world == len(stream.indices())
        assert sorted(rank_rows) == sorted(train_numbers()[i] for i in stream.indices())
        seen.append(set(rank_rows))
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == world * (103 // world)  # disjoint, nothing lost
    assert world > 1 or seen[0] == set(train_numbers())


def _items(stream, workers):
    """Every item of the stream as a DataLoader with ``workers`` workers hands them out (one per batch)."""
    return [(image[0], *rest) for image, *rest in DataLoader(stream, batch_size=1, num_workers=workers)]


def test_same_seed_same_order_new_epoch_new_order(dataset):
    def order(seed, epoch, rank=0):
        stream = SmearStream(dataset, "train", shuffle=True, shuffle_buffer=16, seed=seed).shard(rank, 2)
        stream.set_epoch(epoch)
        return numbers(stream)

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 0)) != order(1, 0)  # shuffled within the buffer, not just pieces reordered
    assert set(order(1, 0)) != set(order(1, 1))  # a rank's shard changes with the epoch's order of pieces


def test_part_bounds_cut_equal_contiguous_parts():
    parts = [part_bounds(103, 2, rank, 3, worker) for rank in range(2) for worker in range(3)]
    assert parts[0][0] == 0 and parts[-1][1] == 102 and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert {stop - start for start, stop in parts} <= {17, 18}


def test_auto_loading_streams_what_would_not_fit_and_trains_and_evaluates_the_same_way(dataset, caplog, monkeypatch):
    from leukolab.data.reading import loading

    monkeypatch.setattr(loading.log, "disabled", False)  # alembic's fileConfig (an earlier MLflow store) disables loggers
    experiment = load_experiment("simple-cnn", {"training": {"epochs": 2, "batch_size": 8}, "model": {"width": 4}})
    assert choose_loading(experiment, dataset, ("train", "val")) == "memory"
    tight = experiment.model_copy(update={"data": experiment.data.model_copy(update={"memory_limit_mb": 0, "workers": 2})})
    with caplog.at_level("INFO"):
        assert choose_loading(tight, dataset, ("train", "val")) == "streaming"
    assert "data.memory_limit_mb=0" in caplog.text
    streams = load_experiment_splits(tight, dataset, ("train", "val"))
    memory = load_experiment_splits(tight, dataset, ("train", "val"), "memory")
    assert isinstance(streams["train"], SmearStream) and torch.equal(streams["val"].labels, memory["val"].labels)
    torch.manual_seed(0)
    from leukolab.models.factory import build_model

    model = build_model(tight, 2)
    result = fit(model, streams["train"], streams["val"], tight, [0.5] * 3, [0.25] * 3, ["c0", "c1"])
    assert [row["epoch"] for row in result.history] == [1, 2]
    streamed = evaluate(model, streams["val"], [0.5] * 3, [0.25] * 3, ["c0", "c1"], "classification")
    in_memory = evaluate(model, memory["val"], [0.5] * 3, [0.25] * 3, ["c0", "c1"], "classification")
    assert streamed == pytest.approx(in_memory)  # the same images in the same order: the same metrics


def test_a_sample_draws_distinct_rows_from_every_piece_by_seed(dataset):
    stream = SmearStream(dataset, "train")

    def sample(count, seed):
        return [int(image[0, 0, 0]) + 256 * int(image[1, 0, 0]) for image in stream.sample(count, seed).images]

    drawn = sample(40, seed=3)
    assert len(set(drawn)) == 40 and set(drawn) <= set(train_numbers())
    assert drawn == sample(40, seed=3) and drawn != sample(40, seed=4)
    assert max(drawn) > 80 and min(drawn) < 40  # across the files, not the split's head
    assert sorted(sample(500, seed=3)) == train_numbers()  # more than the split holds: all of it


def test_a_preprocessed_stream_yields_what_the_preprocessed_split_in_memory_holds(dataset):
    from leukolab.models.preprocessing import Preprocessing, fit_stain_target

    memory = load_experiment_splits(load_experiment("simple-cnn"), dataset, ("val",), "memory")["val"]
    preprocessing = Preprocessing(0.1, fit_stain_target(memory.images))
    stream = SmearStream(dataset, "val").preprocessed(preprocessing)
    streamed = torch.stack([image for image, *_ in stream])
    assert torch.equal(streamed, memory.preprocessed(preprocessing).images)
    assert not torch.equal(streamed, memory.images) and not SmearStream(dataset, "val").preprocessing.active
    assert torch.equal(stream.head(3).images, streamed[:3])
