"""``python -m nas.apply``: run a teacher or an exported student on your own images.

For a super-resolution model (task ``sr4x``) the inputs are low-resolution images: each is
upscaled 4x (bicubic) before the generator, so the outputs are 4x larger. Images run through the
tiler that evaluation uses (``evaluators.tiling``): reflect-padded to the generator's multiple and
cropped back, in tiles with a halo of at least the receptive field when they are larger than
``--tile`` (equal to a whole run). Inputs are only read; each gives ``NAME.png`` (``NAME.EXT.png`` where
two inputs share a NAME). Images too large (``MAX_PIXELS``, or ``MAX_WHOLE_PIXELS`` for networks that
run whole) or unreadable are skipped with their name and the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm import tqdm

from evaluators.tiling import Geometry, geometry, run_image

from nas.checkpoint import LoadedGenerator, load_generator
from nas.cli import Parser, run
from nas.data import IMAGE_SUFFIXES, SR_SCALE, image_files, read_image, to_uint8, upscale
from nas.files import atomic_write, check_output_folder
from spaces.errors import UserError


def load_model(path: str | Path) -> LoadedGenerator:
    """A generator checkpoint, a training checkpoint of a teacher, or an export folder (its model.pth)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pth").is_file():
            raise UserError(f"{path} is a folder without model.pth; give a checkpoint or a nas.export folder")
        path = path / "model.pth"
    return load_generator(path)


def model_scale(model: LoadedGenerator) -> int:
    return SR_SCALE if model.meta.get("task") == "sr4x" else 1


# Largest side (pixels, after upscaling) run in one piece; larger images are tiled, to bound memory.
DEFAULT_TILE = 1024
# Largest output (pixels, after upscaling) written, and the largest run whole by a network that cannot be
# tiled (instance norm, a U-Net): about 1.5 GB and 0.2 GB of float output, activations many times that.
MAX_PIXELS = 100_000_000
MAX_WHOLE_PIXELS = 16_000_000


def apply_to_image(module: torch.nn.Module, image: torch.Tensor, scale: int, device: torch.device, *,
                   tile: int | None = DEFAULT_TILE, geo: Geometry | None = None) -> torch.Tensor:
    x = upscale(image, scale) if scale > 1 else image
    return run_image(module, x, tile=tile, geo=geo, device=device)


def build_parser() -> Parser:
    p = Parser(prog="python -m nas.apply", description=__doc__)
    p.add_argument("--model", required=True, help="checkpoint (.pth) or nas.export folder")
    p.add_argument("--input", required=True, help="an image or a folder of images")
    p.add_argument("--output", required=True, help="folder for the results (PNG)")
    p.add_argument("--scale", type=int, help="upscale inputs by this first (default: 4 for sr4x models, else 1)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"images larger than this (pixels per side, after upscaling) run in tiles (default {DEFAULT_TILE})")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    return p


def output_names(files: list[Path]) -> dict[Path, str]:
    """Each input's output file name: ``NAME.png`` for input ``NAME.EXT``, or ``NAME.EXT.png`` where two
    inputs share a NAME (``x.png`` and ``x.jpg`` give ``x.png.png`` and ``x.jpg.png``), so none overwrites
    another."""
    stems: dict[str, int] = {}
    for path in files:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    return {path: f"{path.stem}.png" if stems[path.stem] == 1 else f"{path.name}.png" for path in files}


def too_large(path: Path, scale: int, geo: Geometry) -> str | None:
    """Why ``path`` is skipped for its size, read from its header before it is decoded (None: it is not)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        return f"{path.name}: it claims more pixels than Pillow decodes ({2 * Image.MAX_IMAGE_PIXELS:,})"
    except (OSError, ValueError):
        return None  # read_image says what is wrong with it
    pixels, limit = width * height * scale * scale, MAX_PIXELS if geo.tileable else MAX_WHOLE_PIXELS
    if pixels > limit:
        why = "" if geo.tileable else " (this network runs each image whole: its norms or skips span the image)"
        return (f"{path.name}: {width}x{height} is {pixels / 1e6:.0f} megapixels after upscaling x{scale}, over the "
                f"limit of {limit / 1e6:.0f}{why}; downscale it or cut it into parts")
    return None


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from nas.device import pick_device

    args = build_parser().parse_args(argv)
    if args.tile < 16:
        raise UserError(f"--tile must be at least 16 pixels, got {args.tile}")
    model = load_model(args.model)
    source, output = Path(args.input), Path(args.output)
    if not source.exists():
        raise UserError(f"input {source} not found; give an image or a folder of images")
    files = image_files(source) if source.is_dir() else [source]
    if not files:
        raise UserError(f"{source} has no images ({', '.join(IMAGE_SUFFIXES)})")
    folder = (source if source.is_dir() else source.parent).resolve()
    if output.resolve() == folder or (source.is_dir() and output.resolve().is_relative_to(folder)):
        raise UserError(f"--output {output} is in the input folder {source}; choose a folder outside it so that "
                        "inputs stay untouched")
    check_output_folder(output, "--output")
    scale = args.scale if args.scale is not None else model_scale(model)
    if scale < 1:
        raise UserError(f"--scale must be at least 1, got {scale}")
    device = pick_device(args.device)
    module = model.module.to(device).eval()
    geo = geometry(module, model.space.spec.in_channels)
    names = output_names(files)  # (the folder is made with the first output: none when every image is skipped)
    written, skipped = 0, []
    for path in tqdm(files, desc="apply", disable=len(files) < 2 or args.no_progress):
        try:
            reason = too_large(path, scale, geo)
            if reason:
                raise UserError(reason)
            image = read_image(path)
        except UserError as exc:
            skipped.append(str(exc))
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        result = apply_to_image(module, image, scale, device, tile=args.tile, geo=geo)
        pixels = Image.fromarray(to_uint8(result))
        atomic_write(output / names[path], lambda tmp: pixels.save(tmp, format="PNG"))
        written += 1
    if not written:
        raise UserError(f"no image written: all {len(files)} input(s) were skipped (the reasons are above)")
    print(f"wrote {written} image(s) to {output}" + (f"; skipped {len(skipped)}" if skipped else ""))
    return 0


if __name__ == "__main__":
    run(main)
