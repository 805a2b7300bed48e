"""Reading and checking a video folder's ``metadata.jsonl`` / ``metadata.csv``.

Every problem is a ``ValueError`` that names the file, the line and the column, and says what to write there:
a broken JSON line, a line that is not an object, a row without a media path, a missing, null or empty caption.
Rows are given the same columns (a column missing from a row is ``None``) before they become a
`datasets.Dataset`, which otherwise takes its columns from the first row: a first row without a caption made the
whole dataset train without captions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def read_metadata(folder: Path) -> tuple[list[dict], Path, list[int]]:
    """``(rows, path of the metadata file, line number of each row)``; rows have every column of the file."""
    for name in METADATA_FILES:
        path = folder / name
        if not path.is_file():
            continue
        rows, lines = [], []
        if name.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(
                            f"{path} line {number} is not valid JSON ({error.msg} at column {error.colno}); each "
                            'line must be one object, e.g. {"file_name": "videos/0001.mp4", "text": "a caption"}.'
                        ) from None
                    if not isinstance(row, dict):
                        raise ValueError(f"{path} line {number} must be a JSON object, got {type(row).__name__}.")
                    rows.append(row)
                    lines.append(number)
        else:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    rows.append({k: v for k, v in row.items() if k is not None})
                    lines.append(reader.line_num)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        return [{c: row.get(c) for c in columns} for row in rows], path, lines
    raise ValueError(
        f"No metadata file in {folder}: add `metadata.jsonl` (one JSON object per line) or `metadata.csv` with a "
        "`file_name` column (media path relative to the folder) and a `text` and/or `label` column, e.g. "
        '{"file_name": "videos/0001.mp4", "text": "a red circle moving left"}.'
    )


def check_rows(rows: list[dict], where: str, lines: list[int] | None, media: str | None, text: str | None) -> None:
    """Every row has a media path and (when ``text`` is a column name) a non-empty string caption.

    Args:
        where: the file (or dataset) name for the messages; ``lines``: each row's line number (else row index).
        media: the media column to require, or ``None`` (not checked).
        text: the caption column to require, or ``None`` (class-conditional data: captions are not used).
    """
    if not rows:
        raise ValueError(f"{where} has no rows: add one row per video or image.")
    for i, row in enumerate(rows):
        at = f"{where} line {lines[i]}" if lines else f"{where} row {i}"
        value = row.get(media) if media is not None else "-"
        if isinstance(value, dict):
            value = value.get("path") or value.get("bytes")
        if not value or not isinstance(value, str | bytes):
            raise ValueError(
                f"{at}: `{media}` is {value!r}; give the video's or image's path (relative to the folder)."
            )
        if text is not None:
            caption = row.get(text)
            if not isinstance(caption, str) or not caption.strip():
                state = "missing" if text not in row or caption is None else f"{caption!r}"
                raise ValueError(
                    f'{at}: `{text}` is {state}; give every row a caption (an empty caption would train on ""), '
                    "or train class-conditionally on a `label` column."
                )
