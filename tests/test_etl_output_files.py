"""The second pass's dataset files: the same curated rows make the same files whatever the part files are named."""

import uuid

import numpy as np
import pandas as pd

from leukolab.data.etl.parquet import output_files


def curated_rows(names: list[str]) -> pd.DataFrame:
    """Eight part files of 64 images each, in pairs of equal bytes (as batches of similar images often are),
    named ``names``; the images' paths run in part order."""
    sizes = np.repeat([1000, 1000, 900, 900, 800, 800, 700, 700], 64)
    return pd.DataFrame({"part": np.repeat(names, 64), "png_bytes": sizes,
                         "source_path": [f"Original/Benign/s{n:05d}.jpg" for n in range(len(sizes))]})


def files_by_first_image(table: pd.DataFrame, tasks: int) -> list[list[str]]:
    first = table.groupby("part")["source_path"].min()
    return [[first[part] for part in parts] for parts in output_files(table, tasks)]


def test_files_hold_the_same_rows_whatever_the_parts_are_named():
    rng = np.random.default_rng(0)
    layouts = []
    for _ in range(5):
        names = [f"part-{uuid.UUID(int=int(rng.integers(2**62))).hex}.parquet" for _ in range(8)]
        layouts.append(files_by_first_image(curated_rows(names), tasks=3))
    assert all(layout == layouts[0] for layout in layouts)
    assert sorted(sum(layouts[0], [])) == sorted(curated_rows([f"p{n}" for n in range(8)])
                                                 .groupby("part")["source_path"].min())  # every part, once


def test_files_are_about_equal_in_bytes():
    table = curated_rows([f"p{n}" for n in range(8)])
    sizes = table.groupby("part")["png_bytes"].sum()
    loads = [sum(sizes[part] for part in parts) for parts in output_files(table, tasks=4)]
    assert len(loads) == 4 and max(loads) == min(loads)  # 1000+700, 1000+700, 900+800, 900+800 (x 64)
