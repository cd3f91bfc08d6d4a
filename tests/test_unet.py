"""The unet family end to end: ofa and kd students, distillation from a ResNet teacher, whole-image runs."""

import pytest
import torch
from torch import nn

from evaluators.tiling import geometry, run_image
from nas import train
from nas.checkpoint import load_generator, load_supernet
from nas.distill import make_distiller
from spaces import UserError, load_space
from spaces.schema import parse_space
from spaces.space import SearchSpace
from student_check import applies_to_a_photo, run_trial, tiny_method

COMMON = ["--steps", "3", "--batch-size", "2", "--crop", "32", "--eval-every", "3", "--checkpoint-every", "3",
          "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def batch_norm_unet(tmp_path_factory, root, tiny_models):
    """A tiny batch-norm unet space file and its supernet, trained 3 steps from the tiny ResNet teacher."""
    folder = tmp_path_factory.mktemp("unet")
    space = folder / "tiny_unet_bn.yaml"
    space.write_text((root / "tests/spaces/tiny_unet.yaml").read_text().replace("norm: instance", "norm: batch"))
    teacher, _ = tiny_models
    train.main(["supernet", "--space", str(space), "--teacher", str(teacher), "--out", str(folder / "supernet"),
                *COMMON])
    return space, folder / "supernet" / "checkpoint.pth"


def test_ofa_judges_and_exports_unet_subnets_with_recalibrated_batch_norms(tmp_path, tiny_models, batch_norm_unet):
    teacher, _ = tiny_models
    space_file, supernet_path = batch_norm_unet
    method = tiny_method("ofa", teacher, space_file, 1e9, {"supernet": str(supernet_path), "finetune_steps": 0},
                         command="search")
    assert method.calibration is not None and method.calibration[0].shape[-1] == 32
    space = method.space
    config = space.sample(__import__("random").Random(3))
    candidate = method.start(config).step()
    assert candidate.config == space.encode(config) and candidate.quality.psnr > 10
    # the candidate's quality is that of the subnet with its batch norms recalibrated, not the supernet's
    supernet, _ = load_supernet(supernet_path)
    stale = method.judge(supernet.extract(config))
    assert stale.psnr != pytest.approx(candidate.quality.psnr, abs=1e-6)
    report = method.export({"config": space.encode(config), "quality": candidate.quality.score}, None,
                           tmp_path / "best")
    exported = load_generator(tmp_path / "best" / "model.pth")
    assert exported.space.family == "unet" and report["macs"]["torchprofile"] == space.macs(config)
    recalibrated = supernet.extract(config, calibration=method.calibration)
    for name, tensor in recalibrated.state_dict().items():
        if "running" in name:
            assert torch.equal(exported.module.state_dict()[name], tensor), name
    assert applies_to_a_photo(tmp_path / "best" / "model.pth", tmp_path) == (96, 96)  # sr4x: 4x up


def test_kd_trains_a_unet_student(tmp_path, tiny_models, root):
    teacher, _ = tiny_models
    method = tiny_method("kd", teacher, root / "tests/spaces/tiny_unet.yaml", 3e6,
                         {"steps": 2, "batch_size": 2, "crop": 32, "checkpoint_every": 2})
    (tmp_path / "trial").mkdir()
    _, out = run_trial(method, 3e6, tmp_path / "trial")
    assert out.cost.torchprofile <= 3e6 and out.quality.psnr > 10
    assert method.space.family == "unet"


def test_a_crop_that_is_not_a_multiple_of_the_unet_is_refused(tmp_path, tiny_models, root):
    teacher, _ = tiny_models
    with pytest.raises(UserError, match=r"--crop 48 is not a multiple of 32: .* use --crop 32"):
        train.main(["supernet", "--space", str(root / "tests/spaces/tiny_unet.yaml"), "--teacher", str(teacher),
                    "--out", str(tmp_path / "s"), *COMMON[:4], "--crop", "48", *COMMON[6:]])


def test_a_resnet_teacher_distils_into_unet_taps(tiny_models, root):
    teacher = load_generator(tiny_models[0]).module
    space = load_space(str(root / "tests/spaces/tiny_unet.yaml"))
    student = space.build(space.max_config())
    assert [m for m in student.taps()] == list(student.down)[1:-1]
    distiller = make_distiller(student, teacher, layers=3, device=torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        teacher(x)
    loss = None
    student(x)
    loss = distiller.loss()
    assert torch.isfinite(loss) and loss > 0
    loss.backward()  # the pooled pairs reach the student's down levels
    assert student.down[1][0].weight.grad is not None and student.down[1][0].weight.grad.abs().sum() > 0
    distiller.detach_hooks()


@pytest.mark.parametrize("size", [(37, 50), (20, 20)])
def test_a_unet_runs_whole_on_images_padded_to_its_multiple(size, root):
    space = load_space(str(root / "tests/spaces/tiny_unet.yaml"))
    text = space.spec_text.replace("norm: instance", "norm: batch")
    space = SearchSpace(parse_space(text, file="bn.yaml", name="bn"))
    module = space.build(space.max_config()).eval()
    for p in module.parameters():
        nn.init.normal_(p, std=0.2)
    geo = geometry(module, 3)
    assert (geo.multiple, geo.tileable) == (32, False)
    image = torch.rand(3, *size) * 2 - 1
    out = run_image(module, image, tile=16)  # a tile smaller than the image: still one whole run
    h, w = size
    pad = torch.nn.functional.pad(image[None], (0, (-w) % 32, 0, (-h) % 32),
                                  mode="reflect" if min(h, w) > max((-h) % 32, (-w) % 32) else "replicate")
    with torch.no_grad():
        assert torch.allclose(out, module(pad)[0, :, :h, :w], atol=1e-6)


def test_an_ofa_search_of_a_batch_norm_space_says_subnets_are_recalibrated(tiny_models, batch_norm_unet, root):
    from nas.methods import get_method
    from nas.methods.base import SearchContext

    teacher, _ = tiny_models
    space_file, supernet_path = batch_norm_unet
    ofa = get_method("ofa")
    context = SearchContext(method="ofa", task="sr4x", teacher=str(teacher), space=str(space_file), budget=10**9,
                            options=ofa.Options(supernet=str(supernet_path)))
    assert any("recalibrated" in note for note in ofa(context).notes())
    context = SearchContext(method="ofa", task="sr4x", teacher=str(teacher), space=str(space_file), budget=10**9,
                            options=ofa.Options(supernet=str(tiny_models[1])))
    notes = ofa(context).notes()
    assert not any("recalibrated" in note for note in notes)  # the tiny inception supernet has instance norm
    # and its space is the supernet's, not the unet file --space names: the note says so
    assert notes == [f"the space is 'tiny_inception', that of {tiny_models[1]}; --space {space_file} is not used"]
