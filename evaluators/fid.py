"""FID and KID as users know them: the standard FID Inception (torch-fidelity's ``FeatureExtractorInceptionV3``
as torchmetrics wraps it, 2048 pool features, uint8 images resized to 299x299) and torchmetrics' FID / KID.

- Weights: ``--fid-weights PATH``, else the torch hub cache, else fetched once from the official URL into that
  cache. Whatever the source, the project reads the file itself with ``torch.load(weights_only=True)``: the
  libraries' own loaders (``torch.hub.load_state_dict_from_url``, torch-fidelity's ``torch.load(...,
  weights_only=False)``) unpickle, so they are bypassed while the module is built.
- Real images (the target domain) are passed through the Inception once; their features are cached in a file
  named by a hash of the images' pixels and of the extractor, so a search computes them once.
- FID of a handful of images measures mostly the sample size: fewer real or generated images than a minimum
  are refused, and every FID is reported with its image counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spaces.errors import UserError

# pytorch-fid's conversion of the TensorFlow Inception of the original FID (inception-2015-12-05); torch-fidelity's
# own copy (torchmetrics' default download) has the same layout and is accepted too.
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
ALTERNATIVE_FILES = ("weights-inception-2015-12-05-6726825d.pth",)
FEATURES = 2048
INPUT_SIZE = 299  # the Inception resizes every image to this (inside the extractor)
# Resizing like the TensorFlow original (torch-fidelity's bilinear), not torchmetrics' antialiased default, so
# that figures compare with those of pytorch-fid, torch-fidelity and the papers.
ANTIALIAS = False
# Below this many real or generated images FID is refused (a search may lower it with --fid-min-images).
MIN_IMAGES = 50
# Below this many generated images FID is noisy and biased upwards: said beside the figure.
NOISY_BELOW = 1000
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torchmetrics' (and torch-fidelity's) defaults
CACHE_FORMAT = "gan-nas/fid-real-v1"
BATCH = 16


# ------------------------------------------------------------------------------------------- the extractor


def inception_module(state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's extractor, 2048 features) with ``state_dict``
    loaded; randomly initialised without one (tests, timings)."""
    module = _build_unloaded()
    if state_dict is not None:
        _load_checked(module, state_dict)
    return module.eval()


_BUILD_LOCK = threading.Lock()
_PLACEHOLDER = object()  # what torch-fidelity's loader returns while the module is built here


@lru_cache(maxsize=1)
def _inception_class() -> type[nn.Module]:
    """torchmetrics' ``NoTrainInceptionV3`` whose ``load_state_dict`` skips the placeholder (imported lazily:
    torchmetrics' image package is slow to import and only FID needs it)."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    class FidInception(NoTrainInceptionV3):
        def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
            if state_dict is _PLACEHOLDER:
                return None
            return super().load_state_dict(state_dict, *args, **kwargs)

    return FidInception


def _build_unloaded() -> nn.Module:
    """The Inception built with torch-fidelity's weight loading bypassed: its ``__init__`` would download
    (``load_state_dict_from_url``) and unpickle; here that call returns a placeholder that the module's
    ``load_state_dict`` skips, and the caller loads the weights it read safely."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    cls = _inception_class()
    with _BUILD_LOCK:
        original = tf_inception.load_state_dict_from_url
        tf_inception.load_state_dict_from_url = lambda *args, **kwargs: _PLACEHOLDER
        try:
            return cls(name="inception-v3-compat", features_list=[str(FEATURES)], antialias=ANTIALIAS)
        finally:
            tf_inception.load_state_dict_from_url = original


def _load_checked(module: nn.Module, state_dict: Any, source: str = "the weights") -> None:
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{source} is not a state dict of tensors; give the FID Inception's weights ({WEIGHTS_FILE})")
    expected = module.state_dict()
    # (files saved by older PyTorch lack BatchNorm's counters, which the Inception never uses)
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong)) if keys)
        raise UserError(f"{source} is not the FID Inception's layout ({detail}); give {WEIGHTS_FILE} "
                        f"(from {WEIGHTS_URL}) or torch-fidelity's copy")
    module.load_state_dict(state_dict, strict=False)


def hub_cache() -> Path:
    """Where torch.hub keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_file(weights: str | Path | None = None) -> Path:
    """The weights file to use: ``weights`` if given, else the torch hub cache's copy, else one fetched now from
    the official URL into that cache (the only download in the project; a one-line error offline)."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"--fid-weights {path} not found; give the path of {WEIGHTS_FILE} (from {WEIGHTS_URL})")
        return path.resolve()
    cache = hub_cache()
    for name in (WEIGHTS_FILE, *ALTERNATIVE_FILES):
        if (cache / name).is_file():
            return cache / name
    target = cache / WEIGHTS_FILE
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # (writes a temporary file and renames it: an interrupted download leaves nothing behind)
        torch.hub.download_url_to_file(WEIGHTS_URL, str(target), progress=False)
    except Exception as exc:  # URLError, HTTPError, timeouts, a read-only cache: all say the same to the user
        reason = str(getattr(exc, "reason", "") or exc).strip().splitlines()
        raise UserError(f"FID needs the FID Inception weights {WEIGHTS_FILE}, which are not in {cache} and could "
                        f"not be downloaded from {WEIGHTS_URL} ({reason[0] if reason else type(exc).__name__}); "
                        f"fetch that file where there is internet and pass --fid-weights PATH, or put it in "
                        f"{cache}") from None
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class Extractor:
    """The FID Inception and what names the features it gives (its weights' hash and the resize)."""

    module: nn.Module
    weights: str
    key: str

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device


def inception(weights: str | Path | None = None, device: torch.device | str = "cpu") -> Extractor:
    """The FID Inception with its weights (see ``weights_file``), read with ``weights_only=True``; one per
    process, file and device."""
    return _inception(str(weights_file(weights)), str(device))


@lru_cache(maxsize=2)
def _inception(path: str, device: str) -> Extractor:
    from nas.checkpoint import safe_load  # the project's one safe reader (weights_only=True, one-line errors)

    module = inception_module()
    _load_checked(module, safe_load(path), source=f"FID weights {path}")
    key = f"inception-{FEATURES}-{_sha256(Path(path))[:16]}-{INPUT_SIZE}{'-antialias' if ANTIALIAS else ''}"
    return Extractor(module.to(device), path, key)


# ------------------------------------------------------------------------------------------------ features


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """C x H x W in [-1, 1] -> uint8 3 x H x W, as an image file would hold it (grayscale repeated)."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise UserError(f"FID needs RGB or grayscale images (C x H x W), got shape {tuple(image.shape)}")
    out = image.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
    return out.expand(3, -1, -1).contiguous() if out.shape[0] == 1 else out


def _batches(images: Iterable[torch.Tensor], size: int = BATCH) -> Iterator[torch.Tensor]:
    """uint8 batches of consecutive images of one shape (the Inception resizes each batch to 299x299)."""
    batch: list[torch.Tensor] = []
    for image in images:
        pixels = to_uint8(image)
        if batch and (len(batch) == size or pixels.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(pixels)
    if batch:
        yield torch.stack(batch)


@torch.no_grad()
def image_features(extractor: Extractor, images: Iterable[torch.Tensor]) -> torch.Tensor:
    """N x 2048 Inception features (on the CPU) of images in [-1, 1] of any size."""
    out = [extractor.module(batch.to(extractor.device)).float().cpu() for batch in _batches(images)]
    return torch.cat(out) if out else torch.zeros(0, FEATURES)


def images_digest(images: Iterable[torch.Tensor]) -> str:
    """A hash of the images' uint8 pixels and shapes, in order."""
    digest = hashlib.sha256()
    for image in images:
        pixels = to_uint8(image)
        digest.update(str(tuple(pixels.shape)).encode())
        digest.update(pixels.numpy().tobytes())
    return digest.hexdigest()


def check_count(count: int, minimum: int, what: str) -> None:
    """Refuse FID on fewer than ``minimum`` images: below it the figure measures mostly the sample size."""
    if count < minimum:
        raise UserError(f"FID needs at least {minimum} {what}, found {count}; with fewer the figure measures mostly "
                        "the sample size (use more images, or lower --fid-min-images knowingly)")


@dataclass(frozen=True, eq=False)
class RealFeatures:
    """Inception features of the real images (the target domain), and what they are of."""

    features: torch.Tensor  # N x 2048
    key: str  # images' hash + extractor: the cache file's name
    extractor: str  # the Extractor's key
    source: str  # which images, in words

    @property
    def images(self) -> int:
        return len(self.features)


def real_features(extractor: Extractor, images: Sequence[torch.Tensor], *, source: str,
                  cache_dir: str | Path | None = None, min_images: int = MIN_IMAGES) -> RealFeatures:
    """Features of the real images, read from ``cache_dir`` when the same images went through the same
    extractor before, else computed (and written there)."""
    check_count(len(images), min_images, f"real images ({source})")
    key = hashlib.sha256(f"{extractor.key}|{images_digest(images)}".encode()).hexdigest()
    path = Path(cache_dir) / f"fid-real-{key[:16]}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        from nas.checkpoint import safe_load

        cached = safe_load(path)
        if isinstance(cached, dict) and cached.get("format") == CACHE_FORMAT and cached.get("key") == key:
            return RealFeatures(cached["features"], key, extractor.key, source)
    features = image_features(extractor, images)
    if path is not None:
        from nas.checkpoint import atomic_save

        atomic_save({"format": CACHE_FORMAT, "key": key, "extractor": extractor.key, "source": source,
                     "features": features}, path)
    return RealFeatures(features, key, extractor.key, source)


# ---------------------------------------------------------------------------------------------- FID and KID


class _Given(nn.Module):
    """The 'extractor' that torchmetrics' FID / KID get: the features are given."""

    num_features = FEATURES

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torchmetrics' FID takes the eigenvalues of a 2048 x 2048 product: 3 s on one thread here, 79 s on two
    (LAPACK's threads fight over two shared cores), so it runs on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fid_kid_of_features(real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int | None = None,
                        kid_subsets: int = KID_SUBSETS, feature_module: nn.Module | None = None) -> tuple[float, float]:
    """FID and KID (mean over ``kid_subsets`` random subsets, seeded) of two sets of features (or of images, with
    ``feature_module``), by torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    module = feature_module or _Given()
    subset = kid_subset_size or min(KID_SUBSET_SIZE, len(real), len(fake))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns that a custom extractor makes figures its own
        fid = FrechetInceptionDistance(feature=module, reset_real_features=True)
        kid = KernelInceptionDistance(feature=module, subsets=kid_subsets, subset_size=subset)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # KID's subsets: the same figure for the same images
        return float(fid.compute()), float(kid.compute()[0])


@dataclass(frozen=True)
class FidResult:
    fid: float
    kid: float
    images: int  # generated
    real_images: int

    def describe(self) -> str:
        """The figure with its counts (never one without the other)."""
        return f"FID {self.fid:.2f} ({self.images} generated vs {self.real_images} real images)"


@dataclass(frozen=True, eq=False)
class FidJudge:
    """Scores generated images against the real features with the extractor that made them."""

    extractor: Extractor
    real: RealFeatures
    min_images: int = MIN_IMAGES

    def __post_init__(self) -> None:
        if self.real.extractor != self.extractor.key:
            raise UserError(f"the real images' FID features were made by {self.real.extractor}, but the Inception "
                            f"here is {self.extractor.key} ({self.extractor.weights}): give every machine the same "
                            "--fid-weights file")
        check_count(self.real.images, self.min_images, f"real images ({self.real.source})")

    def measure(self, images: Sequence[torch.Tensor]) -> FidResult:
        check_count(len(images), self.min_images, "generated images (the val split's inputs)")
        fid, kid = fid_kid_of_features(self.real.features, image_features(self.extractor, images))
        return FidResult(fid, kid, len(images), self.real.images)


def noise_note(images: int) -> str | None:
    """A caveat to print beside FIDs of few images; None when there are enough."""
    if images >= NOISY_BELOW:
        return None
    return (f"FID on {images} generated images is noisy and biased upwards (on a CycleGAN test split of about a "
            "hundred images it moves by several points between samples): compare candidates of this run with "
            "each other, not with figures computed on other image counts")
