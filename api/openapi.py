"""The OpenAPI 3.1 document, built from the app's URL map and a declaration on each view.

A view declares what the URL map cannot tell with :func:`operation` (its summary, query,
form and responses, as pydantic models from ``api/schemas.py``); the method, the path
and its parameters come from the route, and who may call it (the security requirement,
401 and 403) from the view's :func:`api.auth.requires` or :func:`api.auth.public`.
The decorator only attaches the declaration: the view runs exactly as before.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

from api import schemas
from api.auth import ANY, PUBLIC
from api.limits import UNLIMITED_ENDPOINTS

F = TypeVar("F", bound=Callable[..., Any])
OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
PROBLEM_MEDIA = "application/problem+json"
DOCUMENTED_PREFIXES = ("/v1/", "/healthz", "/readyz", "/metrics")
NO_NUL = schemas.NO_NUL
PATH_PARAMETERS = {
    "job_id": "a job's id",
    "scan_id": "a scan's id (`scan_id` of a result)",
    "series_uid": "a DICOM SeriesInstanceUID of the job",
    "webhook_id": "a webhook endpoint's id",
    "retrieval_id": "a retrieval's id",
}
ERRORS = {
    400: "Bad request: the problem names the field, file or value",
    401: "No valid API key (unknown, revoked, expired or missing)",
    403: "The key lacks the scope, the browser request lacks its CSRF token, or AUTH=off "
    "and the client is not on the loopback",
    404: "Not found, or another owner's (the same answer)",
    413: "Over a limit: the request, a slice, the number of slices, the pixels or an "
    "archive's expansion",
    409: "Conflict with the current state (the problem says which)",
    410: "The stored bytes are gone",
    415: "A body or part of a type the route does not take (parts are checked by content)",
    422: "Well-formed, but what it refers to cannot be processed (the problem says why)",
    429: "A rate limit or quota is reached; Retry-After says when to try again",
    503: "Redis, which holds the quotas, is unreachable; nothing was stored",
}


@dataclass(frozen=True)
class Reply:
    """One documented response: a JSON model, other media, or no body at all."""

    description: str
    model: Optional[type[BaseModel]] = None
    media: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: Mapping[int, Reply | type[BaseModel]]
    query: Optional[type[BaseModel]] = None
    form: Optional[type[BaseModel]] = None
    form_encoding: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    path: Optional[type[BaseModel]] = None
    body: Optional[type[BaseModel]] = None
    body_media: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def operation(
    summary: str,
    *,
    responses: Mapping[int, Reply | type[BaseModel]],
    query: Optional[type[BaseModel]] = None,
    form: Optional[type[BaseModel]] = None,
    form_encoding: Optional[Mapping[str, str]] = None,
    errors: tuple[int, ...] = (),
    path: Optional[type[BaseModel]] = None,
    body: Optional[type[BaseModel]] = None,
    body_media: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Callable[[F], F]:
    """Describe a view in the OpenAPI document (see docs/develop/routes.md).

    Args:
        summary: one line; the view's docstring becomes the description.
        responses: status -> a pydantic model (JSON) or a :class:`Reply`.
        query: a model whose fields are the query parameters.
        form: a model whose fields are the ``multipart/form-data`` fields.
        form_encoding: form field -> the content types its parts may have.
        errors: the problem statuses this view answers besides those every route may
            (400, and 401, 403 and 429 where they apply).
        path: a model describing path parameters that are more than a string (those it
            leaves out are described by :data:`PATH_PARAMETERS`).
        body: a model of the ``application/json`` body (besides ``form``, if both are taken).
        body_media: other media types the body may have -> their OpenAPI media objects.
    """
    declared = Operation(
        summary,
        responses,
        query,
        form,
        dict(form_encoding or {}),
        errors,
        path,
        body,
        dict(body_media or {}),
    )

    def mark(view: F) -> F:
        view.openapi = declared  # type: ignore[attr-defined]
        return view

    return mark


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``Optional[X]`` as X: a form field or query parameter is absent, never null."""
    options = [s for s in schema.get("anyOf", []) if s != {"type": "null"}]
    if len(options) == 1:
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if rest.get("default", 0) is None:
            del rest["default"]
        return {**options[0], **rest}
    return schema


def _text(schema: dict[str, Any]) -> dict[str, Any]:
    """A free text field, as the API takes it: without NUL (api/security.py refuses it)."""
    if (
        schema.get("type") == "string"
        and "enum" not in schema
        and "pattern" not in schema
        and schema.get("format") != "binary"
    ):
        schema["pattern"] = NO_NUL
    return schema


def _fields(model: Optional[type[BaseModel]]) -> tuple[dict[str, Any], set[str]]:
    if model is None:
        return {}, set()
    schema = model.model_json_schema(ref_template=REF)
    properties = {name: _text(_without_null(prop)) for name, prop in schema["properties"].items()}
    for prop in properties.values():
        prop.pop("title", None)
    return properties, set(schema.get("required", ()))


def _parameters(rule: Any, declared: Operation) -> list[dict[str, Any]]:
    described, _required = _fields(declared.path)
    parameters = []
    for name in re.findall(r"<(?:[^:<>]+:)?([^<>]+)>", rule.rule):
        schema = described.get(name) or {"type": "string", "pattern": NO_NUL}
        description = schema.pop("description", PATH_PARAMETERS.get(name, name))
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": description,
                "schema": schema,
            }
        )
    if declared.query is not None:
        properties, required = _fields(declared.query)
        for name, schema in properties.items():
            description = schema.pop("description", "")
            parameter = {
                "name": name,
                "in": "query",
                "required": name in required,
                "description": description,
                "schema": schema,
            }
            if name not in required:  # an empty value means the default, as in an HTML form
                parameter["allowEmptyValue"] = True
            parameters.append(parameter)
    return parameters


def _or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional form field may also be sent empty, which means the default. (Written
    into the enum or the pattern rather than as an ``anyOf``, whose one branch a client or
    a test generator may take for the whole.)"""
    if "enum" in schema and "" not in schema["enum"]:
        schema["enum"] = [*schema["enum"], ""]
    elif schema.get("pattern", NO_NUL) != NO_NUL:
        schema["pattern"] = f"^$|{schema['pattern']}"
    return schema


def _request_body(declared: Operation, refs: Mapping[type[BaseModel], Any]) -> dict[str, Any]:
    """The form, the JSON body and any other media, whichever the view takes."""
    content: dict[str, Any] = {}
    if declared.form is not None:
        content.update(_form_body(declared)["content"])
    if declared.body is not None:
        content["application/json"] = {"schema": refs[declared.body]}
    content.update({media: dict(spec) for media, spec in declared.body_media.items()})
    return {"required": True, "content": content}


def _form_body(declared: Operation) -> dict[str, Any]:
    properties, required = _fields(declared.form)
    properties = {
        name: prop if name in required else _or_empty(prop) for name, prop in properties.items()
    }
    media: dict[str, Any] = {
        "schema": {"type": "object", "properties": properties, "required": sorted(required)}
    }
    if declared.form_encoding:
        media["encoding"] = {
            name: {"contentType": types} for name, types in declared.form_encoding.items()
        }
    return {"required": True, "content": {"multipart/form-data": media}}


def _reply(reply: Reply | type[BaseModel], refs: Mapping[type[BaseModel], Any]) -> dict:
    if not isinstance(reply, Reply):
        reply = Reply(inspect.cleandoc(vars(reply).get("__doc__") or "OK"), reply)
    body: dict[str, Any] = {"description": reply.description}
    content = {media: dict(spec) for media, spec in reply.media.items()}
    if reply.model is not None:
        content = {"application/json": {"schema": refs[reply.model]}, **content}
    if content:
        body["content"] = content
    if reply.headers:
        body["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in reply.headers.items()
        }
    return body


def _errors(endpoint: str, scope: str, declared: Operation) -> dict[str, Any]:
    statuses = {400, *declared.errors}
    if scope != PUBLIC:
        statuses |= {401, 403}
    if endpoint not in UNLIMITED_ENDPOINTS:  # the rate limiter counts every other route
        statuses.add(429)
    return {
        str(status): {"$ref": f"#/components/responses/Problem{status}"}
        for status in sorted(statuses)
    }


def _security(scope: str) -> list[dict[str, list[str]]]:
    if scope == PUBLIC:
        return []
    roles = [] if scope == ANY else [scope]
    return [{"apiKey": roles}, {"browserSession": roles}]


def _components(refs_of: dict, schema_defs: dict) -> dict[str, Any]:
    responses = {}
    for status, description in ERRORS.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM_MEDIA: {"schema": refs_of[schemas.Problem]}},
        }
        if status in (401, 429):
            name = "WWW-Authenticate" if status == 401 else "Retry-After"
            response["headers"] = {name: {"schema": {"type": "string"}}}
        responses[f"Problem{status}"] = response
    return {
        "schemas": schema_defs,
        "responses": responses,
        "securitySchemes": {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "csk_…",
                "description": "An API key (`covidscan keys create`); scopes "
                "`submit`, `read`, `metrics`, `admin` (admin may do "
                "everything).",
            },
            "browserSession": {
                "type": "apiKey",
                "in": "cookie",
                "name": "covidscan_session",
                "description": "The web page's session after /login; a "
                "state-changing request also sends the page's "
                "CSRF token in X-CSRF-Token.",
            },
        },
    }


def _methods(rule: Rule) -> list[str]:
    """The methods a route documents. Flask gives every rule its methods; ``None`` (any
    method) comes only from a bare Werkzeug rule, which declares nothing to document."""
    return sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of every declared route of ``app``; the same app, the same bytes."""
    described = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        view = app.view_functions[rule.endpoint]
        declared = getattr(view, "openapi", None)
        if declared is not None:
            for method in _methods(rule):
                described.append((rule, method, view, declared))
    models: set[type[BaseModel]] = {schemas.Problem}
    for *_ignored, declared in described:
        for reply in declared.responses.values():
            model = reply.model if isinstance(reply, Reply) else reply
            if model is not None:
                models.add(model)
        if declared.body is not None:
            models.add(declared.body)
    ordered = sorted(models, key=lambda m: m.__name__)
    keys, defs = models_json_schema([(m, "serialization") for m in ordered], ref_template=REF)
    refs_of = {model: keys[(model, "serialization")] for model in ordered}
    paths: dict[str, dict[str, Any]] = {}
    for rule, method, view, declared in described:
        scope = getattr(view, "required_scope", "admin")
        item: dict[str, Any] = {
            "operationId": rule.endpoint.replace(".", "_"),
            "tags": [rule.endpoint.split(".")[0]],
            "summary": declared.summary,
            "description": inspect.getdoc(view) or "",
            "security": _security(scope),
            "parameters": _parameters(rule, declared),
        }
        if declared.form is not None or declared.body is not None or declared.body_media:
            item["requestBody"] = _request_body(declared, refs_of)
        item["responses"] = {
            str(status): _reply(reply, refs_of)
            for status, reply in sorted(declared.responses.items())
        }
        for status, error in _errors(rule.endpoint, scope, declared).items():
            if status in item["responses"]:  # an answer of its own, or else a problem
                item["responses"][status].setdefault("content", {})[PROBLEM_MEDIA] = {
                    "schema": refs_of[schemas.Problem]
                }
            else:
                item["responses"][status] = error
        if scope not in (PUBLIC, ANY):
            item["x-required-scope"] = scope
        paths.setdefault(_openapi_path(rule.rule), {})[method.lower()] = item
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "covidscan",
            "version": "1",
            "description": "Bulk COVID-19 classification of chest CT slices with a "
            "ResNet50, as a batch service. Research use only, not for "
            "clinical diagnosis. Errors are RFC 9457 problem+json.",
        },
        "paths": paths,
        "components": _components(refs_of, defs.get("$defs", {})),
    }


def spec_text(app: Optional[Flask] = None) -> str:
    """The document as ``docs/openapi.json`` holds it (``covidscan openapi`` prints it)."""
    if app is None:
        from api import create_app  # settings that connect nowhere: only the routes matter

        app = create_app({"DATABASE_URL": "sqlite://", "REDIS_URL": "redis://127.0.0.1:1/0"})
    return json.dumps(build_spec(app), indent=2, ensure_ascii=False) + "\n"


def undocumented_rules(app: Flask) -> list[str]:
    """``METHOD /path`` of every API route that has no :func:`operation` declaration."""
    return [
        f"{method} {rule.rule}"
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(DOCUMENTED_PREFIXES)
        and getattr(app.view_functions[rule.endpoint], "openapi", None) is None
        for method in _methods(rule)
    ]
