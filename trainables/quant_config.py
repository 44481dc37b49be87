"""The ``quant`` section of the run config: the chosen scheme's own options, from the registry.

Every registered scheme (``trainables.quant.registry``) gets one pydantic section type whose
fields are ``scheme``, ``keep_head`` and the fields of the scheme's options dataclass, with the
dataclass's defaults. :class:`QuantConfig` validates a mapping with the type its ``scheme`` names
(a union discriminated by ``scheme``, resolved when validating, so a scheme registered later is
accepted too and a new scheme needs no edit here). Bounds and cross-field rules live once, in the
options dataclass (its ``__post_init__``), and are checked when the section is built; a key the
scheme does not take is an error that names the scheme and the keys it takes.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, ValidationError, create_model, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from trainables.quant.registry import (
    Scheme,
    all_option_names,
    available_schemes,
    get_scheme,
    schemes_taking,
)

DEFAULT_SCHEME = "ternary"
COMMON_KEYS = ("scheme", "keep_head")
_LEADING_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)")


class QuantConfig(BaseModel):
    """The quantization scheme and its options; validating it yields the scheme's own section.

    ``QuantConfig.model_validate({"scheme": "lsq", "weight_bits": 4})`` returns an instance of
    the ``lsq`` section type (a subclass of this one). ``keep_head`` (leave the model's head in
    full precision) applies to every scheme; the other fields are the scheme's options.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    scheme: str = DEFAULT_SCHEME
    keep_head: bool = True

    def __init__(self, **data: Any) -> None:
        if type(self) is QuantConfig:  # pydantic's __init__ cannot return the scheme's type
            raise TypeError(
                "build a quant section with QuantConfig.model_validate({'scheme': ..., ...}) "
                "or section_type(scheme)(...)"
            )
        super().__init__(**data)

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch(cls, data: Any, handler: Any) -> Any:
        # the base type dispatches on `scheme`; a scheme's own type validates as a plain model
        if cls is not QuantConfig or isinstance(data, QuantConfig) or not isinstance(data, Mapping):
            return handler(data)
        name = data.get("scheme", DEFAULT_SCHEME)
        if not isinstance(name, str) or name not in available_schemes():
            raise _errors(
                [("scheme", f"must be one of {', '.join(available_schemes())}, got {name!r}")],
                data,
            )
        return section_type(name).model_validate(dict(data))

    @classmethod
    def entry(cls) -> Scheme:
        """The registry entry of this section's scheme."""
        return get_scheme(cls.model_fields["scheme"].default)

    def has(self, capability: str) -> bool:
        """Whether the configured scheme declares ``capability`` (see the registry)."""
        return get_scheme(self.scheme).has(capability)

    def option_values(self) -> dict[str, Any]:
        """``{option: value}``: every option of the configured scheme (what ``prepare`` takes)."""
        return {name: getattr(self, name) for name in get_scheme(self.scheme).option_names()}

    def options(self) -> Any:
        """The scheme's validated options dataclass."""
        return get_scheme(self.scheme).make_options(self.option_values())


def _config_type(hint: Any) -> Any:
    """The config-side type of an options field: a mapping becomes ``((key, value), ...)`` pairs,
    so the flat run config stays flat (one dotted key, like ``quant.layer_bits``)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        members = tuple(_config_type(arg) for arg in typing.get_args(hint))
        return functools.reduce(lambda a, b: a | b, members)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        key, value = typing.get_args(hint) or (str, Any)
        return tuple[tuple[key, value], ...]  # type: ignore[valid-type]
    return hint


def _is_string_tuple(hint: Any) -> bool:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return any(_is_string_tuple(arg) for arg in typing.get_args(hint))
    return typing.get_origin(hint) is tuple and typing.get_args(hint)[:1] == (str,)


def _is_pairs(hint: Any) -> bool:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return any(_is_pairs(arg) for arg in typing.get_args(hint))
    return typing.get_origin(hint) is tuple and typing.get_origin(typing.get_args(hint)[0]) is tuple


def _errors(problems: list[tuple[str, str]], data: Any) -> ValidationError:
    """A ValidationError with one ``value_error`` per ``(field, message)`` (empty field: the
    section), which the run config's error report shows as ``quant.<field>: <message>``."""
    details: list[InitErrorDetails] = []
    for field, message in problems:
        value = data.get(field) if isinstance(data, Mapping) and field else data
        details.append(
            {
                "type": PydanticCustomError("value_error", "{message}", {"message": message}),
                "loc": (field,) if field else (),
                "input": value,
            }
        )
    return ValidationError.from_exception_data("QuantConfig", details)


def _unknown_key_message(key: str, scheme: Scheme) -> str:
    takes = (*COMMON_KEYS, *scheme.option_names())
    message = f"not an option of quant.scheme {scheme.name!r}"
    others = schemes_taking(key)
    if others:
        message += f" ({key} is an option of {', '.join(map(repr, others))})"
    else:  # a misspelling: the closest key of any scheme
        close = difflib.get_close_matches(key, quant_keys(), n=1, cutoff=0.6)
        if close:
            owners = "" if close[0] in takes else f" (of {', '.join(schemes_taking(close[0]))})"
            message += f"; did you mean 'quant.{close[0]}'{owners}?"
    return message + f"; {scheme.name!r} takes: {', '.join(takes)}"


@functools.cache
def _section_type(scheme: Scheme) -> type[QuantConfig]:
    hints = typing.get_type_hints(scheme.options_type)
    fields: dict[str, Any] = {"scheme": (Literal[scheme.name], scheme.name)}
    string_tuples: set[str] = set()
    pairs: set[str] = set()
    for spec in dataclasses.fields(scheme.options_type):
        if spec.name in COMMON_KEYS:
            raise TypeError(f"scheme {scheme.name!r}: option {spec.name!r} is a common quant key")
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            raise TypeError(f"scheme {scheme.name!r}: option {spec.name!r} needs a default")
        hint = _config_type(hints[spec.name])
        fields[spec.name] = (hint, default)
        if _is_string_tuple(hint):
            string_tuples.add(spec.name)
        if _is_pairs(hint):
            pairs.add(spec.name)

    def _normalize(cls: type, data: Any) -> Any:
        # the forms a sweep writes: "a,b" for a tuple of names (one category Optuna can search),
        # a mapping for pairs
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for name in string_tuples & set(data):
            if isinstance(data[name], str):
                data[name] = tuple(p.strip() for p in data[name].split(",") if p.strip())
        for name in pairs & set(data):
            if isinstance(data[name], Mapping):
                data[name] = tuple((str(k), v) for k, v in data[name].items())
        return data

    def _check_options(self: QuantConfig) -> QuantConfig:
        try:
            scheme.make_options(self.option_values())
        except (TypeError, ValueError) as err:
            message = str(err)
            match = _LEADING_NAME.match(message)
            field = match.group(1) if match and match.group(1) in scheme.option_names() else ""
            raise _errors([(field, message)], self.option_values()) from None
        return self

    def _refuse_unknown(cls: type, data: Any, handler: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = [k for k in data if k not in (*COMMON_KEYS, *scheme.option_names())]
            if unknown:
                problems = [(str(k), _unknown_key_message(str(k), scheme)) for k in unknown]
                raise _errors(problems, data)
        return handler(data)

    validators = {
        "_normalize": model_validator(mode="before")(classmethod(_normalize)),
        "_refuse_unknown": model_validator(mode="wrap")(classmethod(_refuse_unknown)),
        "_check_options": model_validator(mode="after")(_check_options),
    }
    return create_model(  # type: ignore[call-overload,no-any-return]
        _type_name(scheme.name),
        __base__=QuantConfig,
        __module__=__name__,
        __doc__=f"The ``quant`` section of scheme {scheme.name!r}: {scheme.description}.",
        __validators__=validators,
        **fields,
    )


def _type_name(scheme: str) -> str:
    return "".join(part.capitalize() for part in scheme.split("_")) + "QuantConfig"


def __getattr__(name: str) -> type[QuantConfig]:
    # a section type by its class name, so that pickle finds it (e.g. a RunConfig sent to Ray)
    for scheme in available_schemes():
        if _type_name(scheme) == name:
            return section_type(scheme)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def section_type(name: str) -> type[QuantConfig]:
    """The config section type of the registered scheme ``name``."""
    return _section_type(get_scheme(name))


def quant_keys() -> tuple[str, ...]:
    """Every key a ``quant`` section can have under some registered scheme."""
    return (*COMMON_KEYS, *all_option_names())


def retarget(values: Mapping[str, Any], scheme: str) -> dict[str, Any]:
    """``values`` (a quant section's keys) without the options ``scheme`` does not take: what a
    section of another scheme keeps when a search or scenario switches it to ``scheme``."""
    takes = {*COMMON_KEYS, *get_scheme(scheme).option_names()}
    return {key: value for key, value in values.items() if key in takes}


def retarget_document(
    original: Mapping[str, Any], document: dict[str, Any], overrides: Mapping[str, Any]
) -> None:
    """``document`` (``original`` with ``overrides`` applied) when an override switches
    ``quant.scheme``: drop (in place) the options written for the old scheme that the new one
    does not take. Keys in ``overrides`` stay, so that the validation names any the new scheme
    does not take; without a switch nothing is dropped."""
    quant, before = document.get("quant"), original.get("quant")
    old = before.get("scheme", DEFAULT_SCHEME) if isinstance(before, Mapping) else DEFAULT_SCHEME
    scheme = overrides.get("quant.scheme")
    if not isinstance(quant, dict) or scheme == old or scheme not in available_schemes():
        return  # no switch, or the validation names the unknown scheme
    given = {key.removeprefix("quant.") for key in overrides if key.startswith("quant.")}
    kept = retarget(quant, scheme)
    document["quant"] = {key: value for key, value in quant.items() if key in kept or key in given}
