"""Value types naming model components: sets of MLP neurons and of attention heads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from emocircuits.errors import EmocircuitsError


@dataclass(frozen=True)
class NeuronSet:
    """MLP neurons as ``{layer: sorted unique neuron indices}``; hashable, printable, JSON-able."""

    layers: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean = {int(k): tuple(sorted({int(i) for i in v})) for k, v in self.layers.items() if len(v)}
        object.__setattr__(self, "layers", dict(sorted(clean.items())))

    @classmethod
    def from_pairs(cls, pairs: Iterable[Iterable[int]]) -> NeuronSet:
        out: dict[int, list[int]] = {}
        for pair in pairs:
            layer, index = (int(x) for x in pair)
            out.setdefault(layer, []).append(index)
        return cls(out)

    def pairs(self) -> list[list[int]]:
        """``[[layer, index], ...]`` in (layer, index) order: the schema of ``neurons.json``."""
        return [[layer, i] for layer, idx in self.layers.items() for i in idx]

    def __len__(self) -> int:
        return sum(len(v) for v in self.layers.values())

    def __hash__(self) -> int:
        return hash(tuple((k, v) for k, v in self.layers.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NeuronSet) and dict(self.layers) == dict(other.layers)

    def counts(self, n_layers: int | None = None) -> list[int]:
        """Neurons per layer, ``[n_layers]`` (up to the highest layer present when n_layers is None)."""
        n = n_layers if n_layers is not None else (max(self.layers) + 1 if self.layers else 0)
        return [len(self.layers.get(layer, ())) for layer in range(n)]

    def restrict(self, layers: Iterable[int]) -> NeuronSet:
        keep = set(layers)
        return NeuronSet({k: v for k, v in self.layers.items() if k in keep})

    def union(self, other: NeuronSet) -> NeuronSet:
        merged = {k: set(v) for k, v in self.layers.items()}
        for k, v in other.layers.items():
            merged.setdefault(k, set()).update(v)
        return NeuronSet({k: tuple(v) for k, v in merged.items()})

    def intersection(self, other: NeuronSet) -> NeuronSet:
        return NeuronSet({k: tuple(set(v) & set(other.layers.get(k, ()))) for k, v in self.layers.items()})

    def validate(self, n_layers: int, d_mlp: int) -> NeuronSet:
        for layer, idx in self.layers.items():
            if not 0 <= layer < n_layers:
                raise EmocircuitsError(f"Neuron layer {layer} is out of range; this model has layers 0..{n_layers - 1}.")
            if idx and not (0 <= idx[0] and idx[-1] < d_mlp):
                bad = idx[-1] if idx[-1] >= d_mlp else idx[0]
                raise EmocircuitsError(
                    f"Neuron index {bad} in layer {layer} is out of range; this model has neurons 0..{d_mlp - 1}."
                )
        return self

    def __repr__(self) -> str:
        return f"NeuronSet({len(self)} neurons over {len(self.layers)} layers)"


@dataclass(frozen=True)
class HeadSet:
    """Attention (query) heads as sorted unique ``(layer, head)`` pairs."""

    heads: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(sorted({(int(a), int(b)) for a, b in self.heads})))

    def by_layer(self) -> dict[int, tuple[int, ...]]:
        out: dict[int, list[int]] = {}
        for layer, head in self.heads:
            out.setdefault(layer, []).append(head)
        return {k: tuple(v) for k, v in out.items()}

    def __len__(self) -> int:
        return len(self.heads)

    def validate(self, n_layers: int, n_heads: int) -> HeadSet:
        for layer, head in self.heads:
            if not 0 <= layer < n_layers:
                raise EmocircuitsError(f"Head layer {layer} is out of range; this model has layers 0..{n_layers - 1}.")
            if not 0 <= head < n_heads:
                raise EmocircuitsError(
                    f"Head index {head} in layer {layer} is out of range; this model has query heads 0..{n_heads - 1}."
                )
        return self
