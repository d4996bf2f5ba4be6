"""The OpenAPI document, rendered from the app's routes and the msgspec contracts."""

from __future__ import annotations

import json

from orchestrator_core.config import mock_config

__all__ = ["openapi_json"]


def openapi_json() -> str:
    """The served OpenAPI 3.1 document as stable, indented JSON (``contracts/openapi.json``)."""
    from orchestratord.app import create_app

    app = create_app(mock_config())
    schema = app.openapi_schema.to_schema()
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
