"""Tasks: the embedded sr4x split, user folder layouts, and one-line errors for bad data."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from evaluators.quality import psnr
from nas.data import SR4X_SPLIT, check_crop, downscale, load_task, photo, sr_pair
from spaces import UserError


@pytest.fixture(scope="module")
def sr4x():
    return load_task("sr4x")


def test_sr4x_split_is_by_image_and_fixed(sr4x):
    names = [set(sr4x.split(s).names) for s in ("train", "val", "test")]
    assert all(a.isdisjoint(b) for i, a in enumerate(names) for b in names[i + 1:])
    assert sr4x.val.names == list(SR4X_SPLIT["val"]) and sr4x.test.names == list(SR4X_SPLIT["test"])
    assert sr4x.paired and sr4x.scale == 4


def test_sr4x_input_is_bicubic_down_then_up(sr4x):
    x, y = sr4x.val.inputs[0], sr4x.val.targets[0]
    assert x.shape == y.shape and y.shape[1] % 4 == 0 and y.shape[2] % 4 == 0
    # Degrading the target again gives back the low-resolution image the input was made from.
    assert torch.allclose(downscale(x, 4), downscale(sr_pair(y)[0], 4), atol=1e-5)
    assert 20 < psnr(x, y) < 40  # blurred, not identical


def test_batches_are_a_function_of_seed_and_step(sr4x):
    a = sr4x.batch(seed=1, step=5, batch_size=3, crop=32)
    b = sr4x.batch(seed=1, step=5, batch_size=3, crop=32)
    c = sr4x.batch(seed=1, step=6, batch_size=3, crop=32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert a[0].shape == (3, 3, 32, 32)
    assert psnr(a[0], a[1]) > 18  # input and target crops are aligned


def test_eval_sets_are_whole_images_with_bicubic_as_the_baseline(sr4x):
    test = sr4x.eval_set("test")
    assert test.names == SR4X_SPLIT["test"] and test.baseline == "bicubic"
    for name, x, y in zip(test.names, test.inputs, test.targets):
        h, w = photo(name).shape[:2]
        assert x.shape == y.shape == (3, h // 4 * 4, w // 4 * 4)  # whole, cut only to the scale's multiple
    assert sr4x.eval_set("val").inputs[0] is sr4x.val.inputs[0]


def test_test_photos_come_from_three_packages_and_are_never_trained_or_searched_on():
    """By pixels, not names: skimage.data.cat() is chelsea, and a renamed copy would pass a name check."""
    digest = lambda array: hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()  # noqa: E731
    seen = {split: {digest(photo(n)) for n in SR4X_SPLIT[split]} for split in ("train", "val", "test")}
    assert len(seen["test"]) == len(SR4X_SPLIT["test"]) == 5
    assert not seen["test"] & (seen["train"] | seen["val"])
    assert not seen["val"] & seen["train"]
    import skimage.data

    assert digest(skimage.data.cat()) in seen["test"]  # the same photo as chelsea, under another name
    assert all(photo(n).dtype == np.uint8 and photo(n).shape[2] == 3 and min(photo(n).shape[:2]) >= 300
               for n in ("china", "flower", "grace_hopper"))


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_aligned_layout(tmp_path):
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        for i in range(n):
            save(tmp_path / split / f"{i}.png", rgb(32, 64, i))
    task = load_task(str(tmp_path))
    assert task.kind == "aligned" and task.paired and len(task.train) == 3
    assert task.train.inputs[0].shape == (3, 32, 32)
    assert torch.equal(task.train.targets[0], torch.from_numpy(rgb(32, 64, 0)[:, 32:]).permute(2, 0, 1).float() / 127.5 - 1)


def test_unaligned_layout_uses_pseudo_pairs_and_splits_test(tmp_path):
    for i in range(3):
        save(tmp_path / "trainA" / f"{i}.png", rgb(32, 32, i))
        save(tmp_path / "trainB" / f"{i}.png", rgb(32, 32, 10 + i))
    for i in range(4):
        save(tmp_path / "testA" / f"{i}.png", rgb(32, 32, 20 + i))
    task = load_task(str(tmp_path))
    assert task.kind == "unaligned" and not task.paired
    assert task.val.names == ["0.png", "1.png"] and task.test.names == ["2.png", "3.png"]
    x, y = task.batch(seed=0, step=0, batch_size=2, crop=16)
    assert x.shape == (2, 3, 16, 16) and y is None


def test_single_folder_layout(tmp_path):
    for i in range(10):
        save(tmp_path / f"img{i}.jpg", rgb(40, 48, i))
    task = load_task(str(tmp_path))
    assert task.kind == "single" and (len(task.train), len(task.val), len(task.test)) == (8, 1, 1)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_task(str(tmp_path / "missing"))
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match=r"folder .*train has no images"):
        load_task(str(tmp_path))
    save(tmp_path / "train" / "a.png", rgb(32, 64))
    with pytest.raises(UserError, match=r"missing folder .*val"):
        load_task(str(tmp_path))
    save(tmp_path / "val" / "a.png", rgb(32, 64))
    save(tmp_path / "val" / "b.png", rgb(48, 64))
    with pytest.raises(UserError, match=r"image .*b\.png is 64x48 but a\.png in the same folder is 64x32"):
        load_task(str(tmp_path))
    (tmp_path / "val" / "b.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"cannot read image .*b\.png"):
        load_task(str(tmp_path))


def test_crop_larger_than_images(tmp_path):
    for split in ("train", "val"):
        save(tmp_path / split / "a.png", rgb(32, 64))
    with pytest.raises(UserError, match="training image a.png is 32x32, smaller than the crop 64"):
        check_crop(load_task(str(tmp_path)), 64)
