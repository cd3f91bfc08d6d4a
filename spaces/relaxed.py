"""An agd space's choices factored into probabilities, and its MACs relaxed: AutoGAN-Distiller's
differentiable cost, computed from the exact analytic count.

An agd config is a width for each sampling site (stem, down1, trunk, up1, up2) and, per layer, a
token that factors into an operator and a width (``res32``: ``res`` at 32; ``skip`` has none). With
independent categorical distributions over those choices, ``RelaxedMacs`` gives the exact expected
MACs of a config drawn from them: every term of ``spaces.modules.plan_terms`` depends on at most two
neighbouring widths, and the trunk's width entering each layer follows a chain (a ``conv`` cell sets
it, the others keep it), so the expectation is a sum of small tables, built once through the exact
count, contracted with the probabilities. One-hot probabilities give exactly the config's MACs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from spaces.modules import plan_terms
from spaces.plan import AgdLayerPlan, Plan, agd_token, parse_agd_token
from spaces.space import Config, SearchSpace

SAMPLING_SITES = ("stem", "down1", "trunk", "up1", "up2")


@dataclass(frozen=True)
class AgdFactors:
    """The agd space's choices: the sampling sites' widths (as the config writes them), the operators
    (``skip`` included where the space has it) and the layer widths (channels)."""

    sites: dict[str, tuple[int, ...]]
    ops: tuple[str, ...]
    widths: tuple[int, ...]
    layers: int

    @classmethod
    def of(cls, space: SearchSpace) -> AgdFactors:
        if space.family != "agd":
            raise ValueError(f"space '{space.name}' is of the {space.family} family; only agd spaces factor into "
                             "operators and widths")
        by_name = {site.name: site.choices for site in space.sites}
        tokens = by_name["layer0"]
        ops = tuple(dict.fromkeys(parse_agd_token(str(t))[0] for t in tokens))
        widths = tuple(sorted({parse_agd_token(str(t))[1] for t in tokens if t != "skip"}))
        return cls(sites={name: tuple(sorted(int(c) for c in by_name[name])) for name in SAMPLING_SITES},
                   ops=ops, widths=widths, layers=space.spec.layers)

    def config(self, sites: dict[str, int], ops: list[int], widths: list[int]) -> Config:
        """The config of choice indices: ``sites[name]`` into ``self.sites[name]``, per layer an operator
        and a width index."""
        config: Config = {name: self.sites[name][sites[name]] for name in SAMPLING_SITES}
        for layer, (o, w) in enumerate(zip(ops, widths)):
            config[f"layer{layer}"] = agd_token(self.ops[o], self.widths[w])
        return config

    def indices(self, config: Config) -> tuple[dict[str, int], list[int], list[int]]:
        """Inverse of ``config`` (a skip layer's width index is 0)."""
        sites = {name: self.sites[name].index(int(config[name])) for name in SAMPLING_SITES}
        ops, widths = [], []
        for layer in range(self.layers):
            op, width = parse_agd_token(str(config[f"layer{layer}"]))
            ops.append(self.ops.index(op))
            widths.append(self.widths.index(width) if op != "skip" else 0)
        return sites, ops, widths


class RelaxedMacs:
    """Expected MACs (one convention) of an agd space under independent choice probabilities."""

    def __init__(self, space: SearchSpace, convention: str = "torchprofile") -> None:
        self.space, self.convention = space, convention
        self.factors = f = AgdFactors.of(space)
        spec = space.spec
        scale = {name: spec.widths[name].scale for name in SAMPLING_SITES}
        ch = {name: [c * scale[name] for c in f.sites[name]] for name in SAMPLING_SITES}
        # the widths the trunk can have entering a layer: the trunk's choices and every conv width
        self.values = tuple(sorted(set(ch["trunk"]) | set(f.widths)))
        h = w = space.resolution
        base = Plan(spec.in_channels, spec.out_channels, spec.norm, spec.global_residual, ch["stem"][0],
                    ch["down1"][0], ch["trunk"][0], ch["up1"][0], ch["up2"][0], ())

        def term(name: str, plan: Plan) -> float:
            return float(getattr(plan_terms(plan, h, w)[name], convention))

        def table(name: str, shape: tuple[int, ...], plan_of) -> torch.Tensor:
            out = torch.zeros(shape, dtype=torch.float64)
            for index in torch.cartesian_prod(*[torch.arange(n) for n in shape]).reshape(-1, len(shape)).tolist():
                out[tuple(index)] = term(name, plan_of(*index))
            return out

        n = {name: len(ch[name]) for name in SAMPLING_SITES}
        v, o, k = len(self.values), len(f.ops), len(f.widths)
        self.stem = table("stem", (n["stem"],), lambda i: replace(base, stem=ch["stem"][i]))
        self.down1 = table("down1", (n["stem"], n["down1"]),
                           lambda i, j: replace(base, stem=ch["stem"][i], down1=ch["down1"][j]))
        self.down2 = table("down2", (n["down1"], n["trunk"]),
                           lambda i, j: replace(base, down1=ch["down1"][i], trunk=ch["trunk"][j]))
        self.cell = table("trunk.0", (v, o, k), lambda i, j, m: replace(base, blocks=(
            AgdLayerPlan(f.ops[j], self.values[i], f.widths[m] if f.ops[j] != "skip" else 0),)))
        self.up1 = table("up1", (v, n["up1"]), lambda i, j: replace(base, trunk=self.values[i], up1=ch["up1"][j]))
        self.up2 = table("up2", (n["up1"], n["up2"]), lambda i, j: replace(base, up1=ch["up1"][i], up2=ch["up2"][j]))
        self.head = table("head", (n["up2"],), lambda i: replace(base, up2=ch["up2"][i]))
        # trunk choice -> its width among ``values``; a layer width -> its width among ``values``
        self.trunk_value = torch.zeros(n["trunk"], v, dtype=torch.float64)
        for i, c in enumerate(ch["trunk"]):
            self.trunk_value[i, self.values.index(c)] = 1.0
        self.width_value = torch.zeros(k, v, dtype=torch.float64)
        for i, c in enumerate(f.widths):
            self.width_value[i, self.values.index(c)] = 1.0
        self.conv = f.ops.index("conv") if "conv" in f.ops else None
        self._on: dict[torch.device, dict[str, torch.Tensor]] = {}

    def __call__(self, sites: dict[str, torch.Tensor], ops: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """Expected MACs for probabilities ``sites[name]`` (over the site's choices, ascending), ``ops``
        (layers x operators) and ``widths`` (layers x layer widths); differentiable in all of them."""
        t = self._tables(ops.device)
        p = {name: sites[name].to(torch.float64) for name in SAMPLING_SITES}
        ops, widths = ops.to(torch.float64), widths.to(torch.float64)
        cost = t["stem"] @ p["stem"] + p["stem"] @ t["down1"] @ p["down1"] + p["down1"] @ t["down2"] @ p["trunk"]
        q = p["trunk"] @ t["trunk_value"]  # the distribution of the trunk's width entering layer 0
        for layer in range(self.factors.layers):
            cost = cost + torch.einsum("v,o,k,vok->", q, ops[layer], widths[layer], t["cell"])
            if self.conv is not None:
                conv = ops[layer, self.conv]
                q = conv * (widths[layer] @ t["width_value"]) + (1 - conv) * q
        return cost + q @ t["up1"] @ p["up1"] + p["up1"] @ t["up2"] @ p["up2"] + t["head"] @ p["up2"]

    def _tables(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The tables on ``device`` (copied once per device)."""
        if device not in self._on:
            self._on[device] = {name: getattr(self, name).to(device) for name in (
                "stem", "down1", "down2", "cell", "up1", "up2", "head", "trunk_value", "width_value")}
        return self._on[device]
