"""The ETL driver's column-by-column conversion of Arrow metadata to pandas."""

import pandas as pd
import pyarrow as pa

from leukolab.data.etl.memory import arrow_to_pandas, large_allocations_returned


def metadata_table() -> pa.Table:
    """Three batches of first-pass-like metadata, every column in buffers of its own (as Spark's selfDestruct
    collects them): repeated and distinct strings, nulls, integers with nulls, floats."""
    batches = []
    for batch in range(3):
        rows = range(batch * 4, batch * 4 + 4)
        columns = {
            "source_path": [f"Original/Benign/s{row:05d}.jpg" for row in rows],
            "role": ["original", "original", "mask", None],
            "content_hash": [f"{row:064x}" for row in rows],
            "width": [96, None, 96, 120],
            "pixel_sum_r": [row / 3 for row in rows],
        }
        arrays = [pa.concat_arrays([pa.array(values)]) for values in columns.values()]
        batches.append(pa.RecordBatch.from_arrays(arrays, names=list(columns)))
    return pa.Table.from_batches(batches)


def test_the_frame_is_the_one_arrow_would_convert_to():
    expected = metadata_table().to_pandas()
    converted = arrow_to_pandas(metadata_table(), distinct=("source_path", "content_hash"))
    pd.testing.assert_frame_equal(converted, expected)
    assert list(converted.columns) == list(expected.columns)  # distinct columns are converted last, not placed last


def test_repeated_strings_share_one_object():
    converted = arrow_to_pandas(metadata_table(), distinct=("source_path", "content_hash"))
    roles = converted["role"]
    assert roles[0] is roles[1] is roles[4]  # "original", deduplicated across batches
    assert converted.loc[0, "source_path"] == "Original/Benign/s00000.jpg"


def test_conversion_works_inside_large_allocations_returned():
    with large_allocations_returned():
        converted = arrow_to_pandas(metadata_table())
    assert converted.shape == (12, 5)
    assert converted["width"].isna().sum() == 3
