"""One config mechanism: YAML files validated against typed dataclass schemas.

A schema is a (possibly nested) dataclass whose fields carry type hints and
defaults. ``load_config(Schema, "world/demo", overrides=["world.noise_rate=0.3"])``

* reads the YAML file (a path, or the name of a built-in config under
  ``configs/``) with ``yaml.safe_load``;
* applies ``--set a.b=c`` overrides, each value parsed as YAML and then
  converted to the field's declared type;
* rejects unknown keys (naming the closest valid one), wrong types and missing
  required values with a :class:`~datascale.errors.ConfigError` that names the
  dotted key;
* finally calls the schema's ``validate()`` method (if any) for constraints
  across fields or ranges (a noise rate above 1, zero classes).

Supported field types: bool, int, float, str, ``Literal[...]``, ``Optional[X]``
(``X | None``), ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, nested
dataclasses and ``typing.Any``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from datascale.errors import ConfigError

T = TypeVar("T")

_MISSING = dataclasses.MISSING


# --------------------------------------------------------------------------- paths


def builtin_config_dir() -> Path:
    """The folder holding the configs shipped with datascale (``configs/``).

    In a source checkout that is ``configs/`` beside the packages; after a
    plain ``pip install .`` it is the installed package ``datascale.configs``.
    """
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if (checkout / "README.md").is_file() and (checkout / "world").is_dir():
        return checkout
    return Path(str(importlib.resources.files("datascale.configs")))


def resolve_config_path(source: str | Path) -> Path:
    """Find a config file: an existing path, or a built-in name like ``world/demo``.

    Raises ConfigError listing the built-in configs of that kind when nothing matches.
    """
    path = Path(source)
    if path.is_file():
        return path
    root = builtin_config_dir()
    for candidate in (root / path, root / f"{path}.yaml", root / f"{path}.yml"):
        if candidate.is_file():
            return candidate
    kind = path.parent if str(path.parent) not in ("", ".") else Path(".")
    known = sorted(
        str(p.relative_to(root).with_suffix("")) for p in (root / kind).glob("*.yaml")
    ) if (root / kind).is_dir() else []
    hint = f"; built-in configs: {', '.join(known)}" if known else ""
    raise ConfigError(f"config file not found: {source}{hint}")


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping safely; an empty file is an empty mapping."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def run_record_config(data: dict) -> dict:
    """The config of a run folder's ``config.yaml`` lineage record (``stage``,
    ``datascale_version``, ``config``, ``inputs``), so that ``--config RUN/config.yaml``
    reruns a run's exact settings; any other mapping is returned as it is."""
    if {"stage", "datascale_version", "config"} <= set(data) and isinstance(data["config"], dict):
        return dict(data["config"])
    return data


# --------------------------------------------------------------------------- loading


def load_config(
    schema: type[T],
    source: str | Path | dict | None = None,
    overrides: Iterable[str] = (),
) -> T:
    """Build a validated ``schema`` instance from a YAML file (or dict) plus overrides.

    ``source`` may be a path, a built-in config name (``"world/demo"``), an
    already-parsed mapping, or None for the schema's defaults.
    """
    if source is None:
        data: dict = {}
    elif isinstance(source, dict):
        data = dict(source)
    else:
        data = run_record_config(read_yaml(resolve_config_path(source)))
    for override in overrides:
        apply_override(schema, data, override)
    return from_dict(schema, data)


def apply_override(schema: type, data: dict, override: str) -> None:
    """Apply one ``a.b.c=value`` override to the raw mapping ``data`` in place.

    The key path is checked against ``schema`` so that a typo is reported
    (with the closest valid key) even where the YAML file did not mention it.
    """
    if "=" not in override:
        raise ConfigError(f"--set expects KEY=VALUE, got {override!r}")
    dotted, raw = override.split("=", 1)
    dotted = dotted.strip()
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set: malformed key {dotted!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node_type: Any = schema
    node = data
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        node_type = _unwrap_optional(node_type)
        if dataclasses.is_dataclass(node_type):
            hints = _field_types(node_type)
            if part not in hints:
                raise _unknown_key_error(part, prefix, hints)
            field_type = hints[part]
        elif _origin(node_type) is dict:
            field_type = typing.get_args(node_type)[1] if typing.get_args(node_type) else Any
        else:
            raise ConfigError(f"--set {dotted}: '{prefix}' is a value, not a section")
        if depth == len(parts) - 1:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
            node_type = field_type


def from_dict(schema: type[T], data: Any, prefix: str = "") -> T:
    """Convert a raw mapping into ``schema``, checking keys and types recursively."""
    if not isinstance(data, dict):
        where = f"'{prefix}'" if prefix else "the config"
        raise ConfigError(f"{where} must be a mapping, got {_describe(data)}")
    hints = _field_types(schema)
    for key in data:
        if key not in hints:
            raise _unknown_key_error(str(key), prefix, hints)
    kwargs = {}
    for field in dataclasses.fields(schema):
        if not field.init:
            continue
        dotted = f"{prefix}.{field.name}" if prefix else field.name
        if field.name in data:
            kwargs[field.name] = _convert(hints[field.name], data[field.name], dotted)
        elif field.default is _MISSING and field.default_factory is _MISSING:
            raise ConfigError(f"missing required config key '{dotted}'")
    try:
        instance = schema(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or schema.__name__}: {exc}") from None
    # Nested dataclasses validate themselves through __post_init__ or validate().
    validate = getattr(instance, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as exc:
            if prefix and not str(exc).startswith(prefix):
                raise ConfigError(f"{prefix}.{exc}") from None
            raise
    return instance


def to_dict(config: Any) -> Any:
    """A plain, YAML-safe structure (dicts, lists, scalars) for a config instance."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, Path):
        return str(config)
    return config


def dump_yaml(data: Any) -> str:
    """Serialise a config (instance or plain data) as block-style YAML, keys in schema order."""
    return yaml.safe_dump(to_dict(data), sort_keys=False, default_flow_style=False)


def config_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key a schema accepts (for help texts and error messages)."""
    keys = []
    for name, tp in _field_types(schema).items():
        dotted = f"{prefix}.{name}" if prefix else name
        inner = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner):
            keys.extend(config_keys(inner, dotted))
        else:
            keys.append(dotted)
    return keys


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested mappings to dotted keys (lists are leaves;
    an empty mapping adds no key)."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_defaults(schema: type, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf key of ``schema`` that has a default, with that default as plain data.

    Nested sections are walked by type, so a key of a section that defaults to None still has
    its own default. The lineage check uses it to accept a run written before a key existed
    (``datascale.lineage.same_lineage``)."""
    out: dict[str, Any] = {}
    types_of = _field_types(schema)
    for field in dataclasses.fields(schema):
        if not field.init:
            continue
        dotted = f"{prefix}.{field.name}" if prefix else field.name
        inner = _unwrap_optional(types_of[field.name])
        if dataclasses.is_dataclass(inner):
            out.update(config_defaults(inner, dotted))
            made = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(made):  # a factory may set other values than the section's own
                out.update(flatten(to_dict(made), dotted))
        elif field.default is not dataclasses.MISSING:
            out[dotted] = to_dict(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            out[dotted] = to_dict(field.default_factory())
    return out


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError naming ``key`` unless ``condition`` holds (for ``validate()``)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


# --------------------------------------------------------------------------- types


def _field_types(schema: type) -> dict[str, Any]:
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass schema")
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema) if f.init}


def _origin(tp: Any) -> Any:
    return typing.get_origin(tp)


def _is_union(tp: Any) -> bool:
    return _origin(tp) in (typing.Union, types.UnionType)


def _unwrap_optional(tp: Any) -> Any:
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text.strip())
    except yaml.YAMLError:
        return text.strip()


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any value"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _unknown_key_error(key: str, prefix: str, hints: dict[str, Any]) -> ConfigError:
    dotted = f"{prefix}.{key}" if prefix else key
    valid = sorted(hints)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    where = f" in '{prefix}'" if prefix else ""
    return ConfigError(
        f"unknown config key '{dotted}'{hint}; valid keys{where}: {', '.join(valid)}"
    )


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {_describe(value)}")


def _convert(tp: Any, value: Any, key: str) -> Any:  # noqa: C901 - one branch per type
    if tp is Any:
        return value
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise _type_error(key, tp, value)
    origin = _origin(tp)
    if origin is typing.Literal:
        options = typing.get_args(tp)
        if value not in options:
            close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"config key '{key}' must be one of {', '.join(map(str, options))}; "
                f"got {value!r}{hint}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if isinstance(value, str):  # "--set sizes=10,30,100": a comma-separated list
            value = [_parse_scalar(v) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, tp, value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}' expects {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, tp, value)
        args = typing.get_args(tp)
        item = args[1] if args else Any
        return {str(k): _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _type_error(key, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e9" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _type_error(key, tp, value)
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _type_error(key, tp, value)
    raise TypeError(f"config key '{key}': unsupported field type {tp!r} in schema")
