"""Loading and validating search-space files.

A space file is data: it is parsed with ``yaml.safe_load``, checked against a JSON Schema
(one per family) and then against the few rules a schema cannot say. Every error names the
file, the key path and the line, and says what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from spaces.errors import SpaceError

FAMILIES = ("resnet", "inception", "agd", "unet")
NORMS = ("instance", "batch", "none")  # "none": no norm layers, as in EDSR / ESRGAN
RESNET_BLOCKS = ("plain", "mobile")
AGD_OPERATORS = ("conv", "res", "sep", "skip")
SAMPLING_SITES = ("stem", "down1", "trunk", "up1", "up2")

# Bounds on what a space may ask for: wide enough for the paper-sized spaces and real teachers (ESRGAN's
# 23 blocks of 64 channels, unet_256's 512 channels over 8 levels), narrow enough that a mistyped number
# cannot ask for hundreds of GB.
MAX_CHANNELS = 4096  # of one layer: choice * scale
MAX_BLOCKS = 64  # blocks, layers
MAX_LEVELS = 12  # a U-Net's down-samplings
MAX_KERNEL = 15
MAX_RESOLUTION = 8192
MAX_IMAGE_CHANNELS = 64

_POSITIVE_INT = {"type": "integer", "minimum": 1}
_BLOCK_COUNT = {"type": "integer", "minimum": 1, "maximum": MAX_BLOCKS}


def _width_site(minimum: int = 1) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["choices"],
        "additionalProperties": False,
        "properties": {
            "choices": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"type": "integer", "minimum": minimum, "maximum": MAX_CHANNELS},
            },
            "scale": {"type": "integer", "minimum": 1, "maximum": MAX_CHANNELS},
        },
    }


_COMMON_PROPERTIES: dict[str, Any] = {
    "family": {"enum": list(FAMILIES)},
    "description": {"type": "string"},
    "in_channels": {"type": "integer", "minimum": 1, "maximum": MAX_IMAGE_CHANNELS},
    "out_channels": {"type": "integer", "minimum": 1, "maximum": MAX_IMAGE_CHANNELS},
    "norm": {"enum": list(NORMS)},
    "resolution": {"type": "integer", "minimum": 16, "maximum": MAX_RESOLUTION},
    "global_residual": {"type": "boolean"},
}
_COMMON_REQUIRED = ["family", "in_channels", "out_channels", "norm"]
# The pix2pix/CycleGAN ResnetGenerator layout that the resnet, inception and agd families share.
_WIDTHS = {
    "type": "object",
    "required": list(SAMPLING_SITES),
    "additionalProperties": False,
    "properties": {site: _width_site() for site in SAMPLING_SITES},
}

_FAMILY_PROPERTIES: dict[str, dict[str, Any]] = {
    "resnet": {
        "widths": _WIDTHS,
        "block": {"enum": list(RESNET_BLOCKS)},
        "blocks": _BLOCK_COUNT,
        "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "groups": {"type": "array", "minItems": 1, "maxItems": MAX_BLOCKS, "items": _width_site()},
    },
    "inception": {
        "widths": _WIDTHS,
        "blocks": _BLOCK_COUNT,
        "kernel_sizes": {
            "type": "array", "minItems": 1, "uniqueItems": True,
            "items": {"type": "integer", "minimum": 1, "maximum": MAX_KERNEL},
        },
        "branch_widths": {
            "type": "array", "minItems": 1, "uniqueItems": True,
            "items": {"type": "integer", "minimum": 0, "maximum": MAX_CHANNELS},
        },
    },
    "agd": {
        "widths": _WIDTHS,
        "layers": _BLOCK_COUNT,
        "operators": {
            "type": "array", "minItems": 1, "uniqueItems": True,
            "items": {"enum": list(AGD_OPERATORS)},
        },
        "width_ratios": {
            "type": "array", "minItems": 1, "uniqueItems": True,
            "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        },
    },
    "unet": {
        "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "down": {"type": "array", "minItems": 2, "maxItems": MAX_LEVELS, "items": _width_site()},
        "up": {"type": "array", "minItems": 1, "maxItems": MAX_LEVELS - 1, "items": _width_site()},
    },
}
_FAMILY_REQUIRED = {
    "resnet": ["widths", "block", "blocks", "groups"],
    "inception": ["widths", "blocks", "kernel_sizes", "branch_widths"],
    "agd": ["widths", "layers", "operators", "width_ratios"],
    "unet": ["down", "up"],
}


def family_schema(family: str) -> dict[str, Any]:
    """The JSON Schema a space file of ``family`` must satisfy."""
    return {
        "type": "object",
        "required": _COMMON_REQUIRED + _FAMILY_REQUIRED[family],
        "additionalProperties": False,
        "properties": {**_COMMON_PROPERTIES, **_FAMILY_PROPERTIES[family]},
    }


@dataclass(frozen=True)
class WidthSite:
    """A searchable channel width: ``channels = choice * scale``."""

    choices: tuple[int, ...]
    scale: int = 1


@dataclass(frozen=True)
class SpaceSpec:
    """A validated space file. Family-specific fields are empty for other families."""

    name: str
    file: str
    family: str
    in_channels: int
    out_channels: int
    norm: str
    resolution: int
    global_residual: bool
    widths: dict[str, WidthSite]
    description: str = ""
    text: str = ""  # the file's text, so that checkpoints can carry their space
    # resnet
    block: str = ""
    blocks: int = 0
    dropout: float = 0.0
    groups: tuple[WidthSite, ...] = ()
    # inception
    kernel_sizes: tuple[int, ...] = ()
    branch_widths: tuple[int, ...] = ()
    # agd
    layers: int = 0
    operators: tuple[str, ...] = ()
    width_ratios: tuple[float, ...] = ()
    # unet: the output width of each level's down conv (outermost first), of each inner level's up conv
    down: tuple[WidthSite, ...] = ()
    up: tuple[WidthSite, ...] = ()

    @property
    def multiple(self) -> int:
        """What the sides of an input must be multiples of: the generator's total down-sampling."""
        return 2 ** len(self.down) if self.family == "unet" else 4


class _Lines:
    """Maps a key path of the parsed document to its line (1-based) via yaml's node tree."""

    def __init__(self, text: str) -> None:
        self.root = yaml.compose(text, Loader=yaml.SafeLoader)

    def line(self, path: tuple[Any, ...]) -> int | None:
        """Line of the deepest existing node on ``path`` (of its key, for a mapping entry)."""
        node = self.root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for key in path:
            child = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.value == str(key):
                        child, line = v, k.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                child = node.value[key]
                line = child.start_mark.line + 1
            if child is None:
                break
            node = child
        return line

    def key_line(self, path: tuple[Any, ...], key: str) -> int | None:
        """Line of the key ``key`` inside the mapping at ``path`` (for unknown keys)."""
        parent_line = self.line(path)
        node = self.root
        for part in path:
            found = None
            if isinstance(node, yaml.MappingNode):
                found = next((v for k, v in node.value if k.value == str(part)), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                found = node.value[part] if part < len(node.value) else None
            if found is None:
                return parent_line
            node = found
        if isinstance(node, yaml.MappingNode):
            for k, _ in node.value:
                if k.value == key:
                    return k.start_mark.line + 1
        return parent_line


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: jsonschema.ValidationError) -> tuple[tuple[Any, ...], str, str | None]:
    """(key path, message, unknown key) for one schema error, in words a user can act on."""
    path = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    value = error.instance
    kind = error.validator
    if kind == "required":
        missing = error.message.split("'")[1]
        return path + (missing,), f"missing key '{missing}'; add it (see the built-in spaces/*.yaml)", None
    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(value) - set(allowed))[0]
        return path + (extra,), f"unknown key '{extra}'; allowed keys: {', '.join(allowed)}", extra
    if kind == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        what = "operator" if path and path[0] == "operators" else "value"
        return path, f"unknown {what} {value!r}; allowed: {allowed}", None
    if kind == "type":
        expected = error.validator_value
        if expected == "integer" and schema.get("minimum", 0) >= 1:
            return path, f"{value!r} is not a positive integer", None
        return path, f"expected {'an' if expected[0] in 'aeiou' else 'a'} {expected}, got {value!r}", None
    if kind == "minimum":
        if error.validator_value == 1:
            what = "a block count of 0" if path and path[-1] in ("blocks", "layers") else f"{value!r}"
            return path, f"{what} is not allowed; must be a positive integer", None
        return path, f"{value!r} is too small; must be >= {error.validator_value}", None
    if kind == "exclusiveMinimum":
        return path, f"{value!r} is too small; must be > {error.validator_value}", None
    if kind in ("maximum", "exclusiveMaximum"):
        op = "<=" if kind == "maximum" else "<"
        return path, f"{value!r} is too large; must be {op} {error.validator_value}", None
    if kind == "minItems":
        if path and path[-1] == "down":
            return path, f"{len(value)} down level(s); a U-Net needs at least 2", None
        return path, "empty choice list; give at least one choice", None
    if kind == "maxItems":
        return path, f"{len(value)} entries are too many; at most {error.validator_value}", None
    if kind == "uniqueItems":
        return path, f"duplicate entries in {value!r}; list each choice once", None
    return path, error.message, None


def _fail(file: str, lines: _Lines, path: tuple[Any, ...], message: str, key: str | None = None) -> None:
    line = lines.key_line(path[:-1], key) if key is not None else lines.line(path)
    raise SpaceError(file, _dotted(path), line, message)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


class _StrictLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (yaml keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(text: str, file: str) -> Any:
    """The parsed document; SpaceError for anchors and aliases (refused before anything expands them: a
    'billion laughs' file of 1 KB would), duplicate keys, numbers too long to read, and invalid YAML."""
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                raise SpaceError(file, "", token.start_mark.line + 1, "YAML anchors and aliases (&name, *name) are "
                                 "not allowed in a space file; write each value out")
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise SpaceError(file, str(dup.key), dup.line, f"key '{dup.key}' is given twice in one mapping; keep one") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits (Python's conversion limit)
        raise SpaceError(file, "", None, f"a value cannot be read ({str(exc).splitlines()[0]})") from None


def _site(raw: dict[str, Any]) -> WidthSite:
    return WidthSite(tuple(sorted(int(c) for c in raw["choices"])), int(raw.get("scale", 1)))


def _scaled_sites(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], WidthSite]]:
    """Every width site of a validated document with its key path."""
    sites = [(("widths", name), _site(raw)) for name, raw in (data.get("widths") or {}).items()]
    for key in ("groups", "down", "up"):
        sites += [((key, i), _site(raw)) for i, raw in enumerate(data.get(key) or [])]
    return sites


def parse_space(text: str, *, file: str, name: str) -> SpaceSpec:
    """Validate the text of a space file and return its spec; raises SpaceError."""
    try:
        data = _read_yaml(text, file)
        lines = _Lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpaceError(file, "", mark.line + 1 if mark else None, f"not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise SpaceError(file, "", 1, "a space file must be a mapping of keys (family, widths, ...); "
                         "copy one of the built-in spaces/*.yaml")
    family = data.get("family")
    if family not in FAMILIES:
        if "family" not in data:
            _fail(file, lines, ("family",), f"missing key 'family'; allowed: {', '.join(FAMILIES)}")
        _fail(file, lines, ("family",), f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    validator = jsonschema.Draft202012Validator(family_schema(family))
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if errors:
        path, message, key = _describe(errors[0])
        _fail(file, lines, path, message, key)

    widths = {site: _site(data["widths"][site]) for site in SAMPLING_SITES} if "widths" in data else {}
    for path, site in _scaled_sites(data):
        if max(site.choices) * site.scale > MAX_CHANNELS:
            _fail(file, lines, path, f"choice {max(site.choices)} x scale {site.scale} = {max(site.choices) * site.scale} "
                  f"channels; at most {MAX_CHANNELS} channels per layer")
    resolution = int(data.get("resolution", 256))
    multiple = 2 ** len(data["down"]) if family == "unet" else 4
    if resolution % multiple:
        _fail(file, lines, ("resolution",), f"{resolution} is not a multiple of {multiple} "
              f"({multiple.bit_length() - 1} stride-2 downsamplings)")
    spec = dict(
        name=name, file=file, family=family,
        in_channels=int(data["in_channels"]), out_channels=int(data["out_channels"]),
        norm=data["norm"], resolution=resolution, global_residual=bool(data.get("global_residual", False)),
        widths=widths, description=str(data.get("description", "")), text=text,
    )
    if spec["global_residual"] and spec["in_channels"] != spec["out_channels"]:
        _fail(file, lines, ("global_residual",),
              "global_residual needs in_channels == out_channels (the input is added to the output)")
    if family == "resnet":
        groups = tuple(_site(g) for g in data["groups"])
        if len(groups) > data["blocks"]:
            _fail(file, lines, ("groups",), f"{len(groups)} block groups but only {data['blocks']} blocks; "
                  "give at most one group per block")
        spec.update(block=data["block"], blocks=int(data["blocks"]), groups=groups,
                    dropout=float(data.get("dropout", 0.0)))
    elif family == "inception":
        for i, k in enumerate(data["kernel_sizes"]):
            if k % 2 == 0:
                _fail(file, lines, ("kernel_sizes", i), f"kernel size {k} is even; use odd sizes (1, 3, 5, ...)")
        spec.update(blocks=int(data["blocks"]), kernel_sizes=tuple(int(k) for k in data["kernel_sizes"]),
                    branch_widths=tuple(sorted(int(w) for w in data["branch_widths"])))
    elif family == "agd":
        largest = max(widths["trunk"].choices) * widths["trunk"].scale
        hidden = [max(1, int(round(r * largest))) for r in data["width_ratios"]]
        if len(set(hidden)) != len(hidden):
            _fail(file, lines, ("width_ratios",), f"ratios {data['width_ratios']} give duplicate widths {hidden} "
                  f"of the largest trunk width {largest}; use ratios that differ by more")
        spec.update(layers=int(data["layers"]), operators=tuple(data["operators"]),
                    width_ratios=tuple(sorted(float(r) for r in data["width_ratios"])))
    elif family == "unet":
        if len(data["up"]) != len(data["down"]) - 1:
            _fail(file, lines, ("up",), f"{len(data['up'])} up levels for {len(data['down'])} down levels; give one "
                  "fewer up level than down levels (the outermost up conv makes the output image)")
        spec.update(down=tuple(_site(d) for d in data["down"]), up=tuple(_site(u) for u in data["up"]),
                    dropout=float(data.get("dropout", 0.0)))
    return SpaceSpec(**spec)


def load_space_file(path: str | Path) -> SpaceSpec:
    """Read and validate a space file; raises SpaceError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpaceError(str(path), "", None, "file not found; give a built-in space name "
                         f"({', '.join(FAMILIES)}) or the path of a space YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(str(path), "", None, f"cannot read the file ({exc.__class__.__name__}: {exc})") from None
    return parse_space(text, file=str(path), name=path.stem)

