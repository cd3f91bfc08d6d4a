"""Quality metrics: PSNR/SSIM on known cases, the share of the teacher's gain, FID/KID against the closed
form on Gaussian features."""

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from evaluators.quality import EvalSet, Reference, evaluate, evaluate_on, fid_kid, gain_share, psnr, ssim


def test_psnr_of_a_known_error():
    a = torch.zeros(3, 16, 16)
    b = a + 0.2  # 0.1 in [0, 1] units: PSNR = 10 log10(1 / 0.01) = 20 dB
    assert psnr(b, a) == pytest.approx(20.0, abs=1e-4)
    assert ssim(a, a) == pytest.approx(1.0) and ssim(torch.rand(3, 32, 32), torch.rand(3, 32, 32)) < 0.2


def test_evaluate_reports_ground_truth_and_fidelity():
    target = [torch.zeros(3, 16, 16)] * 2
    outputs = [t + 0.2 for t in target]
    quality = evaluate(outputs, target, teacher_outputs=outputs)
    assert quality.psnr == pytest.approx(20.0, abs=1e-4) and quality.fidelity_psnr > 60  # identical: no error
    assert evaluate(outputs).psnr is None


class Flatten(nn.Module):
    """The 'feature extractor': images of shape (N, d, 1, 1) are their own d features."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x.flatten(1).double()


def closed_form_fid(mu1, s1, mu2, s2):
    root = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_fid_matches_the_closed_form_for_gaussian_features():
    rng = np.random.default_rng(0)
    d, n = 4, 4000
    mu1, mu2 = np.zeros(d), np.array([1.0, 0.5, 0.0, -0.5])
    a = rng.normal(size=(d, d))
    s1, s2 = np.eye(d), a @ a.T / d + 0.5 * np.eye(d)
    real = rng.multivariate_normal(mu1, s1, size=n)
    fake = rng.multivariate_normal(mu2, s2, size=n)
    to_images = lambda f: torch.from_numpy(f).float()[:, :, None, None]  # noqa: E731
    fid, kid = fid_kid(Flatten(d), to_images(real), to_images(fake), kid_subset_size=500)
    # Exactly the Frechet distance of the samples' Gaussians ...
    sample = closed_form_fid(real.mean(0), np.cov(real.T), fake.mean(0), np.cov(fake.T))
    assert fid == pytest.approx(sample, rel=1e-3)
    # ... and close to that of the true distributions.
    assert fid == pytest.approx(closed_form_fid(mu1, s1, mu2, s2), rel=0.1)
    same_fid, same_kid = fid_kid(Flatten(d), to_images(real[: n // 2]), to_images(real[n // 2:]), kid_subset_size=500)
    assert same_fid < 0.05 * fid and abs(same_kid) < 0.1 * kid


def test_share_of_the_teachers_gain_on_hand_made_numbers():
    assert gain_share(27.0, 26.0, 28.0) == pytest.approx(0.5)
    assert gain_share(28.5, 26.0, 28.0) == pytest.approx(1.25)  # better than the teacher: above 100%
    assert gain_share(25.5, 26.0, 28.0) == pytest.approx(-0.25)  # worse than bicubic: negative
    assert gain_share(27.0, 26.0, 26.4) is None  # the teacher is under 0.5 dB above bicubic: cannot rank
    assert gain_share(27.0, None, 28.0) is None  # no baseline (not super-resolution)


def test_reference_judges_students_against_teacher_and_bicubic():
    g = torch.Generator().manual_seed(0)
    targets = tuple(torch.rand(3, 24, 24, generator=g) * 2 - 1 for _ in range(2))
    noisy = lambda sigma: tuple(t + sigma * torch.randn(t.shape, generator=g) for t in targets)  # noqa: E731
    inputs = noisy(0.2)  # the "bicubic" baseline
    eval_set = EvalSet("test", ("a", "b"), inputs, targets, baseline="bicubic")
    teacher = nn.Identity()
    teacher_outputs = noisy(0.05)
    ref = Reference(eval_set, list(teacher_outputs), evaluate(teacher_outputs, targets, names=eval_set.names),
                    evaluate(inputs, targets, names=eval_set.names))
    student = ref.judge(noisy(0.1))
    expected = (student.psnr - ref.baseline.psnr) / (ref.teacher.psnr - ref.baseline.psnr)
    assert student.share == pytest.approx(expected) and 0.2 < student.share < 0.8
    assert set(student.per_image) == {"a", "b"} and student.per_image["a"]["share"] is not None
    assert ref.judge(list(teacher_outputs)).share == pytest.approx(1.0)
    assert ref.judge(list(inputs)).share == pytest.approx(0.0, abs=1e-6)
    assert student.metric == "psnr" and student.score == student.psnr
    # without ground truth the score is fidelity to the teacher, and there is no share
    unpaired = evaluate_on(teacher, EvalSet("val", ("a",), inputs[:1], None))
    assert unpaired.metric == "fidelity_psnr" and unpaired.share is None and unpaired.psnr is None
