"""The standard FID Inception's path (uint8, 299x299, weights read with weights_only=True), the real images'
cached features, the offline message and the minimum image counts. The Inception's weights here are random
(saved in its layout): nothing is downloaded."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evaluators import fid
from evaluators.quality import EvalSet, reference
from spaces.errors import UserError


def random_inception(seed: int) -> nn.Module:
    """The FID Inception with random weights that keep activations in scale (PyTorch's default init shrinks
    them to ~1e-8 over the 94 layers, which would make every FID ~0)."""
    torch.manual_seed(seed)
    module = fid.inception_module()
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return module


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(path of random weights in the Inception's layout, the module they came from)."""
    module = random_inception(0)
    path = tmp_path_factory.mktemp("fid") / "random_inception.pth"
    torch.save(module.state_dict(), path)
    return path, module


def smooth_images(n: int, seed: int, size: int = 32, shift: float = 0.0) -> list[torch.Tensor]:
    """Images in [-1, 1] with structure (4x4 colour fields, upsampled): a random Inception tells them apart."""
    g = torch.Generator().manual_seed(seed)
    fields = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return list((F.interpolate(fields, size=(size, size), mode="bilinear") + shift).clamp(-1, 1))


def test_the_inception_reads_the_given_weights_and_uint8_images_resized_to_299(weights):
    path, written = weights
    extractor = fid.inception(path)
    images = smooth_images(3, seed=1) + [torch.rand(3, 40, 48) * 2 - 1]  # two sizes in one call
    features = fid.image_features(extractor, images)
    assert features.shape == (4, 2048)  # a 32x32 image would not pass through Inception's strides unresized
    # The [-1, 1] images go in as the uint8 an image file holds, through the module that wrote the weights ...
    pixels = torch.stack([(x + 1).mul(127.5).round().to(torch.uint8) for x in images[:3]])
    assert torch.allclose(features[:3], written(pixels), atol=1e-5)
    # ... and not through another one (the file, not a fresh random init, sets the weights)
    assert not torch.allclose(features[:3], random_inception(1)(pixels), atol=1e-3)
    # Resized to 299x299 inside: a flat colour gives the same features at any size.
    flat = [torch.full((3, s, s), 0.3) for s in (24, 64, 299)]
    flat_features = fid.image_features(extractor, flat)
    assert torch.allclose(flat_features[0], flat_features[2], atol=1e-4)
    assert torch.allclose(flat_features[1], flat_features[2], atol=1e-4)
    assert extractor.key.startswith("inception-2048-") and extractor.key.endswith("-299")


def test_weights_are_read_only_as_plain_tensors_in_the_inceptions_layout(tmp_path):
    class Payload:  # a pickle that would run code when unpickled
        def __reduce__(self):
            return (print, ("unpickled",))

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": Payload()}, unsafe)
    with pytest.raises(UserError, match="refused to load .*pickle that would run code"):
        fid.inception(unsafe)
    other = tmp_path / "resnet.pth"
    torch.save(nn.Conv2d(3, 8, 3).state_dict(), other)
    with pytest.raises(UserError, match="not the FID Inception's layout .*missing Conv2d_1a_3x3"):
        fid.inception(other)
    with pytest.raises(UserError, match="--fid-weights .*missing.pth not found"):
        fid.inception(tmp_path / "missing.pth")


def test_without_weights_offline_one_line_says_what_to_do(tmp_path, monkeypatch, weights):
    assert fid.WEIGHTS_URL == ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                               "pt_inception-2015-12-05-6726825d.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # offline, as far as the download can tell: nothing listens there (loopback; no network is used)
    monkeypatch.setattr(fid, "WEIGHTS_URL", f"http://127.0.0.1:9/{fid.WEIGHTS_FILE}")
    with pytest.raises(UserError) as error:
        fid.weights_file(None)
    message = str(error.value)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    assert "\n" not in message and fid.WEIGHTS_FILE in message and fid.WEIGHTS_URL in message
    assert "--fid-weights PATH" in message and str(cache) in message
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-downloaded is left
    # a copy in the torch hub cache is used as it is
    cache.mkdir(parents=True, exist_ok=True)
    (cache / fid.WEIGHTS_FILE).symlink_to(weights[0])
    assert fid.weights_file(None) == cache / fid.WEIGHTS_FILE


def test_real_features_are_computed_once_and_keyed_by_images_and_extractor(tmp_path, weights):
    extractor = fid.inception(weights[0])
    real = smooth_images(4, seed=2)
    first = fid.real_features(extractor, real, source="B", cache_dir=tmp_path, min_images=4)
    files = list(tmp_path.glob("fid-real-*.pt"))
    assert len(files) == 1 and first.images == 4 and first.extractor == extractor.key

    class Unused(nn.Module):
        def forward(self, x):
            raise AssertionError("the cached features should have been used")

    again = fid.real_features(fid.Extractor(Unused(), extractor.weights, extractor.key), real, source="B",
                              cache_dir=tmp_path, min_images=4)
    assert torch.equal(again.features, first.features) and again.key == first.key
    changed = [real[0].clone().index_fill_(2, torch.tensor([0]), 1.0)] + real[1:]  # one image's first column
    assert fid.real_features(extractor, changed, source="B", cache_dir=tmp_path, min_images=4).key != first.key
    other = fid.Extractor(extractor.module, extractor.weights, extractor.key + "-other")
    assert fid.real_features(other, real, source="B", cache_dir=tmp_path, min_images=4).key != first.key
    assert len(list(tmp_path.glob("fid-real-*.pt"))) == 3


def test_fewer_images_than_the_minimum_are_refused(weights):
    extractor = fid.inception(weights[0])
    with pytest.raises(UserError, match=r"at least 50 real images \(the B halves\), found 3"):
        fid.real_features(extractor, smooth_images(3, seed=3), source="the B halves")
    real = fid.real_features(extractor, smooth_images(4, seed=3), source="B", min_images=4)
    with pytest.raises(UserError, match="at least 5 real images"):
        fid.FidJudge(extractor, real, min_images=5)
    judge = fid.FidJudge(extractor, real, min_images=4)
    with pytest.raises(UserError, match="at least 4 generated images .*found 3"):
        judge.measure(smooth_images(3, seed=4))
    with pytest.raises(UserError, match="give every machine the same --fid-weights"):
        fid.FidJudge(fid.Extractor(extractor.module, "other.pth", "inception-other"), real, min_images=4)


def test_a_reference_scores_students_by_fid_lower_is_better_with_counts(weights):
    extractor = fid.inception(weights[0])
    real = fid.real_features(extractor, smooth_images(6, seed=5), source="B", min_images=4)
    judge = fid.FidJudge(extractor, real, min_images=4)
    inputs = tuple(smooth_images(6, seed=6))  # the same distribution as the real images
    eval_set = EvalSet("val", tuple("abcdef"), inputs, targets=inputs, baseline="bicubic")
    ref = reference(nn.Identity(), eval_set, fid=judge, teacher_fid=True)
    teacher, far = ref.teacher, ref.judge(smooth_images(6, seed=7, shift=0.6))
    assert teacher.metric == "fid" and teacher.score == teacher.fid and not teacher.higher_is_better
    assert far.fid > 5 * teacher.fid and far.kid > teacher.kid  # shifted colours are far from the real ones
    assert far.worse_than(teacher.score) and not teacher.worse_than(far.score)
    assert far.share is None and far.psnr is not None  # no share of a PSNR gain beside an FID
    assert far.as_dict()["fid_images"] == 6 and far.as_dict()["fid_real_images"] == 6
    assert fid.noise_note(6) and "noisy" in fid.noise_note(6) and fid.noise_note(fid.NOISY_BELOW) is None


def test_the_real_images_are_the_target_domain_of_the_task(tmp_path):
    import numpy as np
    from PIL import Image

    from nas.data import folder_task

    def images(folder, n, width=16):
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((16, width, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")

    cyclegan = tmp_path / "cyclegan"
    images(cyclegan / "trainA", 1)
    images(cyclegan / "testA", 2)
    images(cyclegan / "trainB", 2)
    images(cyclegan / "testB", 1)
    real = folder_task(cyclegan).real_images("val")
    assert len(real) == 3 and real.source.startswith("testB/ trainB/ of")  # every B image, whichever split
    assert [float(x[0, 0, 0]) for x in real.images] == pytest.approx([-1.0, 40 / 127.5 - 1, -1.0])
    pix2pix = tmp_path / "pix2pix"
    images(pix2pix / "train", 1, width=32)
    images(pix2pix / "val", 3, width=32)
    task = folder_task(pix2pix)
    real = task.real_images("val")
    assert len(real) == 3 and "B halves of the val split" in real.source
    assert all(x.shape == (3, 16, 16) for x in real.images) and real.images[0] is task.val.targets[0]
    single = tmp_path / "single"
    images(single, 3)
    with pytest.raises(UserError, match="FID needs images of the target domain.*trainB/ and testB/"):
        folder_task(single).real_images("val")
