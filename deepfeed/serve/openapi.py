"""OpenAPI response models and the offline Swagger UI of the inference server.

The response models allow extra fields so that a field added to a handler's answer is
served (and can be documented here later) rather than silently dropped.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

DOCS_ASSETS = "/docs-assets"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class GenerateResponse(_Open):
    request_id: str = Field(description="Id of this request in the inference log; quote it when giving feedback.")
    answer: str = Field(description="The generated answer (greedy decoding).")
    arm: str = Field(description="'champion', or 'challenger' while an A/B test runs.")
    model_version: str = Field(description="Registered MLflow model version that answered.")
    confidence: float = Field(description="Mean top-token probability over the generated tokens (NaN for none).")
    latency_ms: float = Field(description="Server-side generation time in milliseconds.")


class FeedbackResponse(_Open):
    feedback_id: str = Field(description="Id of the stored feedback record.")
    stored: bool = Field(description="True once the record is fsynced to the feedback store.")


class HealthResponse(_Open):
    model: str = Field(description="Registered model name served.")
    versions: dict[str, str] = Field(description="Arm -> model version currently served.")
    runtimes: dict[str, str] = Field(description="Arm -> runtime (onnx_int8 or torch).")
    reloads: int = Field(description="How many times the served versions changed since start.")
    rejected: dict[str, int] = Field(
        default_factory=dict,
        description="Refused requests since start, by reason (counted here instead of one audit entry each).",
    )


class ReloadResponse(_Open):
    versions: dict[str, str] = Field(description="Arm -> model version served after the reload.")
    reloads: int = Field(description="How many times the served versions changed since start.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong, in one line.")


def errors(*codes: int) -> dict:
    meaning = {
        401: "No valid API key was shown (and anonymous use is not allowed for this action).",
        403: "The key's role may not do this (or may not submit this data classification).",
        413: "The request body is larger than the server's limit; it was not read.",
        429: "The key's rate limit is exceeded; retry after the Retry-After header's seconds.",
        422: "The request body is invalid (the message names the field).",
        503: "No champion is registered yet, so nothing can answer.",
    }
    return {code: {"model": ErrorResponse, "description": meaning[code]} for code in codes}


def swagger_ui_path():
    """Swagger UI's dist files, from the swagger-ui-bundle-v2 package (no CDN)."""
    from swagger_ui_bundle import swagger_ui_path as path

    return path


def add_offline_docs(app: FastAPI) -> None:
    """Serve /docs with Swagger UI from the installed package; create the app with docs_url=None."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path())), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )
