"""Config overrides that refuse keys the config does not have, so that a mistyped key
(``train.max_iters=5``, ``MODEL.WIEGHTS x``) is an error naming the closest existing
one instead of a new key nobody reads: ``key=value`` for a LazyConfig, ``KEY VALUE``
pairs or ``KEY=VALUE`` for a yacs config."""

import difflib
import inspect
from typing import Any, Iterable, Iterator, List, Sequence, Tuple

from detectron2.config import CfgNode, LazyConfig
from detectron2.utils.registry import locate
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["ConfigOverrideError", "apply_overrides", "apply_yacs_overrides"]

_ABSENT = object()


class ConfigOverrideError(ValueError):
    """An override names a key the config does not have, or adds one it has."""


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """detectron2's LazyConfig.apply_overrides with its keys checked first.

    ``key=value`` sets a key the config has (or an argument that the callable of
    a LazyCall node takes); ``+key=value`` adds a key the config does not have;
    ``++key=value`` sets or adds.

    Raises:
        ConfigOverrideError: one line naming the key and the closest existing key.
    """
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key, exists = override.key_or_group, _exists(cfg, override.key_or_group)
        if override.type == OverrideType.CHANGE and not exists:
            raise ConfigOverrideError(
                f"{override.input_line}: the config has no key {key}{_closest(_keys(cfg), key)}; "
                f"write +{override.input_line} to add it"
            )
        if override.type == OverrideType.ADD and exists:
            raise ConfigOverrideError(
                f"{override.input_line}: the config already has {key}; "
                f"write {override.input_line[1:]} to change it"
            )
    return LazyConfig.apply_overrides(cfg, [o.lstrip("+") for o in overrides])


def _exists(cfg: DictConfig, key: str) -> bool:
    value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)
    if value is not _ABSENT:
        return True
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        return False
    arguments = _call_arguments(parent)
    return name in arguments or _ANY_ARGUMENT in arguments


_ANY_ARGUMENT = "**"


def _call_arguments(node: DictConfig) -> List[str]:
    """The argument names the callable of a LazyCall node takes ("**" for **kwargs)."""
    target = node.get("_target_") if "_target_" in node else None
    if target is None:
        return []
    try:
        target = locate(target) if isinstance(target, str) else target
        parameters = inspect.signature(target).parameters.values()
    except (ImportError, TypeError, ValueError):
        return []
    return [_ANY_ARGUMENT if p.kind == p.VAR_KEYWORD else p.name for p in parameters]


def _keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Every key of the config, dotted, with the arguments its LazyCall nodes take."""
    if isinstance(node, DictConfig):
        names = [*node.keys(), *_call_arguments(node)]
        for name in dict.fromkeys(str(n) for n in names):
            if name in ("_target_", _ANY_ARGUMENT):
                continue
            yield prefix + name
            if name in node:
                yield from _keys(node._get_node(name), f"{prefix}{name}.")
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            yield from _keys(node._get_node(index), f"{prefix}{index}.")


def _closest(keys: Iterable[str], key: str) -> str:
    matches = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]}?)" if matches else ""


def apply_yacs_overrides(cfg: CfgNode, overrides: Sequence[Any]) -> CfgNode:
    """yacs's merge_from_list with its keys checked first; `overrides` are KEY VALUE
    pairs (``MODEL.WEIGHTS model.pth``) or KEY=VALUE items, mixed as one likes.

    Raises:
        ConfigOverrideError: one line naming the key and the closest existing key, or
            the key that has no value.
    """
    pairs = yacs_override_pairs(overrides)
    for key, _ in pairs:
        if not _yacs_has_key(cfg, key):
            closest = _closest(_yacs_keys(cfg), key)
            raise ConfigOverrideError(f"{key}: the config has no key {key}{closest}")
    cfg.merge_from_list([item for pair in pairs for item in pair])
    return cfg


def yacs_override_pairs(overrides: Sequence[Any]) -> List[Tuple[str, Any]]:
    """(KEY, VALUE) of KEY VALUE pairs and KEY=VALUE items: an item is KEY=VALUE when it
    stands where a key is expected and holds "=", so a value may hold "=" too."""
    pairs, items = [], iter(overrides)
    for item in items:
        if isinstance(item, str) and "=" in item:
            key, value = item.split("=", 1)
        else:
            key, value = item, next(items, _ABSENT)
            if value is _ABSENT:
                raise ConfigOverrideError(
                    f"{key}: no value; write KEY VALUE pairs (MODEL.WEIGHTS model.pth) or KEY=VALUE"
                )
        pairs.append((key, value))
    return pairs


def _yacs_has_key(cfg: CfgNode, key: str) -> bool:
    node = cfg
    for name in key.split("."):
        if not isinstance(node, CfgNode) or name not in node:
            return False
        node = node[name]
    return True


def _yacs_keys(node: CfgNode, prefix: str = "") -> Iterator[str]:
    for name, value in node.items():
        yield prefix + name
        if isinstance(value, CfgNode):
            yield from _yacs_keys(value, f"{prefix}{name}.")
