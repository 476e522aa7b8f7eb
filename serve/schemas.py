"""Pydantic models that document the V2 routes in the OpenAPI schema (/docs). The routes themselves
parse and encode with protocol.py (orjson, binary tensors), so these models never run on requests."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

DATATYPES = "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64"


class Error(BaseModel):
    error: str = Field(description="What was wrong: the input, the expected and the received shape/dtype/name")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description=DATATYPES)
    shape: list[int] = Field(description="-1 marks a dimension of any size (e.g. the batch)")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str = Field(description="ember_program (ember's runtime) or onnxruntime_onnx (ONNX Runtime)")
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description=DATATYPES)
    parameters: Optional[dict[str, Any]] = Field(
        None, description='{"binary_data_size": n}: the tensor is in the binary part of the body')
    data: Optional[list[Any]] = Field(None, description="row-major values, flat or nested")


class RequestOutput(BaseModel):
    name: str
    parameters: Optional[dict[str, Any]] = Field(None, description='{"binary_data": true}: return it as binary')


class InferRequest(BaseModel):
    id: Optional[str] = Field(None, description="echoed in the response")
    parameters: Optional[dict[str, Any]] = Field(
        None, description='"binary_data_output": true for binary outputs; "timeout": microseconds')
    inputs: list[RequestInput]
    outputs: Optional[list[RequestOutput]] = Field(None, description="outputs to return (default: all)")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Optional[dict[str, Any]] = None
    data: Optional[list[Union[float, int, bool]]] = None


class InferResponse(BaseModel):
    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    outputs: list[ResponseOutput]


class IndexEntry(BaseModel):
    name: str
    version: Optional[str] = None
    state: str = Field(description="READY, LOADING, UNLOADING or UNAVAILABLE")
    reason: Optional[str] = None


INFER_REQUEST_DOC = {
    "requestBody": {
        "required": True,
        "description": "A V2 inference request as JSON, or with the binary tensor extension: a JSON header of "
                       "Inference-Header-Content-Length bytes followed by raw tensor bytes. gzip/deflate bodies "
                       "(Content-Encoding) are accepted.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def add_request_schemas(openapi: dict) -> dict:
    """Put InferRequest and the models it uses into the OpenAPI components the infer routes refer to."""
    _, defs = models_json_schema([(InferRequest, "validation")], ref_template="#/components/schemas/{model}")
    openapi.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
    return openapi
