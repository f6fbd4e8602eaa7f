"""The inference server: answers prompts, logs every request, takes feedback.

``create_app(settings)`` builds a FastAPI app; ``deepfeed serve`` runs it under uvicorn.
Endpoints:
- ``POST /generate`` (header ``X-API-Key``, permission ``model:generate``, or no key when the
  access policy lists it under ``anonymous``) {user_id, prompt, max_new_tokens?}: the answer
  from the user's arm.
- ``POST /feedback`` (header ``X-API-Key``): a rating / correction into the feedback store.
  Its arm and model version are the ones this server logged for ``request_id``.
- ``POST /admin/reload`` (header ``X-API-Key``, permission ``model:reload``): follow the
  registry's aliases now instead of at the next poll.
- ``GET /health``: served versions and runtimes, and counts of refused requests.

Every request body is capped (``max_body_bytes``) before it is read, every key (anonymous
callers: every client address) has a token bucket, and refused requests are counted rather
than written to the audit ledger one by one; the counts go to the ledger in one summary
entry when the server stops. See docs/security.md.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deepfeed.core.data.embedding_summary import shared_summarizer
from deepfeed.core.loop.abtest import arm_for_hash, hash_user_id
from deepfeed.core.loop.feedback import FeedbackError, FeedbackStore
from deepfeed.core.loop.inference_log import InferenceLog, prompt_record
from deepfeed.core.platform.access import (
    ANONYMOUS,
    FEEDBACK_SUBMIT,
    MODEL_GENERATE,
    MODEL_RELOAD,
    AccessPolicy,
    Decision,
)
from deepfeed.core.platform.audit import AuditEntry, AuditLedger
from deepfeed.core.platform.home import deepfeed_home
from deepfeed.core.platform.locations import Locations
from deepfeed.core.platform.ratelimit import RateLimiter
from deepfeed.core.platform.secrets import USER_SALT, load_secret
from deepfeed.serve.models import AliasWatcher, ModelPool, NoChampionError
from deepfeed.serve.openapi import (
    FeedbackResponse,
    GenerateResponse,
    HealthResponse,
    ReloadResponse,
    add_offline_docs,
    errors,
)

log = logging.getLogger("deepfeed.serve")
MAX_PROMPT_CHARS = 8000
# Feedback for a request older than this is refused: its arm can no longer be looked up cheaply.
FEEDBACK_WINDOW = _dt.timedelta(days=7)


@dataclass
class ServeSettings:
    tracking_uri: str
    model_name: str = "deepfeed"
    runtime: str = "onnx_int8"
    ab_test: bool = True
    split: float = 0.5  # the challenger's share of users while an A/B test runs
    # HMAC key for user ids; empty: read at start from $DEEPFEED_USER_SALT(_FILE) or
    # $DEEPFEED_HOME/secrets/user_salt, and the server refuses to start without one.
    salt: str = ""
    max_new_tokens: int = 32
    max_new_tokens_limit: int = 256  # the most a client may ask for
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_body_bytes: int = 256 * 1024  # feedback carries a prompt, an answer and a correction
    rate_per_second: float = 10.0  # per API key (anonymous: per client address), per worker
    rate_burst: int = 50
    poll_seconds: float = 10.0
    policy_path: Path | None = None
    home: Path = field(default_factory=deepfeed_home)
    # MiniLM embedding summary of each prompt in the inference log (drift of topic, not just
    # of length and script); ~10 ms a request on CPU.
    embedding_summary: bool = True

    @property
    def locations(self) -> Locations:
        return Locations(self.home)

    @property
    def log_root(self) -> Path:
        return self.locations.inference_log_root

    @property
    def feedback_root(self) -> Path:
        return self.locations.feedback_root

    @property
    def audit_path(self) -> Path:
        return self.locations.audit_ledger


class GenerateRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=256, description="Stable id of the end user (hashed before logging).")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int | None = Field(default=None, ge=1, le=4096)


class FeedbackRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    answer: str | None = Field(default=None, max_length=20_000, description="The model's answer being rated.")
    correction: str | None = Field(default=None, max_length=20_000, description="The answer it should have given.")
    rating: float = Field(ge=0.0, le=1.0, description="1 = good, 0 = bad.")
    user_id: str | None = Field(default=None, max_length=256)
    request_id: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{32}$",
        description="The /generate answer rated; its arm and model version come from the server's log.",
    )
    classification: str = Field(min_length=1, description="Data classification, checked against the access policy.")
    tags: list[str] = Field(default_factory=list, max_length=32)
    lang: str | None = Field(default=None, max_length=35)

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_client_assignment(cls, data: Any) -> Any:
        # A client that could name its arm or model version could steer the A/B statistics.
        if isinstance(data, dict):
            sent = sorted(k for k in ("arm", "model_version") if k in data)
            if sent:
                raise ValueError(
                    f"{' and '.join(sent)} are assigned by the server: send the request_id of the rated answer instead"
                )
        return data


class Rejections:
    """Refused requests, counted by reason (a flood of them must not flood the ledger)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is refused (413) without being read.

    A declared Content-Length over the limit is refused before the first byte; a body sent
    without one (chunked) is counted as it arrives and refused as soon as it passes the
    limit, so memory never holds more than the limit plus one chunk."""

    def __init__(self, app: Any, limit: int, rejections: Rejections):
        self.app, self.limit, self.rejections = app, limit, rejections

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # FastAPI lets an HTTPException raised while reading the body through as is.
                    self.rejections.add("body_too_large")
                    raise HTTPException(status_code=413, detail=self._detail())
            return message

        await self.app(scope, limited, send)

    def _detail(self) -> str:
        return f"request body larger than {self.limit} bytes"

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        self.rejections.add("body_too_large")
        response = JSONResponse(status_code=413, content={"detail": self._detail()}, headers={"Connection": "close"})
        await response(scope, receive, send)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deepfeed")
    except PackageNotFoundError:
        return "0"


def create_app(settings: ServeSettings, pool: ModelPool | None = None) -> FastAPI:
    # Refuse to start rather than log reversible user hashes (raises MissingSecret).
    salt = settings.salt or load_secret(USER_SALT, settings.home)
    pool = pool or ModelPool(settings.tracking_uri, settings.model_name, settings.runtime, settings.ab_test)
    inference_log = InferenceLog(settings.log_root)
    feedback = FeedbackStore(settings.feedback_root, salt=salt)
    ledger = AuditLedger(settings.audit_path)
    policy = AccessPolicy.from_file(settings.policy_path) if settings.policy_path else None
    summarizer = shared_summarizer() if settings.embedding_summary else None
    rejections = Rejections()
    limiter = RateLimiter(settings.rate_per_second, settings.rate_burst)
    # request_id -> what this worker served; the inference log answers for other workers.
    served_recently: OrderedDict[str, dict[str, Any]] = OrderedDict()
    served_lock = threading.Lock()
    started_at = _dt.datetime.now(_dt.timezone.utc)

    def write_summary() -> None:
        counts = rejections.snapshot()
        if not counts:
            return
        try:
            ledger.append(
                AuditEntry(
                    record_id=f"serve-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
                    stage="serve",
                    action="requests_rejected",
                    run_id="serve",
                    reason=f"{sum(counts.values())} requests refused since {started_at.isoformat(timespec='seconds')}",
                    extra={"counts": counts, "since": started_at.isoformat(timespec="seconds")},
                )
            )
        except Exception:  # shutting down: the counts were visible in /health all along
            log.exception("could not write the rejection summary to the audit ledger")

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
        write_summary()

    app = FastAPI(
        title="deepfeed",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        version=_version(),
        description="Answers prompts with the registered champion (and a challenger during an A/B test), "
        "logs every request, and takes rated feedback for the next fine-tuning.",
    )
    add_offline_docs(app)

    async def clear_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        rejections.add("invalid")
        return _clear_validation_error(_, exc)

    app.add_exception_handler(RequestValidationError, clear_validation_error)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, rejections=rejections)
    app.state.pool, app.state.settings, app.state.rejections = pool, settings, rejections

    def refuse(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
        rejections.add(reason)
        return HTTPException(status_code=status, detail=detail, headers=headers)

    def authorize(api_key: str | None, action: str, classification: str | None = None) -> Decision:
        if policy is None:
            decision = Decision(
                False, "no access policy configured on this server", action, classification=classification
            )
        else:
            decision = policy.decide(api_key, action, classification, settings.model_name)
        if not decision.allowed:
            # 401 when no valid key was shown, 403 when the key's role may not do this.
            status = 403 if decision.principal else 401
            raise refuse(
                status, "unauthenticated" if status == 401 else "forbidden", f"access denied: {decision.reason}"
            )
        return decision

    def throttle(decision: Decision, request: Request) -> None:
        who = decision.principal or ANONYMOUS
        if who == ANONYMOUS:
            who = f"{ANONYMOUS}@{request.client.host if request.client else 'unknown'}"
        wait = limiter.acquire(who)
        if wait:
            raise refuse(
                429,
                "rate_limited",
                f"rate limit exceeded: at most {settings.rate_burst} requests at once "
                f"and {settings.rate_per_second:g}/s on average per key",
                headers={"Retry-After": RateLimiter.retry_after(wait)},
            )

    def generate_access(request: Request, x_api_key: str | None = Header(default=None)) -> Decision:
        decision = authorize(x_api_key, MODEL_GENERATE)
        throttle(decision, request)
        return decision

    def served_event(request_id: str) -> dict[str, Any] | None:
        with served_lock:
            if request_id in served_recently:
                return served_recently[request_id]
        return inference_log.find(request_id, within=FEEDBACK_WINDOW)

    @app.get(
        "/health",
        response_model=HealthResponse,
        summary="Served versions and runtimes",
        description="Which registered version each arm serves and how; no key needed.",
    )
    def health() -> dict:
        return {
            "model": settings.model_name,
            "versions": pool.versions(),
            "runtimes": pool.runtimes(),
            "reloads": pool.reloads,
            "rejected": rejections.snapshot(),
        }

    # Plain `def` endpoints run in the threadpool, so a long generation does not block
    # the event loop (and other requests) while it computes.
    @app.post(
        "/generate",
        response_model=GenerateResponse,
        responses=errors(401, 403, 413, 422, 429, 503),
        summary="Answer a prompt",
        description="Answers with the arm the user's hashed id falls into; the request is logged "
        "(prompt scrubbed of PII) before the answer is returned. Needs an X-API-Key whose role has "
        "model:generate, unless the access policy lets anonymous callers generate.",
    )
    def generate(req: GenerateRequest, access: Decision = Depends(generate_access)) -> dict:
        if len(req.prompt) > settings.max_prompt_chars:
            raise refuse(422, "invalid", f"invalid request: prompt: longer than {settings.max_prompt_chars} characters")
        if req.max_new_tokens is not None and req.max_new_tokens > settings.max_new_tokens_limit:
            raise refuse(422, "invalid", f"invalid request: max_new_tokens: at most {settings.max_new_tokens_limit}")
        started = time.perf_counter()
        user_hash = hash_user_id(req.user_id, salt)
        try:
            arm, served = pool.pick(arm_for_hash(user_hash, settings.split))
        except NoChampionError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        out = served.generator.generate(req.prompt, req.max_new_tokens or settings.max_new_tokens)
        latency_ms = (time.perf_counter() - started) * 1000
        request_id = uuid.uuid4().hex
        # Logged before answering: a request the client saw is a request the monitors see.
        event = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
            "request_id": request_id,
            "user_hash": user_hash,
            "arm": arm,
            "model_version": served.version,
            "runtime": served.generator.runtime,
            "confidence": out.confidence,
            "new_tokens": out.new_tokens,
            "latency_ms": latency_ms,
            **prompt_record(req.prompt, summarizer),
        }
        inference_log.append(event)
        with served_lock:
            served_recently[request_id] = {k: event[k] for k in ("request_id", "user_hash", "arm", "model_version")}
            while len(served_recently) > 100_000:
                served_recently.popitem(last=False)
        return {
            "request_id": request_id,
            "answer": out.text,
            "arm": arm,
            "model_version": served.version,
            "confidence": out.confidence,
            "latency_ms": latency_ms,
        }

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses=errors(401, 403, 413, 422, 429),
        summary="Rate an answer",
        description="Stores a rating or correction for the next fine-tuning. Needs an X-API-Key whose role "
        "has feedback:submit and may submit the request's data classification.",
    )
    def post_feedback(req: FeedbackRequest, request: Request, x_api_key: str | None = Header(default=None)) -> dict:
        decision = authorize(x_api_key, FEEDBACK_SUBMIT, req.classification)
        throttle(decision, request)
        record = req.model_dump()
        user_id = record.pop("user_id")
        record["arm"] = record["model_version"] = None
        if req.request_id:
            served = served_event(req.request_id)
            if served is None:
                raise refuse(
                    422,
                    "invalid",
                    f"invalid request: request_id: no request {req.request_id} was served "
                    f"by this server in the last {FEEDBACK_WINDOW.days} days",
                )
            # The server's own assignment, never the client's word, decides which arm is rated.
            record.update(
                arm=served.get("arm"), model_version=served.get("model_version"), user_hash=served.get("user_hash")
            )
        elif user_id:
            record["user_hash"] = hash_user_id(user_id, salt)
        record["role"] = decision.role
        try:
            feedback_id = feedback.append(record)  # fsynced before we answer
        except FeedbackError as exc:
            raise refuse(422, "invalid", str(exc)) from exc
        return {"feedback_id": feedback_id, "stored": True}

    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        responses=errors(401, 403, 429),
        summary="Re-read the registry now",
        description="Follows the registry's aliases now instead of at the next poll (permission model:reload).",
    )
    def reload(request: Request, x_api_key: str | None = Header(default=None)) -> dict:
        decision = authorize(x_api_key, MODEL_RELOAD)
        throttle(decision, request)
        return {"versions": pool.refresh(), "reloads": pool.reloads}

    return app


def _clear_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": "invalid request: " + "; ".join(problems)})
