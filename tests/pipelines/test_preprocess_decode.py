"""One odd file never ends the job: other pixel modes land with the right values, and any
unexpected exception while processing a sample becomes a quarantine record naming the file."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from preprocess_helpers import tiny_config, write_raw

from maskgan.data import celebamask as raw
from maskgan.data import defects, schema, synthetic
from maskgan.data.listing import scan_source
from maskgan.data.preprocess import process_batch, process_sample, run


def listed_rows(config) -> dict[int, dict]:
    return {row["id"]: row for row in scan_source(config.source_uri).rows}


def sample_files(row: dict) -> dict[str, bytes]:
    return {path: Path(path).read_bytes() for path in [row["image_path"], *row["mask_paths"]]}


def test_an_unexpected_exception_is_a_quarantine_reason_naming_file_and_exception(tmp_path):
    source = str(tmp_path / "raw")
    write_raw(source, num_images=3)
    (touched,) = defects.inject_defect(source, 1, "undecodable_mask")
    config = tiny_config(source, str(tmp_path / "out"))
    row = listed_rows(config)[1]
    out = process_sample(row, sample_files(row), config)
    # Pillow's DDS reader raises NotImplementedError: no decode rule knows it, the sample still ends well.
    assert out["error"].startswith(f"unexpected error while decoding {touched}: NotImplementedError: ")
    assert out["image"] == b"" and touched in out["files"]
    # A file that cannot be read (here: a folder) is this sample's problem, named with its error.
    row = listed_rows(config)[2]
    files = sample_files(row)
    files[row["mask_paths"][0]] = IsADirectoryError(21, "Is a directory")
    out = process_sample(row, files, config)
    assert (
        out["error"] == f"cannot read {row['mask_paths'][0]} (IsADirectoryError: [Errno 21] Is a directory)"
    )


def test_a_row_that_does_not_fit_the_schema_is_quarantined_not_the_batch(tmp_path):
    source = str(tmp_path / "raw")
    write_raw(source, num_images=3)
    config = tiny_config(source, str(tmp_path / "out"))
    rows = list(listed_rows(config).values())
    rows[1] = {**rows[1], "attributes": [300] + rows[1]["attributes"][1:]}  # not an int8
    table = process_batch(pa.Table.from_pylist(rows), dataclasses.replace(config, read_threads=1))
    errors = dict(zip(table["id"].to_pylist(), table["error"].to_pylist(), strict=True))
    assert errors[rows[0]["id"]] is None and errors[rows[2]["id"]] is None
    assert errors[rows[1]["id"]].startswith("unexpected error while storing its row")
    assert "300" in errors[rows[1]["id"]]


VALID = (
    "one_bit_mask",
    "palette_mask",
    "sixteen_bit_mask",
    "rgb_mask",
    "png_image_as_jpg",
    "exif_rotated_image",
)
INVALID = {"undecodable_mask": "NotImplementedError", "jpeg_mask": "the file is a JPEG"}


def test_odd_files_land_right_or_are_quarantined_and_the_job_finishes(tmp_path, ray_session):
    source, output = str(tmp_path / "raw"), str(tmp_path / "out")
    raw_config = write_raw(source, num_images=12)
    config = tiny_config(source, output, image_encoding="png", max_bad_fraction=0.5)
    rows = listed_rows(config)
    kinds = dict(zip([*VALID, *INVALID], range(1, 1 + len(VALID) + len(INVALID)), strict=True))
    reference = {  # the image each id gives before its file is rewritten
        i: raw.decode_image(Path(rows[i]["image_path"]).read_bytes(), config.decode) for i in kinds.values()
    }
    touched = {kind: defects.inject_defect(source, image_id, kind) for kind, image_id in kinds.items()}

    manifest = run(config).manifest
    counts = manifest.counts
    assert counts["input"] == 12 and counts["written"] + counts["quarantined"] == counts["input"]
    reasons = {entry.id: entry for entry in manifest.quarantined}
    assert set(reasons) == {kinds[kind] for kind in INVALID}
    for kind, text in INVALID.items():
        entry = reasons[kinds[kind]]
        (uri,) = touched[kind]
        assert uri in entry.reason or Path(uri).name in entry.reason, entry.reason  # names the file
        assert text in entry.reason and uri in entry.files, entry.reason
    assert "unexpected error while decoding" in reasons[kinds["undecodable_mask"]].reason

    written = {}
    for shard in manifest.shards:
        for row in pq.read_table(Path(output) / shard.path).to_pylist():
            written[row["id"]] = row
    assert set(written) == set(range(12)) - set(reasons)
    for image_id, row in written.items():  # every label is the one the masks draw, whatever their mode
        label = schema.decode_label(row["label"], 32)
        np.testing.assert_array_equal(
            label, synthetic.expected_label(raw_config, image_id), err_msg=str(image_id)
        )
        assert row["classes"] == raw.present_classes(label)
    for kind in ("png_image_as_jpg", "exif_rotated_image"):
        image_id = kinds[kind]
        image = schema.decode_image(written[image_id]["image"], "png", 32).astype(int)
        assert np.abs(image - reference[image_id]).mean() < 4, kind  # the stored pixels, not rotated
    rotated = np.rot90(reference[kinds["exif_rotated_image"]], k=-1)
    image = schema.decode_image(written[kinds["exif_rotated_image"]]["image"], "png", 32).astype(int)
    assert np.abs(image - rotated).mean() > 10


def test_readme_training_snippet_runs_on_a_preprocessed_output(tmp_path, ray_session):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = readme.split("**Reading it for training**")[1].split("```python\n")[1].split("```")[0]
    assert 'iter_batches("data/celebamask-parquet", "train", batch_size=8, shuffle=True, seed=0)' in snippet
    assert len(snippet.strip().splitlines()) <= 5
    write_raw(str(tmp_path / "raw"), num_images=12)
    run(tiny_config(str(tmp_path / "raw"), str(tmp_path / "out")))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet.replace("data/celebamask-parquet", str(tmp_path / "out")), {})
    shapes = printed.getvalue().splitlines()
    assert shapes and shapes[0] == (
        "torch.Size([8, 3, 32, 32]) torch.Size([8, 32, 32]) torch.Size([8, 19, 32, 32])"
    ), shapes
