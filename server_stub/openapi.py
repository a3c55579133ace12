"""The serving API of notebook 05 as an OpenAPI 3.0 document.

The reference solution serves it at ``GET /openapi.json``; tools such as Swagger UI,
Postman and schemathesis read it. The grader's fuzzing (``autograder.checks.api.check_fuzz``)
generates requests from it, valid and invalid, and holds every server to one rule: no
request gets a 5xx, and every error is JSON.
"""
from __future__ import annotations

from server_stub.model import FEATURES, MODEL_NAME, MODEL_VERSION

ERROR = {
    "description": "the request was refused",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def spec(model_name: str = MODEL_NAME, version: str = MODEL_VERSION, max_batch: int = 64) -> dict:
    """The OpenAPI document for a server of ``model_name``."""
    number = {"type": "number"}
    instance = {
        "oneOf": [
            {"type": "array", "items": number, "minItems": len(FEATURES), "maxItems": len(FEATURES)},
            {
                "type": "object",
                "properties": {name: number for name in FEATURES},
                "required": list(FEATURES),
                "additionalProperties": False,
            },
        ]
    }
    predict = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
        },
        "responses": {
            "200": {
                "description": "one prediction per instance, in order",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}},
            },
            "400": ERROR, "404": ERROR, "413": ERROR, "415": ERROR,
        },
    }
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"servelab serving API ({model_name})",
            "version": version,
            "description": "Predictions from a scikit-learn model, in the TensorFlow Serving / KServe V1 style.",
        },
        "servers": [{"url": "/"}],
        "paths": {
            "/health": {
                "get": {
                    "summary": "liveness",
                    "responses": {"200": {
                        "description": "the server is up",
                        "content": {"application/json": {"schema": {
                            "type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}},
                            "required": ["status"],
                        }}},
                    }},
                }
            },
            "/v1/models/{name}": {
                "get": {
                    "summary": "describe a model",
                    "parameters": [name_param],
                    "responses": {
                        "200": {
                            "description": "the model's name, version and readiness",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Model"}}},
                        },
                        "404": ERROR,
                    },
                }
            },
            "/v1/models/{name}:predict": {"post": {"summary": "predict with a named model", "parameters": [name_param], **predict}},
            "/predict": {"post": {"summary": f"predict with {model_name}", **predict}},
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                "Model": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "ready": {"type": "boolean"}},
                    "required": ["name", "version", "ready"],
                },
                "PredictRequest": {
                    "type": "object",
                    "properties": {"instances": {"type": "array", "items": instance, "minItems": 1, "maxItems": max_batch}},
                    "required": ["instances"],
                },
                "PredictResponse": {
                    "type": "object",
                    "properties": {"predictions": {"type": "array", "items": {
                        "type": "object",
                        "properties": {"label": {"type": "string"}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
                        "required": ["label", "confidence"],
                    }}},
                    "required": ["predictions"],
                },
            }
        },
    }
