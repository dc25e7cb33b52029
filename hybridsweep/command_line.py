"""What a command line may say, checked before Hydra runs: a misspelt key or a group option that does not exist
ends with one line naming the nearest real one (Hydra's own errors are a page long, and it adds a misspelt `+key`
silently). Overrides are read with Hydra's own parser."""

import difflib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf

from hybridsweep.config import Config, group_schemas
from hybridsweep.errors import UserError

# Shorthands for the one setting of a node a user names most: `pick=knee` means `pick.rule=knee` (the node also
# holds pick.max_latency_ms, and OmegaConf cannot type "a string or a node").
SHORTHANDS = {"pick": "pick.rule"}


def expand_shorthands(args: Sequence[str]) -> list[str]:
    """The command line with each `pick=VALUE` written out as `pick.rule=VALUE` (sweeps too: pick=knee,fastest)."""
    expanded = []
    for arg in args:
        key, sep, value = arg.partition("=")
        expanded.append(f"{SHORTHANDS[key]}={value}" if sep and key in SHORTHANDS else arg)
    return expanded


def parse_overrides(args: Sequence[str]) -> list[Override]:
    """The overrides of a command line, parsed by Hydra's own grammar; flags (-m, --cfg job) and what does not
    parse are left to Hydra to handle or report."""
    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        if arg.startswith("-"):
            continue
        try:
            parsed += parser.parse_overrides([arg])
        except OverrideParseException:
            continue
    return parsed


def _options(override: Override) -> list[str]:
    """The options a `group=...` override names (`a,b` and `range(...)` sweeps name several; a glob only matches
    existing ones)."""
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        return []
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def check_group_choices(overrides: list[str], conf: Path) -> None:
    """Reject `group=option` overrides naming no file in conf/<group>/, in one line instead of Hydra's page."""
    for override in parse_overrides(overrides):
        group = override.key_or_group
        if override.is_delete() or "." in group or not (conf / group).is_dir():
            continue
        choices = sorted(p.stem for p in (conf / group).glob("*.yaml") if not p.stem.startswith("base_"))
        hint = ""
        if group.startswith("hydra/"):  # Hydra and its plugins provide options too (hydra/launcher=joblib)
            choices = sorted({*choices, *_plugin_choices(group)})
            hint = " (launcher plugins: pip install 'hybridsweep[launchers]')"
        for option in _options(override):
            if option and option not in choices:
                raise UserError(f"{group}={option} is unknown; choose one of: {', '.join(choices)}{hint}")


def _plugin_choices(group: str) -> list[str]:
    """Options of a `hydra/...` group registered in the ConfigStore by Hydra and its installed plugins."""
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports hydra_plugins.*, which register their configs (Hydra does the same at start-up)
    try:
        names = ConfigStore.instance().list(group)
    except OSError:  # no such group in the store
        return []
    return [name.removesuffix(".yaml") for name in names]


# Settings whose values are free-form mappings: any sub-key is theirs to define.
FREE_FORM = ("data.stats.", "experiment.grid.", "experiment.variants.", "hydra.")


def _flatten(value: Any, prefix: str = "") -> set[str]:
    keys = set()
    if isinstance(value, dict):
        for key, sub in value.items():
            if key == "defaults":
                continue
            keys.add(prefix + str(key))
            keys |= _flatten(sub, f"{prefix}{key}.")
    return keys


@functools.cache
def _schema_nodes() -> dict[str, bool]:
    """Every setting the structured schemas declare (root and every group's), mapped to whether it holds a list;
    walked once per process."""
    def walk(node: DictConfig, prefix: str) -> dict[str, bool]:
        found = {}
        for key in node:
            child = node._get_node(key)
            found[prefix + str(key)] = isinstance(child, ListConfig)
            if isinstance(child, DictConfig) and not child._is_none():
                found |= walk(child, f"{prefix}{key}.")
        return found

    nodes = walk(OmegaConf.structured(Config), "")
    for group, schemas in group_schemas().items():
        for schema in schemas.values():
            nodes |= walk(OmegaConf.structured(schema), f"{group}.")
    return nodes


def schema_keys() -> set[str]:
    """The settings the structured schemas declare: they always exist, so Hydra refuses `+key` for them."""
    return set(_schema_nodes())


def list_keys() -> set[str]:
    """The schema settings that hold a list (`search.criteria`, `search.budgets`, ...): a scalar there is a
    five-line Hydra error, so it is caught first."""
    return {key for key, is_list in _schema_nodes().items() if is_list}


def known_keys(conf: Path) -> set[str]:
    """Every setting a command line may name: the schema, every group's schemas, every config file's keys."""
    keys = schema_keys()
    for path in conf.rglob("*.yaml"):
        group = path.parent.relative_to(conf).as_posix()
        if group == "." or group.startswith("hydra"):
            continue
        text = path.read_text()
        node = OmegaConf.to_container(OmegaConf.create(text)) or {}
        keys |= _flatten(node, "" if "@package _global_" in text else group.replace("/", ".") + ".")
    return keys


def check_keys(overrides: list[str], conf: Path) -> None:
    """`key=value`, `+key=value` and `~key` must name a known setting: Hydra would refuse a misspelt plain key
    with a page of text (exit 1) and would add a misspelt `+key` silently, so a trial runs without it."""
    known: set[str] | None = None
    for override in parse_overrides(overrides):
        key = override.key_or_group
        if key == "hydra" or (conf / key).is_dir() or key.startswith(("hydra/", *FREE_FORM)):
            continue  # a config group (checked by check_group_choices) or a free-form setting
        known = known if known is not None else known_keys(conf)
        if key in known:
            if override.is_add() and key in schema_keys():
                raise UserError(f"{key} is always a setting, so it takes no '+': write {key}={override.value()}")
            if override.value_type == ValueType.ELEMENT and isinstance(override.value(), str | int | float) \
                    and key in list_keys():
                raise UserError(f"{key} is a list: write {key}=[{override.value()}]")
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see them all with: python -m hybridsweep --cfg job"
        raise UserError(f"{key} is not a setting; {hint}")
