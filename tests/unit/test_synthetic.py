"""The synthetic CelebAMask-HQ writer: layout, text files, split, determinism, overlaps, colours, defects."""

from __future__ import annotations

import io
import itertools
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from maskgan.data import defects, synthetic
from maskgan.labels import CLASS_INDEX, PART_NAMES, merge_parts
from pipelines import make_synthetic

TINY = {"image_size": 64, "mask_size": 32}
MASK_NAME = re.compile(r"^(\d{5})_([a-z_]+)\.png$")


def tiny(num_images: int = 6, **overrides) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(num_images=num_images, **{**TINY, **overrides})


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[synthetic.SyntheticConfig, Path, synthetic.WriteResult]:
    """Ids 1997..2002: they straddle the 0 / 1 mask folders."""
    config = tiny(6, start_id=1997)
    root = tmp_path_factory.mktemp("synthetic") / "raw"
    return config, root, synthetic.write_dataset(config, str(root), progress=False)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_images", 0), ("image_size", 4), ("mask_size", 1.5), ("seed", -1), ("start_id", -3),
        ("jpeg_quality", 101), ("train_fraction", 1.5), ("val_fraction", -0.1), ("accessory_probability", 2),
        ("write_pose", "yes"), ("num_images", True),
    ],
)  # fmt: skip
def test_config_rejects_bad_fields_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        synthetic.SyntheticConfig(**{"num_images": 3, field: value})
    with pytest.raises(ValueError, match="train_fraction \\+ synthetic.val_fraction"):
        synthetic.SyntheticConfig(num_images=3, train_fraction=0.8, val_fraction=0.3)


def test_layout_names_sizes_and_formats(written):
    config, root, result = written
    images = sorted(p.name for p in (root / synthetic.IMAGE_DIR).iterdir())
    assert images == sorted(f"{i}.jpg" for i in config.ids)  # names NOT zero padded
    assert sorted(p.name for p in (root / synthetic.MASK_DIR).iterdir()) == ["0", "1"]
    masks = sorted((root / synthetic.MASK_DIR).rglob("*.png"))
    assert len(masks) == result.num_mask_files and result.num_images == config.num_images
    for path in masks:
        match = MASK_NAME.match(path.name)
        assert match, path.name
        image_id, part = int(match.group(1)), match.group(2)
        assert path.parent.name == str(image_id // 2000) and part in PART_NAMES
        with Image.open(path) as mask:
            assert mask.format == "PNG" and mask.mode == "L" and mask.size == (32, 32)
            assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    assert (root / synthetic.MASK_DIR / "1" / "02000_skin.png").exists()
    for image_id in config.ids:
        with Image.open(root / synthetic.IMAGE_DIR / f"{image_id}.jpg") as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 64)
        # The files on disk merge to the label the library promises.
        folder = root / synthetic.MASK_DIR / str(image_id // 2000)
        parts = {
            MASK_NAME.match(p.name).group(2): np.asarray(Image.open(p))
            for p in folder.glob(f"{image_id:05d}_*")
        }
        assert np.array_equal(merge_parts(parts), synthetic.expected_label(config, image_id))


def test_text_files_parse(written):
    config, root, result = written
    assert set(result.text_files) == {synthetic.MAPPING_FILE, synthetic.ATTRIBUTE_FILE, synthetic.POSE_FILE}
    mapping = (root / synthetic.MAPPING_FILE).read_text().splitlines()
    assert mapping[0].split() == ["idx", "orig_idx", "orig_file"] and len(mapping) == 1 + config.num_images
    for line, image_id in zip(mapping[1:], config.ids, strict=True):
        idx, orig_idx, orig_file = line.split()
        assert int(idx) == image_id and orig_file == f"{int(orig_idx) + 1:06d}.jpg"
    attributes = (root / synthetic.ATTRIBUTE_FILE).read_text().splitlines()
    assert int(attributes[0]) == config.num_images and len(attributes) == 2 + config.num_images
    names = attributes[1].split()
    assert len(names) == 40 and names[0] == "5_o_Clock_Shadow" and names[-1] == "Young"
    for line, image_id in zip(attributes[2:], config.ids, strict=True):
        name, *values = line.split()
        assert name == f"{image_id}.jpg" and len(values) == 40 and set(values) <= {"1", "-1"}
    pose = (root / synthetic.POSE_FILE).read_text().splitlines()
    assert int(pose[0]) == config.num_images and pose[1].split() == ["Yaw", "Pitch", "Raw"]
    for line, image_id in zip(pose[2:], config.ids, strict=True):
        name, *values = line.split()
        assert name == f"{image_id}.jpg" and len([float(v) for v in values]) == 3


def test_text_file_flags(tmp_path):
    config = tiny(2, write_mapping=False, write_pose=False)
    result = synthetic.write_dataset(config, str(tmp_path), progress=False)
    assert result.text_files == (synthetic.ATTRIBUTE_FILE,)
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == [synthetic.ATTRIBUTE_FILE]


def official(orig_idx: int) -> str:
    return "train" if orig_idx < 162771 else "val" if orig_idx < 182638 else "test"


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.5, 0.25), (1.0, 0.0), (0.0, 0.0)])
def test_split_fractions_give_orig_idx_in_the_official_ranges(fractions):
    config = synthetic.SyntheticConfig(num_images=200, train_fraction=fractions[0], val_fraction=fractions[1])
    splits = [synthetic.expected_split(config, i) for i in config.ids]
    orig = [synthetic.orig_idx_for(config, i) for i in config.ids]
    assert [official(o) for o in orig] == splits
    assert all(0 <= o < 202599 for o in orig) and len(set(orig)) == len(orig)
    expected = {"train": fractions[0], "val": fractions[1], "test": 1 - sum(fractions)}
    for split, fraction in expected.items():
        assert abs(splits.count(split) - 200 * fraction) <= 3, (split, splits.count(split))


def test_orig_idx_is_unique_over_a_full_size_release():
    config = synthetic.SyntheticConfig(num_images=30000)
    assert len({synthetic.orig_idx_for(config, i) for i in config.ids}) == 30000


def test_write_result_ids_by_split_match_mapping(written):
    config, root, result = written
    rows = [line.split() for line in (root / synthetic.MAPPING_FILE).read_text().splitlines()[1:]]
    from_file = {
        split: tuple(int(r[0]) for r in rows if official(int(r[1])) == split) for split in result.ids_by_split
    }
    assert from_file == dict(result.ids_by_split)
    assert sum(map(len, result.ids_by_split.values())) == config.num_images


def test_same_seed_same_bytes_in_any_order(tmp_path, written):
    config, root, _ = written
    again = tmp_path / "again"
    synthetic.write_dataset(config, str(again), progress=False, num_workers=1)
    assert read_tree(again) == read_tree(root)

    # Rendering ids alone, backwards and in threads gives the same files.
    def encode(image_id: int) -> dict[str, bytes]:
        return synthetic.sample_files(config, synthetic.render_sample(config, image_id))

    with ThreadPoolExecutor(3) as pool:
        encoded = list(pool.map(encode, reversed(config.ids)))
    for relative, data in itertools.chain.from_iterable(files.items() for files in encoded):
        assert (root / relative).read_bytes() == data, relative
    other = synthetic.SyntheticConfig(num_images=config.num_images, start_id=config.start_id, seed=1, **TINY)
    changed = synthetic.write_dataset(other, str(tmp_path / "other"), progress=False)
    other_tree = read_tree(tmp_path / "other")
    image = f"{synthetic.IMAGE_DIR}/{config.start_id}.jpg"
    assert other_tree[image] != read_tree(root)[image] and changed.num_images == config.num_images
    labels = [synthetic.expected_label(c, i) for c in (config, other) for i in config.ids]
    assert not all(np.array_equal(a, b) for a, b in zip(labels[:6], labels[6:], strict=True))


@pytest.fixture(scope="module")
def samples() -> list[synthetic.SyntheticSample]:
    config = tiny(16, accessory_probability=0.5)
    return [synthetic.render_sample(config, i) for i in config.ids]


def overlap_where(sample: synthetic.SyntheticSample, under: str, over: str) -> np.ndarray:
    if under not in sample.parts or over not in sample.parts:
        return np.zeros_like(sample.label, dtype=bool)
    return (sample.parts[under] > 0) & (sample.parts[over] > 0)


@pytest.mark.parametrize(
    "under, over", [("skin", "hair"), ("hair", "hat"), ("neck_l", "neck"), ("skin", "l_eye")]
)
def test_parts_overlap_as_released_and_merge_in_class_order(samples, under, over):
    found = 0
    for sample in samples:
        overlap = overlap_where(sample, under, over)
        assert np.all(sample.label[overlap] >= CLASS_INDEX[over])  # the later class (or one after it) wins
        if overlap.any() and (sample.label == CLASS_INDEX[under]).any():  # the earlier one still shows
            found += 1
    assert found >= 2, f"{over} over {under} appears in only {found} of {len(samples)} samples"


def test_every_sample_has_a_face_and_variety(samples):
    for sample in samples:
        assert np.array_equal(sample.label, merge_parts(sample.parts))
        assert {"skin", "nose", "l_eye", "r_eye", "u_lip", "l_lip", "neck"} <= set(sample.parts)
        assert all(mask.dtype == np.uint8 and mask.any() for mask in sample.parts.values())
        assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
    for part in ("eye_g", "hat", "ear_r", "neck_l", "mouth"):  # sometimes there, sometimes not
        assert 0 < sum(part in s.parts for s in samples) < len(samples), part
    assert sum("hair" in s.parts for s in samples) > len(samples) // 2
    skin_means = [
        s.image[np.kron(s.label == CLASS_INDEX["skin"], np.ones((2, 2), bool))].mean() for s in samples
    ]
    assert np.ptp(skin_means) > 40  # skin tones vary
    centroids = [np.argwhere(s.parts["skin"]).mean(axis=0) for s in samples]
    assert np.ptp(np.array(centroids), axis=0).max() > 1.0  # positions vary


def test_image_colours_follow_the_mask(samples):
    mirror = {("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")}
    for sample in samples:
        label = sample.label
        # Interior pixels only (same class as all 4 neighbours): edges are blurred by the upscale.
        padded = np.pad(label, 1, mode="edge")
        interior = (padded[:-2, 1:-1] == label) & (padded[2:, 1:-1] == label)
        interior &= (padded[1:-1, :-2] == label) & (padded[1:-1, 2:] == label)
        small = sample.image.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))  # image at mask resolution
        means = {}
        for name, index in CLASS_INDEX.items():
            region = interior & (label == index)
            if region.sum() >= 4:
                means[name] = small[region].mean(axis=0)
        assert {"background", "skin"} <= set(means)
        for a, b in itertools.combinations(means, 2):
            if (a, b) not in mirror:
                assert np.linalg.norm(means[a] - means[b]) > 8, (sample.image_id, a, b, means[a], means[b])


def test_inject_every_defect(tmp_path):
    config = tiny(len(defects.DEFECT_KINDS))
    root = tmp_path / "raw"
    synthetic.write_dataset(config, str(root), progress=False)
    kinds = dict(zip(defects.DEFECT_KINDS, config.ids, strict=True))
    for kind, image_id in kinds.items():
        touched = defects.inject_defect(str(root), image_id, kind)
        assert touched and all(uri.startswith(str(root)) for uri in touched)

    def image(kind: str) -> Path:
        return root / synthetic.IMAGE_DIR / f"{kinds[kind]}.jpg"

    def masks(kind: str) -> list[Path]:
        return sorted((root / synthetic.MASK_DIR / "0").glob(f"{kinds[kind]:05d}_*.png"))

    with pytest.raises(OSError), Image.open(image("truncated_jpeg")) as truncated:
        truncated.load()
    assert image("zero_byte_image").stat().st_size == 0
    with pytest.raises(UnidentifiedImageError):
        Image.open(image("not_an_image"))
    assert {Image.open(p).size for p in masks("wrong_size_mask")} == {(32, 32), (16, 16)}
    assert any(len(np.unique(np.asarray(Image.open(p)))) > 2 for p in masks("non_binary_mask"))
    rgb = [Image.open(p) for p in masks("rgb_mask")]
    assert {m.mode for m in rgb} == {"L", "RGB"}
    as_read = {MASK_NAME.match(p.name).group(2): np.asarray(Image.open(p)) for p in masks("rgb_mask")}
    assert {mask.ndim for mask in as_read.values()} == {2, 3}  # merge_parts reads channel 0 of RGB masks
    assert np.array_equal(merge_parts(as_read), synthetic.expected_label(config, kinds["rgb_mask"]))
    assert masks("no_masks") == [] and image("no_masks").exists()
    assert masks("orphan_masks") and not image("orphan_masks").exists()
    assert any(p.name.endswith("_tail.png") for p in masks("unknown_part"))
    with Image.open(image("huge_image")) as huge:
        assert huge.size == (defects.HUGE_IMAGE_SIDE,) * 2
    assert image("huge_image").stat().st_size < 2_000_000
    with pytest.raises(ValueError, match="unknown defect kind"):
        defects.inject_defect(str(root), 0, "sunburn")


def test_cli_writes_and_rejects_bad_arguments(tmp_path, capsys):
    root = tmp_path / "cli"
    assert (
        make_synthetic.cli(
            [str(root), "--tiny", "--num-images", "3", "--defect", "1:no_masks", "--no-progress"]
        )
        == 0
    )
    assert "wrote 3 images" in capsys.readouterr().out
    assert sorted(p.name for p in (root / synthetic.IMAGE_DIR).iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]
    assert not list((root / synthetic.MASK_DIR / "0").glob("00001_*"))
    with Image.open(root / synthetic.IMAGE_DIR / "0.jpg") as image:
        assert image.size == (64, 64)
    assert make_synthetic.cli([str(root), "--tiny", "--num-images", "3", "--defect", "7:no_masks"]) == 2
    assert "defects: id 7" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_synthetic.cli([str(root), "--defect", "1:sunburn"])


def test_sample_bytes_decode_to_the_rendered_arrays():
    config = tiny(1)
    sample = synthetic.render_sample(config, 0)
    files = synthetic.sample_files(config, sample)
    with Image.open(io.BytesIO(files[f"{synthetic.IMAGE_DIR}/0.jpg"])) as image:
        assert np.abs(np.asarray(image).astype(int) - sample.image).mean() < 6  # JPEG at quality 90
    for part, mask in sample.parts.items():
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(files[f"{synthetic.MASK_DIR}/0/00000_{part}.png"]))), mask
        )
