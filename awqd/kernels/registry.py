"""Every kernel candidate by name. Adding one takes its file in candidates/ plus its row in capability.py, which
names the class."""

from collections.abc import Collection

from awqd.errors import InvalidArgument
from awqd.kernels import plugins
from awqd.kernels.base import Candidate
from awqd.kernels.capability import CAPABILITY_TABLE, FAMILIES

CANDIDATES: dict[str, type[Candidate]] = {rule.name: rule.candidate for rule in CAPABILITY_TABLE}


def candidate_names() -> list[str]:
    """In capability-table order, which is preference order within a family; active plugins last."""
    return [rule.name for rule in CAPABILITY_TABLE] + [p.name for p in plugins.active() if p.cls is not None]


def build(name: str) -> Candidate:
    """A built-in candidate, or an active plugin's (awqd/kernels/plugins.py)."""
    return candidate_class(name)()


def candidate_class(name: str) -> type[Candidate]:
    cls = CANDIDATES.get(name) or plugins.candidate_class(name)
    if cls is None:
        raise InvalidArgument("kernel", f"unknown kernel candidate {name!r}; known: {', '.join(candidate_names())}")
    return cls


def tunes_launches(name: str) -> bool:
    """Whether the candidate tunes launch configurations at boot: its class has its own Candidate.tune (read from the
    class; nothing is built)."""
    return candidate_class(name).tune is not Candidate.tune


def is_candidate(name: str) -> bool:
    return name in CANDIDATES or plugins.candidate_class(name) is not None


def is_family(name: str) -> bool:
    return name in FAMILIES


def resolve_family(family: str, usable: Collection[str]) -> str | None:
    """The preferred candidate of `family` among the `usable` names, or None if the family has none usable."""
    if not is_family(family):
        raise InvalidArgument("kernel", f"unknown kernel family {family!r}; known: {', '.join(FAMILIES)}")
    members = [r.name for r in CAPABILITY_TABLE if r.family == family]
    members += [p.name for p in plugins.active() if p.cls is not None and p.cls.family == family]
    return next((name for name in members if name in usable), None)
