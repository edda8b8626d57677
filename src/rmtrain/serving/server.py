"""`rmtrain serve`: an HTTP reward server for RLHF loops (FastAPI + uvicorn).

Endpoints: `POST /score` (prompt/response items), `POST /get_reward` (OpenRLHF's remote reward
protocol: full texts), `GET /health`, `GET /info`. Items are formatted and tokenised by the
training function; concurrent requests are batched together (dynamic batching with a short
wait) onto the packed scoring path. Safe by default: loopback bind, optional bearer token,
limits on body size, items and tokens, a request timeout, safetensors weights only, no remote
code. Bad input gets a 4xx with a message, never a 5xx.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from rmtrain.serving.connections import header_deadline_protocol, raise_open_files_limit
from rmtrain.serving.guard import RequestGuard
from rmtrain.serving.scorer import Item, RewardScorer, encode_items, is_text, parse_item

log = logging.getLogger("rmtrain.serve")


@dataclass
class ServeLimits:
    max_body_bytes: int = 2_000_000
    max_items: int = 64
    request_timeout_s: float = 30.0
    max_pending_items: int = 4096
    batch_wait_ms: float = 5.0
    max_batch_tokens: int = 16_384
    body_timeout_s: float = 10.0
    max_per_client: int = 256
    header_timeout_s: float = 10.0  # request line and headers (see connections.py)
    max_waiting: int = 1024  # connections still sending headers; the oldest is let go first


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[dict[str, Any]] = Field(min_length=1)


class RewardRequest(BaseModel):
    """OpenRLHF remote reward model request: full texts in `query`; `prompts` (when they are
    the texts' beginnings) mark where each response starts; `labels` are accepted and unused.
    OpenRLHF 0.10-0.11 sends an empty `query` to all but one of several endpoints."""

    model_config = ConfigDict(extra="ignore")
    query: list[StrictStr]
    prompts: list[Any] | None = None


class DynamicBatcher:
    """Collects concurrent requests for up to `batch_wait_ms` and scores them in one pass."""

    def __init__(self, scorer: RewardScorer, limits: ServeLimits, dynamic: bool = True) -> None:
        self.scorer, self.limits, self.dynamic = scorer, limits, dynamic
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmtrain-score")
        self.queue: asyncio.Queue | None = None
        self.pending = 0
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        if self.dynamic:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False)

    async def score(self, seqs: list[list[int]], normalize: bool) -> np.ndarray:
        if self.pending + len(seqs) > self.limits.max_pending_items:
            raise HTTPException(429, "server busy: too many items waiting; retry shortly")
        self.pending += len(seqs)
        try:
            if not self.dynamic:
                loop = asyncio.get_running_loop()
                out = await loop.run_in_executor(self.executor, self.scorer.score_ids, seqs)
            else:
                fut = asyncio.get_running_loop().create_future()
                self.queue.put_nowait((seqs, fut))
                out = await fut
        finally:
            self.pending -= len(seqs)
        return self.scorer.normalize(out) if normalize else out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            tokens = sum(len(s) for s in batch[0][0])
            deadline = loop.time() + self.limits.batch_wait_ms / 1000
            while tokens < self.limits.max_batch_tokens:
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                except (TimeoutError, asyncio.TimeoutError):
                    break
                batch.append(nxt)
                tokens += sum(len(s) for s in nxt[0])
            batch = [(req, fut) for req, fut in batch if not fut.done()]  # timed out: dropped
            if not batch:
                continue
            seqs = [s for req, _ in batch for s in req]
            try:
                rewards = await loop.run_in_executor(self.executor, self.scorer.score_ids, seqs)
            except Exception as exc:  # a failure is reported to each waiting request
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            start = 0
            for req, fut in batch:
                if not fut.done():
                    fut.set_result(rewards[start : start + len(req)])
                start += len(req)


async def _invalid_body(_: Request, exc: Exception) -> JSONResponse:
    errors = [{"loc": e.get("loc"), "msg": e.get("msg")} for e in exc.errors()]  # type: ignore[attr-defined]
    return JSONResponse({"detail": "invalid request body", "errors": errors}, status_code=422)


async def _rewards(
    scorer: RewardScorer,
    batcher: DynamicBatcher,
    limits: ServeLimits,
    normalize: bool,
    items: list[Item],
) -> dict[str, Any]:
    """Encode with the training function, score on the shared batcher, flag cut items; the
    request timeout covers both (texts are tokenised only as far as the cut reaches)."""
    if len(items) > limits.max_items:
        raise HTTPException(413, f"at most {limits.max_items} items per request")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.request_timeout_s
    try:
        encoded = await asyncio.wait_for(
            loop.run_in_executor(None, encode_items, scorer, items), limits.request_timeout_s
        )
        bad = [i for i, e in enumerate(encoded) if e is None]
        if bad:
            raise HTTPException(422, f"items {bad} cannot fit max length {scorer.max_length}")
        seqs = [e[0] for e in encoded]
        rewards = np.zeros(0)
        if seqs:
            left = max(0.0, deadline - loop.time())
            rewards = await asyncio.wait_for(batcher.score(seqs, normalize), left)
    except (TimeoutError, asyncio.TimeoutError):
        raise HTTPException(503, "scoring timed out; retry with fewer items") from None
    truncated = [e[1] for e in encoded]
    return {
        "rewards": [float(r) for r in rewards],
        "truncated": truncated,  # also in extra_logs, which OpenRLHF logs per sample
        "extra_logs": {
            "rm_truncated": [float(t) for t in truncated],
            "rm_tokens": [float(len(s)) for s in seqs],
        },
    }


def create_app(
    scorer: RewardScorer,
    model_name: str,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    normalize: bool = False,
    dynamic_batching: bool = True,
) -> Any:
    """The ASGI app (FastAPI wrapped in the body-size limit)."""
    limits = limits or ServeLimits()
    if normalize:
        scorer.normalize(np.zeros(1))  # fails now, with a clear message, if stats are missing
    batcher = DynamicBatcher(scorer, limits, dynamic_batching)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="rmtrain reward server", docs_url=None, redoc_url=None, lifespan=lifespan)

    app.add_exception_handler(RequestValidationError, _invalid_body)

    async def rewards_for(items: list[Item]) -> dict[str, Any]:
        return await _rewards(scorer, batcher, limits, normalize, items)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {
            "model": model_name,
            "max_length": scorer.max_length,
            "chat_template": scorer.chat,
            "normalize": normalize,
            "reward_mean": scorer.reward_mean,
            "reward_std": scorer.reward_std,
            "dynamic_batching": dynamic_batching,
            "limits": asdict(limits),
        }

    @app.post("/score")
    async def score(req: ScoreRequest) -> dict[str, Any]:
        parsed = [parse_item(obj) for obj in req.items]
        errors = {i: p for i, p in enumerate(parsed) if isinstance(p, str)}
        if errors:
            raise HTTPException(422, {"message": "invalid items", "items": errors})
        return await rewards_for(parsed)

    @app.post("/get_reward")
    async def get_reward(req: RewardRequest) -> dict[str, Any]:
        bad = [i for i, q in enumerate(req.query) if not q.strip() or not is_text(q)]
        if bad:
            raise HTTPException(422, f"queries {bad[:20]} are empty or not valid unicode text")
        aligned = req.prompts if req.prompts and len(req.prompts) == len(req.query) else []
        prompts = [p if isinstance(p, str) and is_text(p) else None for p in aligned]
        prompts = prompts or [None] * len(req.query)  # a hint only: where the response starts
        return await rewards_for(
            [Item(text=q, prompt=p) for q, p in zip(req.query, prompts, strict=True)]
        )

    return RequestGuard(
        app, limits.max_body_bytes, api_key, limits.body_timeout_s, limits.max_per_client
    )


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def serve(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    normalize: bool = False,
    limits: ServeLimits | None = None,
    max_length: int | None = None,
    dynamic_batching: bool = True,
    trust_remote_code: bool = False,
    speed_mode: str = "auto",
    model_name: str | None = None,
) -> None:
    """Serve the model in `model_dir`; `/info` names it `model_name` (default: the folder)."""
    import uvicorn

    from rmtrain.serving.scorer import load_scorer

    if not is_loopback(host) and not api_key:
        log.warning("serving on %s without --api-key: anyone who can reach it can use it", host)
    scorer = load_scorer(
        model_dir,
        max_length=max_length,
        trust_remote_code=trust_remote_code,
        speed_mode=speed_mode,
    )
    name = model_name or Path(model_dir).name  # /info names the model, never a server path
    limits = limits or ServeLimits()
    app = create_app(scorer, name, api_key, limits, normalize, dynamic_batching)
    raise_open_files_limit(limits.max_waiting + 4 * limits.max_pending_items)
    protocol = header_deadline_protocol(limits.header_timeout_s, limits.max_waiting)
    uvicorn.run(app, host=host, port=port, http=protocol, timeout_keep_alive=5)
