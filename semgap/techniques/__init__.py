"""The semantic techniques, by name: a new technique is a new module plus one line here.

A `TechniqueSet` is what a semantic session applies. It travels as one field of the session's
prefill request, `techniques` (its `spec`: comma-separated `name` or `name=value`, in registry
order, or `none`), beside `sampler` (semgap.model.sampling); the server keeps both with the session's KV
cache, so decode requests carry neither. Client and server apply the set through the same methods:
the client `encode_request`s and `decode_response`s, the server `decode_request`s and
`encode_response`s, each technique's hooks in registry order when encoding and in reverse when decoding.
"""
from __future__ import annotations

from dataclasses import dataclass

from semgap.wire import names
from semgap.techniques.base import Message, Step, Technique
from semgap.techniques.cast import Cast
from semgap.techniques.compress import Compress
from semgap.techniques.int8 import Int8
from semgap.techniques.logprobs import Logprobs
from semgap.techniques.narrow_ids import NarrowIds
from semgap.techniques.prune import Prune
from semgap.techniques.token_only import TokenOnly, token_of

# Registry order is application order when encoding a response: choose rows, turn logits into a token,
# narrow the floats left, compress last.
TECHNIQUES: dict[str, type[Technique]] = {
    "prune": Prune,
    "token-only": TokenOnly,
    "logprobs": Logprobs,
    "cast": Cast,
    "int8": Int8,
    names.COMPRESS: Compress,
    "narrow-ids": NarrowIds,
}
# Pairs that decide the same thing two ways: a set holds at most one of each.
EXCLUSIVE = (("token-only", "logprobs"), ("cast", "int8"))
NONE = "none"
# The chain `--semgap-ablation all` adds one by one: today's logits techniques, then token return.
ABLATION_ORDER = ("prune", "cast", "int8", names.COMPRESS, "narrow-ids", "token-only", "logprobs")


def make_technique(spec: str) -> Technique:
    """`name` or `name=value` as its technique; ValueError naming the choices for an unknown name."""
    name, _, value = spec.strip().partition("=")
    if name not in TECHNIQUES:
        raise ValueError(f"unknown semantic technique {name!r}; choose from {', '.join(TECHNIQUES)} or {NONE}")
    return TECHNIQUES[name](value or None)


@dataclass(frozen=True)
class TechniqueSet:
    """The techniques one semantic session applies, in registry order."""

    techniques: tuple[Technique, ...] = ()

    def __post_init__(self) -> None:
        order = list(TECHNIQUES)
        object.__setattr__(self, "techniques", tuple(sorted(self.techniques, key=lambda t: order.index(t.name))))
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"a technique appears twice in {self.spec!r}")
        for first, second in EXCLUSIVE:
            if first in names and second in names:
                raise ValueError(f"{first} and {second} decide the same thing; choose one")

    @classmethod
    def parse(cls, text: str) -> "TechniqueSet":
        specs = [spec.strip() for spec in text.split(",") if spec.strip()]
        if specs == [NONE]:
            return cls()
        if not specs:
            raise ValueError(f"no technique in {text!r}; name some or {NONE}")
        return cls(tuple(make_technique(spec) for spec in specs))

    @property
    def names(self) -> list[str]:
        return [technique.name for technique in self.techniques]

    def __str__(self) -> str:
        """The names in registry order, or `none`: extra_info["techniques"] and the ablation label."""
        return ",".join(self.names) or NONE

    @property
    def spec(self) -> str:
        """The names with their settings: the `techniques` field of a prefill request."""
        return ",".join(technique.spec for technique in self.techniques) or NONE

    @property
    def lossless(self) -> bool:
        return all(technique.lossless for technique in self.techniques)

    def get(self, name: str) -> Technique | None:
        return next((technique for technique in self.techniques if technique.name == name), None)

    def with_technique(self, technique: Technique) -> "TechniqueSet":
        return TechniqueSet((*self.techniques, technique))

    def conflicts_with(self, technique: Technique) -> bool:
        return any(technique.name in pair and other in pair for pair in EXCLUSIVE for other in self.names)

    def encode_request(self, message: Message) -> Message:
        for technique in self.techniques:
            technique.encode_request(message)
        return message

    def decode_request(self, message: Message) -> Message:
        for technique in reversed(self.techniques):
            technique.decode_request(message)
        return message

    def encode_response(self, message: Message, step: Step) -> Message:
        for technique in self.techniques:
            technique.encode_response(message, step)
        return message

    def decode_response(self, message: Message) -> Message:
        for technique in reversed(self.techniques):
            technique.decode_response(message)
        return message


def ablation_chain(text: str, headline: TechniqueSet) -> tuple[Technique, ...]:
    """The techniques `--semgap-ablation` names, in its order: `all` is ABLATION_ORDER with the headline's settings."""
    if text.strip() == "all":
        return tuple(headline.get(name) or TECHNIQUES[name]() for name in ABLATION_ORDER)
    return tuple(make_technique(spec) for spec in text.split(",") if spec.strip())


def ablation_sets(headline: TechniqueSet, chain: tuple[Technique, ...]) -> list[TechniqueSet]:
    """The variants an ablation measures beside the headline: none, each technique alone, and each
    cumulative combination along `chain` (a technique that conflicts with the ones before it is left
    out of the cumulative sets); each set once, the headline never."""
    sets = [TechniqueSet(), *(TechniqueSet((technique,)) for technique in chain)]
    cumulative = TechniqueSet()
    for technique in chain:
        if not cumulative.conflicts_with(technique):
            cumulative = cumulative.with_technique(technique)
            sets.append(cumulative)
    return [variant for variant in dict.fromkeys(sets) if variant != headline] if chain else []


__all__ = ["ABLATION_ORDER", "ablation_chain", "ablation_sets", "EXCLUSIVE", "NONE", "TECHNIQUES", "Message", "Step", "Technique", "TechniqueSet", "make_technique", "token_of"]
