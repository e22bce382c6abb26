"""How the API reads a request's fields, and how it says what is wrong with them.

A form, a query string and a JSON object are read alike, into the pydantic model that also
describes them in the OpenAPI document (``api/schemas.py``): text is trimmed, an empty value
or null means the default (as an empty field of an HTML form does), a choice may be written
in any case, and true and false are the words of :func:`covidscan.contract.parse_flag`.
A value the model refuses is a 400 whose detail names the field, says what it must be and
what was sent (which is also a member of the problem, under the field's name).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Optional, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from api.problems import Problem
from covidscan.contract import parse_flag

M = TypeVar("M", bound=BaseModel)

NO_NUL = "^[^\\x00]*$"
# `name` or `name:version`, neither part empty nor padded with spaces (db/registry.parse_ref)
MODEL_REF = r"^[^:/\s\x00-\x1f\x7f-\x9f]+(:[^/\s\x00-\x1f\x7f-\x9f]+)?$"
RESERVED = ("type", "status", "title", "detail", "headers")  # a problem's own members
PATTERN_WORDS = {
    NO_NUL: "text without NUL characters",
    MODEL_REF: "NAME or NAME:VERSION of a registered model",
}


def _flag(value: Any) -> Any:
    return parse_flag(value) if isinstance(value, str) else value


Flag = Annotated[bool, BeforeValidator(_flag)]
"""A true/false field: a JSON boolean, or one of the contract's words for true and false."""


def choices(annotation: Any) -> list[str]:
    """The values a field's type allows (a Literal or an enum, optional or not); [] for any."""
    if get_origin(annotation) is Literal:
        return [str(value) for value in get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(member.value) for member in annotation]
    if get_origin(annotation) in (Union, Optional, Annotated):
        for arg in get_args(annotation):
            found = choices(arg)
            if found:
                return found
    return []


class Fields(BaseModel):
    """A request's fields, read as a browser sends a form (see the module's docstring)."""

    @model_validator(mode="before")
    @classmethod
    def _as_sent(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        read = {}
        for name, value in data.items():
            if value is None:
                continue  # null, like an empty value, means the default
            if isinstance(value, str):
                # Spaces, tabs and line ends only: str.strip() also takes the control
                # characters 0x1C–0x1F, which the published schema calls part of a value.
                value = value.strip(" \t\r\n\f\v")
                if not value:
                    continue  # the default
                field = cls.model_fields.get(name)
                if field is not None and choices(field.annotation):
                    value = value.lower()
            read[name] = value
        return read


def _alternatives(values: list[str]) -> str:
    if len(values) == 2:
        return f"{values[0]} or {values[1]}"
    return f"one of {', '.join(values)}"


def _bounds(field: Optional[FieldInfo]) -> tuple[Any, Any]:
    low = high = None
    for rule in field.metadata if field is not None else ():
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    return low, high


def _sentence(error: ErrorDetails, model: type[BaseModel]) -> str:
    loc = error["loc"]
    name = ".".join(str(part) for part in loc) or "the body"
    field = model.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    kind, ctx, raw = error["type"], error.get("ctx", {}), error.get("input")
    if kind in ("literal_error", "enum") and field is not None:
        return f"{name} must be {_alternatives(choices(field.annotation))}, got {raw!r}"
    if kind == "string_too_long":
        return f"{name} is longer than {ctx['max_length']} characters"
    if kind == "string_type":
        return f"{name} must be a string"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{name} must be a whole number, got {raw!r}"
    if kind in ("greater_than_equal", "less_than_equal") and None not in _bounds(field):
        low, high = _bounds(field)
        return f"{name} must be between {low} and {high}, got {raw}"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern", "")
        return f"{name} must be {PATTERN_WORDS.get(pattern, 'of the form ' + pattern)}, got {raw!r}"
    if kind == "value_error":
        return f"{name} {ctx.get('error')}"
    if kind == "missing":
        return f"{name} is required"
    return f"{name}: {error['msg']}"


def problem_text(error: ValidationError, model: type[BaseModel]) -> str:
    """What is wrong with the fields, one sentence per field, each naming it."""
    return "; ".join(_sentence(e, model) for e in error.errors(include_url=False))


def validated(model: type[M], fields: Mapping[str, Any]) -> M:
    """``fields`` (``request.args``, ``request.form`` or a JSON object) read as ``model``.

    Raises:
        Problem: 400 naming each field that is wrong.
    """
    to_dict = getattr(fields, "to_dict", None)  # a MultiDict: one value a name
    try:
        return model.model_validate(to_dict() if callable(to_dict) else dict(fields))
    except ValidationError as exc:
        raise Problem(400, problem_text(exc, model), **refused_values(exc)) from None


def refused_values(error: ValidationError) -> dict[str, Any]:
    """Each refused text field with the value sent (``{"model": "alpha:"}``): a client may
    read it beside the detail, as the problem's other members."""
    return {
        str(e["loc"][0]): e["input"]
        for e in error.errors(include_url=False)
        if len(e["loc"]) == 1 and isinstance(e["input"], str) and e["loc"][0] not in RESERVED
    }
