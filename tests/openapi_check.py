"""Test helper: check requests and responses of the HTTP API against its OpenAPI document.

Every status a test sees must be documented for its operation, with the documented content
type, a body valid against the documented schema (jsonschema, formats checked) and the
documented required headers.
"""

from __future__ import annotations

from typing import Any

import httpx
from jsonschema import Draft202012Validator

from gateway.openapi import document

DOC = document(max_batch=100)


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    # The refs point into #/components: give the schema the document's components as siblings.
    return Draft202012Validator({**schema, "components": DOC["components"]},
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def operation(path: str, method: str) -> dict[str, Any]:
    op: dict[str, Any] = DOC["paths"][path][method.lower()]
    return op


def check_request(path: str, method: str, body: object) -> None:
    """The body is one the document says the operation takes."""
    schema = operation(path, method)["requestBody"]["content"]["application/json"]["schema"]
    _validator(schema).validate(body)


def check_response(resp: httpx.Response, path: str) -> Any:
    """The response is documented for ``path`` (the template) and its method; its JSON."""
    op = operation(path, resp.request.method)
    documented = op["responses"].get(str(resp.status_code))
    assert documented is not None, f"undocumented status {resp.status_code}: {resp.text}"
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name in resp.headers, f"{resp.status_code} without the header {name}"
            _validator(header["schema"]).validate(resp.headers[name])
    content_type = resp.headers["content-type"].split(";")[0]
    assert content_type in documented["content"], f"undocumented content type {content_type}"
    body = resp.json()
    _validator(documented["content"][content_type]["schema"]).validate(body)
    return body


def check_webhook(name: str, headers: Any, body: object) -> None:
    """A webhook the gateway posted is one the document describes (headers and body)."""
    op = DOC["webhooks"][name]["post"]
    for param in op["parameters"]:
        assert param["name"].lower() in headers, f"webhook {name} without {param['name']}"
        _validator(param["schema"]).validate(headers[param["name"].lower()])
    _validator(op["requestBody"]["content"]["application/json"]["schema"]).validate(body)
