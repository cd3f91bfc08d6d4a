"""Tasks: the embedded ``sr4x`` task and the folder layouts users already have.

Images are float tensors C x H x W in [-1, 1]. A task has train / val / test splits made by
image, never by crop, so that a search (val) never sees the images of the final report (test).
Unaligned or input-only data have no targets: the teacher's outputs stand in for them
("pseudo pairs", as in GAN Compression).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from evaluators.quality import EvalSet
from spaces.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Photos shipped inside installed packages (nothing is downloaded), split by image (fixed; see the
# README). Train and val come from scikit-image. The two motorcycle views are a stereo pair of one
# scene, so both are in train. The grayscale photos (replicated to three channels) are train-only:
# hubble and retina are mostly dark and smooth, and without the textures the generator learned
# little beyond bicubic. Test holds every real photo that scikit-learn and matplotlib ship, besides
# scikit-image's chelsea and rocket; test photos are never used to train or to choose anything.
SR4X_SPLIT = {
    "train": ("astronaut", "hubble_deep_field", "retina", "motorcycle_left", "motorcycle_right",
              "camera", "coins", "moon", "brick", "grass", "gravel", "text", "page"),
    "val": ("coffee", "immunohistochemistry"),
    "test": ("chelsea", "rocket", "china", "flower", "grace_hopper"),
}
# Photos that are not scikit-image's: name -> (package, file inside it).
PACKAGED_PHOTOS = {
    "china": ("sklearn", "datasets/images/china.jpg"),  # CC BY 2.0, danielbuechele (scikit-learn's README)
    "flower": ("sklearn", "datasets/images/flower.jpg"),  # CC BY 2.0, vultilion (scikit-learn's README)
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),  # US Navy photo, public domain
}
SR_SCALE = 4


@dataclass
class Split:
    """Images of one split; ``targets`` is None where the teacher provides them."""

    inputs: list[torch.Tensor]
    targets: list[torch.Tensor] | None
    names: list[str]

    def __len__(self) -> int:
        return len(self.inputs)


class ImageFiles(Sequence[torch.Tensor]):
    """Images read from their files when asked for (the target domain of a CycleGAN layout can be thousands of
    images that only FID needs, once)."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):  # noqa: ANN001 (int or slice, as a Sequence)
        if isinstance(index, slice):
            return ImageFiles(self.files[index])
        return read_image(self.files[index])


@dataclass(frozen=True, eq=False)
class RealImages:
    """Images of the target domain (what FID compares generated images with) and where they come from."""

    images: Sequence[torch.Tensor]
    source: str

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Task:
    name: str
    kind: str  # sr4x | aligned | unaligned | single
    train: Split
    val: Split
    test: Split
    scale: int = 1  # the input an application gets is this many times smaller (bicubic-upscaled first)
    notes: dict[str, str] = field(default_factory=dict)
    # Unaligned data: the image files of the target domain (CycleGAN's trainB/, valB/, testB/), read on demand.
    target_files: tuple[Path, ...] = ()

    def real_images(self, split: str = "val") -> RealImages:
        """The target domain that generated images of ``split`` are compared with by FID: the split's targets
        where it has them (pix2pix: the B halves; sr4x: the photos), the B folders of an unaligned layout."""
        data = self.split(split)
        if data.targets is not None:
            what = "B halves" if self.kind == "aligned" else "targets"
            return RealImages(data.targets, f"the {what} of the {split} split of {self.name}")
        if self.target_files:
            folders = sorted({p.parent.name + "/" for p in self.target_files})
            return RealImages(ImageFiles(self.target_files), f"{' '.join(folders)} of {self.name}")
        raise UserError(f"FID needs images of the target domain, and task {self.name} has none: give aligned "
                        "pairs (pix2pix: train/ val/ with A|B side by side) or a CycleGAN layout with trainB/ "
                        "and testB/ beside trainA/ and testA/")

    @property
    def paired(self) -> bool:
        return self.train.targets is not None

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise UserError(f"unknown split {name!r}; use train, val or test")
        return getattr(self, name)

    def batch(self, *, seed: int, step: int, batch_size: int, crop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Random aligned crops of training images under a random flip / 90-degree turn (the eight
        symmetries of the square, the usual super-resolution augmentation); a pure function of
        (seed, step)."""
        rng = random.Random(seed * 1_000_003 + step)
        xs, ys = [], []
        for _ in range(batch_size):
            i = rng.randrange(len(self.train))
            x = self.train.inputs[i]
            _, h, w = x.shape
            top, left = rng.randrange(h - crop + 1), rng.randrange(w - crop + 1)
            flip, turns = rng.random() < 0.5, rng.randrange(4)
            pieces = [x] + ([self.train.targets[i]] if self.train.targets is not None else [])
            pieces = [p[:, top:top + crop, left:left + crop] for p in pieces]
            if flip:
                pieces = [p.flip(-1) for p in pieces]
            if turns:
                pieces = [p.rot90(turns, dims=(1, 2)) for p in pieces]
            xs.append(pieces[0])
            if len(pieces) > 1:
                ys.append(pieces[1])
        return torch.stack(xs), (torch.stack(ys) if ys else None)

    def eval_set(self, split: str = "val") -> EvalSet:
        """The whole images of a split; for super-resolution the inputs (bicubic) are the baseline."""
        data = self.split(split)
        return EvalSet(split=split, names=tuple(data.names), inputs=tuple(data.inputs),
                       targets=tuple(data.targets) if data.targets is not None else None,
                       baseline="bicubic" if self.kind == "sr4x" else None)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> float 3 x H x W in [-1, 1]."""
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """float C x H x W in [-1, 1] -> uint8 H x W x C."""
    return image.detach().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def downscale(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic (antialiased) downscaling of a C x H x W image whose sides are multiples of ``scale``."""
    _, h, w = image.shape
    out = F.interpolate(image[None], size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp(-1, 1)


def upscale(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upscaling: the input the super-resolution generator refines."""
    _, h, w = image.shape
    out = F.interpolate(image[None], size=(h * scale, w * scale), mode="bicubic", align_corners=False)
    return out[0].clamp(-1, 1)


def sr_pair(hr: torch.Tensor, scale: int = SR_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """(bicubic-down-then-up input, original) of an image cropped to multiples of ``scale``."""
    _, h, w = hr.shape
    hr = hr[:, : h // scale * scale, : w // scale * scale]
    return upscale(downscale(hr, scale), scale), hr


def photo(name: str) -> np.ndarray:
    """uint8 H x W x 3 of a photo of ``SR4X_SPLIT``, read from the package that ships it."""
    if name in PACKAGED_PHOTOS:
        import importlib.util

        from PIL import Image

        package, file = PACKAGED_PHOTOS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise UserError(f"the sr4x photo {name} ships with the package {package}, which is not installed; "
                            f"install the project's dependencies (pip install -e .)")
        path = Path(spec.origin).parent / file
        if not path.is_file():
            raise UserError(f"the sr4x photo {name} should be {path}, which is missing; reinstall {package}")
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    photo = getattr(skimage.data, name)()
    return np.stack([photo] * 3, axis=-1) if photo.ndim == 2 else photo


def sr4x_task() -> Task:
    """4x super-resolution on photos shipped with scikit-image, scikit-learn and matplotlib."""
    splits = {}
    for split, names in SR4X_SPLIT.items():
        pairs = [sr_pair(to_tensor(photo(n))) for n in names]
        splits[split] = Split([p[0] for p in pairs], [p[1] for p in pairs], list(names))
    return Task("sr4x", "sr4x", splits["train"], splits["val"], splits["test"], scale=SR_SCALE,
                notes={"split": "; ".join(f"{k}: {', '.join(v)}" for k, v in SR4X_SPLIT.items())})


# Pillow's modes of 16-bit (and 32-bit integer) greyscale images: its RGB conversion would clip them to white.
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def rgb8(image: Any) -> np.ndarray:
    """uint8 H x W x 3 of a Pillow image of any mode; 16-bit greyscale scaled to 8 bits (65535 -> 255)."""
    if image.mode in _WIDE_GREY:
        grey = np.clip(np.round(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_image(path: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return to_tensor(rgb8(image))
    except Image.DecompressionBombError:
        raise UserError(f"cannot read image {path}: it claims more pixels than Pillow decodes "
                        f"({Image.MAX_IMAGE_PIXELS * 2:,}); remove or replace the file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc.__class__.__name__}; remove or replace the file") from None


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_folder(folder: Path, *, what: str) -> tuple[list[torch.Tensor], list[str]]:
    if not folder.is_dir():
        raise UserError(f"missing folder {folder} ({what})")
    files = image_files(folder)
    if not files:
        raise UserError(f"folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}); {what} needs at least one")
    images = [read_image(p) for p in files]
    first = images[0].shape
    for path, image in zip(files, images):
        if image.shape != first:
            raise UserError(f"image {path} is {image.shape[2]}x{image.shape[1]} but {files[0].name} in the same folder "
                            f"is {first[2]}x{first[1]}; images of one folder must share a size")
    return images, [p.name for p in files]


def _aligned_split(folder: Path, what: str) -> Split:
    images, names = _read_folder(folder, what=what)
    inputs, targets = [], []
    for name, image in zip(names, images):
        width = image.shape[2]
        if width % 2:
            raise UserError(f"image {folder / name} is {width} pixels wide; an aligned pair (A|B side by side) "
                            "needs an even width")
        inputs.append(image[:, :, : width // 2])
        targets.append(image[:, :, width // 2:])
    return Split(inputs, targets, names)


def _halves(images: list[torch.Tensor], names: list[str]) -> tuple[Split, Split]:
    """Sorted images: the first half for validation, the rest for test (no image in both)."""
    if len(images) < 2:
        raise UserError(f"need at least 2 evaluation images to split into val and test, found {len(images)} "
                        f"({', '.join(names)})")
    half = len(images) // 2
    return Split(images[:half], None, names[:half]), Split(images[half:], None, names[half:])


def folder_task(root: Path) -> Task:
    """pix2pix (train/ val/ [test/]), CycleGAN (trainA/ testA/ ...) or one folder of input images."""
    if not root.exists():
        raise UserError(f"task {root} not found; give sr4x or a data folder")
    if not root.is_dir():
        raise UserError(f"task {root} is not a folder; give sr4x or a data folder")
    if (root / "train").is_dir():
        train = _aligned_split(root / "train", "aligned training pairs")
        val = _aligned_split(root / "val", "aligned validation pairs (pix2pix layout: train/ val/ test/)")
        test = _aligned_split(root / "test", "aligned test pairs") if (root / "test").is_dir() else val
        notes = {"split": "train/, val/, test/" if (root / "test").is_dir() else "train/, val/ (no test/: val is reported)"}
        return Task(str(root), "aligned", train, val, test, notes=notes)
    if (root / "trainA").is_dir() or (root / "testA").is_dir():
        inputs, names = _read_folder(root / "trainA", what="unaligned training inputs (CycleGAN layout)")
        train = Split(inputs, None, names)
        if (root / "valA").is_dir():
            v_images, v_names = _read_folder(root / "valA", what="validation inputs")
            t_images, t_names = _read_folder(root / "testA", what="test inputs (CycleGAN layout)")
            val, test = Split(v_images, None, v_names), Split(t_images, None, t_names)
            notes = {"split": "trainA/, valA/, testA/"}
        else:
            val, test = _halves(*_read_folder(root / "testA", what="test inputs (CycleGAN layout)"))
            notes = {"split": "trainA/; testA/ sorted, first half val, second half test"}
        # The target domain, for FID: every B image, read when FID asks for them.
        target_files = tuple(f for d in ("trainB", "valB", "testB") if (root / d).is_dir()
                             for f in image_files(root / d))
        return Task(str(root), "unaligned", train, val, test, notes=notes, target_files=target_files)
    files = image_files(root)
    if not files:
        raise UserError(f"{root} has no train/, trainA/ or images; expected a pix2pix (train/ val/ test/), "
                        "CycleGAN (trainA/ testA/) or single-folder layout")
    images, names = _read_folder(root, what="input images")
    if len(images) < 3:
        raise UserError(f"{root} has {len(images)} image(s); a single-folder task needs at least 3 "
                        "(split by image into train, val and test)")
    n_val = n_test = max(1, len(images) // 10)
    n_train = len(images) - n_val - n_test
    split = lambda a, b: Split(images[a:b], None, names[a:b])  # noqa: E731
    return Task(str(root), "single", split(0, n_train), split(n_train, n_train + n_val), split(n_train + n_val, None),
                notes={"split": "sorted files: last 10% test, the 10% before val, rest train"})


def load_task(spec: str) -> Task:
    """``sr4x`` or the path of a data folder."""
    if spec == "sr4x":
        return sr4x_task()
    return folder_task(Path(spec))


def check_crop(task: Task, crop: int) -> None:
    """Fail early, naming the image, when a training image is smaller than the crop."""
    if crop % 4 or crop < 16:
        raise UserError(f"crop {crop} is not allowed; use a multiple of 4, at least 16")
    for name, image in zip(task.train.names, task.train.inputs):
        if image.shape[1] < crop or image.shape[2] < crop:
            raise UserError(f"training image {name} is {image.shape[2]}x{image.shape[1]}, smaller than the crop {crop}; "
                            "pass a smaller --crop")
