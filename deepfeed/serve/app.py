"""The inference server: answers prompts, logs every request, takes feedback.

``create_app(settings)`` builds a FastAPI app; ``deepfeed serve`` runs it under uvicorn.
Endpoints:
- ``POST /generate`` {user_id, prompt, max_new_tokens?}: the answer from the user's arm.
- ``POST /feedback`` (header ``X-API-Key``): a rating / correction into the feedback store.
- ``POST /admin/reload`` (header ``X-API-Key``, permission ``model:reload``): follow the
  registry's aliases now instead of at the next poll.
- ``GET /health``: served versions and runtimes.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from deepfeed.core.abtest import arm_for_hash, hash_user_id
from deepfeed.core.access import FEEDBACK_SUBMIT, MODEL_RELOAD, AccessPolicy, Decision, audit_denial
from deepfeed.core.audit import AuditLedger
from deepfeed.core.feedback import FeedbackError, FeedbackStore
from deepfeed.core.embedding_summary import shared_summarizer
from deepfeed.core.inference_log import InferenceLog, prompt_record
from deepfeed.core.offline import deepfeed_home
from deepfeed.serve.models import AliasWatcher, ModelPool, NoChampionError
from deepfeed.serve.openapi import (
    FeedbackResponse, GenerateResponse, HealthResponse, ReloadResponse, add_offline_docs, errors,
)

log = logging.getLogger("deepfeed.serve")
MAX_PROMPT_CHARS = 8000


@dataclass
class ServeSettings:
    tracking_uri: str
    model_name: str = "deepfeed"
    runtime: str = "onnx_int8"
    ab_test: bool = True
    split: float = 0.5  # the challenger's share of users while an A/B test runs
    salt: str = ""
    max_new_tokens: int = 32
    poll_seconds: float = 10.0
    policy_path: Path | None = None
    home: Path = field(default_factory=deepfeed_home)
    # MiniLM embedding summary of each prompt in the inference log (drift of topic, not just
    # of length and script); ~10 ms a request on CPU.
    embedding_summary: bool = True

    @property
    def log_root(self) -> Path:
        return self.home / "inference_log"

    @property
    def feedback_root(self) -> Path:
        return self.home / "feedback"

    @property
    def audit_path(self) -> Path:
        return self.home / "audit" / "ledger.jsonl"


class GenerateRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=256, description="Stable id of the end user (hashed before logging).")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int | None = Field(default=None, ge=1, le=512)


class FeedbackRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    answer: str | None = Field(default=None, max_length=20_000, description="The model's answer being rated.")
    correction: str | None = Field(default=None, max_length=20_000, description="The answer it should have given.")
    rating: float = Field(ge=0.0, le=1.0, description="1 = good, 0 = bad.")
    user_id: str | None = Field(default=None, max_length=256)
    model_version: str | None = None
    arm: str | None = None
    request_id: str | None = None
    classification: str = Field(min_length=1, description="Data classification, checked against the access policy.")
    tags: list[str] = Field(default_factory=list)
    lang: str | None = None


def _clear_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": "invalid request: " + "; ".join(problems)})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deepfeed")
    except PackageNotFoundError:
        return "0"


def create_app(settings: ServeSettings, pool: ModelPool | None = None) -> FastAPI:
    pool = pool or ModelPool(settings.tracking_uri, settings.model_name, settings.runtime, settings.ab_test)
    inference_log = InferenceLog(settings.log_root)
    feedback = FeedbackStore(settings.feedback_root)
    ledger = AuditLedger(settings.audit_path)
    policy = AccessPolicy.from_file(settings.policy_path) if settings.policy_path else None
    summarizer = shared_summarizer() if settings.embedding_summary else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            pool.refresh()
        except Exception:  # keep serving /health and /feedback; the watcher retries
            log.exception("initial model load failed")
        watcher = AliasWatcher(pool, settings.poll_seconds)
        watcher.start()
        yield
        watcher.stop()

    app = FastAPI(title="deepfeed", lifespan=lifespan, docs_url=None, redoc_url=None, version=_version(),
                  description="Answers prompts with the registered champion (and a challenger during an A/B test), "
                  "logs every request, and takes rated feedback for the next fine-tuning.")
    add_offline_docs(app)
    app.add_exception_handler(RequestValidationError, _clear_validation_error)
    app.state.pool, app.state.settings = pool, settings

    def authorize(api_key: str | None, action: str, classification: str | None = None) -> Decision:
        if policy is None:
            decision = Decision(False, "no access policy configured on this server", action, classification=classification)
        else:
            decision = policy.decide(api_key, action, classification, settings.model_name)
        if not decision.allowed:
            audit_denial(ledger, decision, request_id=uuid.uuid4().hex)
            raise HTTPException(status_code=403, detail=f"access denied: {decision.reason}")
        return decision

    @app.get("/health", response_model=HealthResponse, summary="Served versions and runtimes",
             description="Which registered version each arm serves and how; no key needed.")
    def health() -> dict:
        return {"model": settings.model_name, "versions": pool.versions(), "runtimes": pool.runtimes(),
                "reloads": pool.reloads}

    # Plain `def` endpoints run in the threadpool, so a long generation does not block
    # the event loop (and other requests) while it computes.
    @app.post("/generate", response_model=GenerateResponse, responses=errors(422, 503), summary="Answer a prompt",
              description="Answers with the arm the user's hashed id falls into; the request is logged "
              "(prompt scrubbed of PII) before the answer is returned.")
    def generate(req: GenerateRequest) -> dict:
        started = time.perf_counter()
        user_hash = hash_user_id(req.user_id, settings.salt)
        try:
            arm, served = pool.pick(arm_for_hash(user_hash, settings.split))
        except NoChampionError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        out = served.generator.generate(req.prompt, req.max_new_tokens or settings.max_new_tokens)
        latency_ms = (time.perf_counter() - started) * 1000
        request_id = uuid.uuid4().hex
        # Logged before answering: a request the client saw is a request the monitors see.
        inference_log.append({
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
            "request_id": request_id, "user_hash": user_hash, "arm": arm,
            "model_version": served.version, "runtime": served.generator.runtime,
            "confidence": out.confidence, "new_tokens": out.new_tokens, "latency_ms": latency_ms,
            **prompt_record(req.prompt, summarizer),
        })
        return {"request_id": request_id, "answer": out.text, "arm": arm, "model_version": served.version,
                "confidence": out.confidence, "latency_ms": latency_ms}

    @app.post("/feedback", response_model=FeedbackResponse, responses=errors(403, 422), summary="Rate an answer",
              description="Stores a rating or correction for the next fine-tuning. Needs an X-API-Key whose role "
              "has feedback:submit and may submit the request's data classification.")
    def post_feedback(req: FeedbackRequest, x_api_key: str | None = Header(default=None)) -> dict:
        decision = authorize(x_api_key, FEEDBACK_SUBMIT, req.classification)
        record = req.model_dump()
        user_id = record.pop("user_id")
        if user_id:
            record["user_hash"] = hash_user_id(user_id, settings.salt)
        record["role"] = decision.role
        try:
            feedback_id = feedback.append(record)  # fsynced before we answer
        except FeedbackError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        return {"feedback_id": feedback_id, "stored": True}

    @app.post("/admin/reload", response_model=ReloadResponse, responses=errors(403), summary="Re-read the registry now",
              description="Follows the registry's aliases now instead of at the next poll (permission model:reload).")
    def reload(x_api_key: str | None = Header(default=None)) -> dict:
        authorize(x_api_key, MODEL_RELOAD)
        return {"versions": pool.refresh(), "reloads": pool.reloads}

    return app
