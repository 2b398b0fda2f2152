"""The banded (multi-index hashing) near-duplicate search on Spark against the driver's all-pairs search."""

import numpy as np
import pytest

from leukolab.data.etl import near_duplicates
from leukolab.data.etl.near_duplicates import band_plan, find_near_duplicates, spark_near_duplicate_pairs
from leukolab.data.etl.splits import near_duplicate_pairs


def planted_hashes(count: int, seed: int = 0) -> list[str]:
    """Random 64-bit hashes with planted copies 0..6 bits from an original, chained copies among them."""
    rng = np.random.default_rng(seed)
    values = list(rng.integers(0, 2**63, count, dtype=np.int64).astype(np.uint64) * np.uint64(2)
                  + rng.integers(0, 2, count).astype(np.uint64))
    for _ in range(count // 4):
        base = values[int(rng.integers(len(values)))]
        flips = rng.choice(64, int(rng.integers(0, 7)), replace=False)
        values.append(base ^ np.uint64(sum(1 << int(bit) for bit in flips)))
    order = rng.permutation(len(values))
    return [f"{int(values[i]):016x}" for i in order]


def test_band_plan_covers_every_bit_and_keeps_the_pigeonhole():
    for count in (10, 1_000, 100_000, 10_000_000):
        for distance in (0, 1, 4, 10):
            bands, radius = band_plan(count, distance)
            assert sum(width for _, width in bands) == 64
            assert [offset for offset, _ in bands] == [sum(w for _, w in bands[:k]) for k in range(len(bands))]
            assert radius == distance // len(bands)  # some band holds at most this many of the differing bits
    assert len(band_plan(1_000_000, 4)[0]) < len(band_plan(100, 4)[0])  # wider bands (about log2 n bits) as data grows


@pytest.mark.integration
def test_spark_search_finds_exactly_the_all_pairs_result(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOLAB_WORKSPACE", str(tmp_path))
    from leukolab.data.spark import spark_session

    spark = spark_session("local[2]")
    try:
        hashes = planted_hashes(400)
        for distance, bands in ((4, None), (6, 3)):  # one band plan without flips, one flipping 2 bits per band
            exact = near_duplicate_pairs(hashes, distance)
            assert len(exact) >= 20
            assert spark_near_duplicate_pairs(spark, hashes, distance, bands) == exact
        monkeypatch.setattr(near_duplicates, "SPARK_FROM", 100)  # the ETL's entry point takes the Spark path
        assert find_near_duplicates(hashes, 4, spark=spark) == near_duplicate_pairs(hashes, 4)
        assert spark_near_duplicate_pairs(spark, hashes[:1], 4) == []
    finally:
        spark.stop()
