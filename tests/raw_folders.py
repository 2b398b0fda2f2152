"""Raw folders for the ETL tests: files written where a layout puts them, the usual bad files planted beside a good
one, and the quarantine reasons a manifest gives."""

from PIL import Image
from sample_images import encode


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def plant_bad_files(root, place, good) -> dict[str, str]:
    """The usual bad files, where ``place(class_index, stem, suffix)`` puts them in a layout: zero bytes, text named
    as an image, a truncated copy of ``good`` and an 8 px image in class 0, and a byte copy of ``good`` (a class-0
    image) in class 1. Returns the reason expected for each of them and for ``good``, by relative path."""
    data = good.read_bytes()
    planted = {
        place(0, "zero", ".jpg"): (b"", "empty"),
        place(0, "notes", ".jpg"): (b"not an image", "not_an_image"),
        place(0, "cut", good.suffix): (data[: len(data) // 3], "truncated"),
        place(0, "tiny", ".png"): (encode(Image.new("RGB", (8, 8)), "PNG"), "too_small"),
        place(1, "misfiled", good.suffix): (data, "conflicting_labels"),
    }
    for path, (content, _) in planted.items():
        write(path, content)
    expected = {path: reason for path, (_, reason) in planted.items()} | {good: "conflicting_labels"}
    return {path.relative_to(root).as_posix(): reason for path, reason in expected.items()}


def reasons(manifest: dict) -> dict[str, str]:
    return {q["source_path"]: q["reason"] for q in manifest["quarantine"]}
