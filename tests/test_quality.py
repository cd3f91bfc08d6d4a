"""Quality metrics: PSNR/SSIM on known cases, FID/KID against the closed form on Gaussian features."""

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from evaluators.quality import evaluate, fid_kid, psnr, ssim


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
