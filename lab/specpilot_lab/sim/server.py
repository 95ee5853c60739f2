"""The simulator's HTTP API: the OpenAI-compatible endpoints vLLM serves, /health and /metrics.

Tokens are approximated as whitespace-separated words, on the way in and on the way out.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from specpilot_lab.sim.engine import Engine

ENGINE_KEY = web.AppKey("engine", Engine)
DEFAULT_ECHO = 0.3
"""How much a response echoes its prompt, for prompt-lookup methods: chat-like by default."""


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response(
        {"object": "error", "message": message, "type": kind, "param": None, "code": status},
        status=status,
    )


def _prompt_tokens(body: Mapping[str, Any], chat: bool) -> int:
    if chat:
        messages = body.get("messages") or []
        text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    else:
        prompt = body.get("prompt", "")
        text = " ".join(prompt) if isinstance(prompt, list) else str(prompt)
    return max(1, len(text.split()))


def _echo(body: Mapping[str, Any]) -> float:
    value = body.get("specpilot_echo", os.environ.get("SPECPILOT_SIM_ECHO", DEFAULT_ECHO))
    return min(1.0, max(0.0, float(value)))


async def _complete(request: web.Request, chat: bool) -> web.StreamResponse:
    engine = request.app[ENGINE_KEY]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the request body is not JSON", "BadRequestError")
    served = engine.config.served_model_name
    if body.get("model", served) != served:
        return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
    prompt_tokens = _prompt_tokens(body, chat)
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    if prompt_tokens + max_tokens > engine.max_model_len:
        return _error(
            400,
            f"This model's maximum context length is {engine.max_model_len} tokens. However, "
            f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
            f"messages, {max_tokens} in the completion).",
            "BadRequestError",
        )
    temperature = float(body.get("temperature", 1.0))
    job = engine.submit(prompt_tokens, max_tokens, temperature, _echo(body))
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": max_tokens,
        "total_tokens": prompt_tokens + max_tokens,
    }
    if not body.get("stream"):
        text = "".join([chunk async for chunk in _chunks(job.stream)])
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": served,
                "choices": [choice],
                "usage": usage,
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    kind = "chat.completion.chunk" if chat else "text_completion"

    async def send(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
        payload = {
            "id": ident,
            "object": kind,
            "created": created,
            "model": served,
            "choices": choices,
            **(extra or {}),
        }
        await response.write(f"data: {json.dumps(payload)}\n\n".encode())

    async for chunk in _chunks(job.stream):
        part = {"delta": {"content": chunk}} if chat else {"text": chunk}
        await send([{"index": 0, **part, "finish_reason": None, "logprobs": None}])
    final: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
    await send([{"index": 0, **final, "finish_reason": "length", "logprobs": None}])
    if (body.get("stream_options") or {}).get("include_usage"):
        await send([], {"usage": usage})
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _chunks(stream: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while (chunk := await stream.get()) is not None:
        yield chunk


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=True)


async def models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    return web.json_response(
        {
            "object": "list",
            "data": [
                {
                    "id": engine.config.served_model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "vllm",
                    "root": engine.config.model,
                    "parent": None,
                    "max_model_len": engine.max_model_len,
                }
            ],
        }
    )


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    return web.Response(
        body=generate_latest(engine.metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


def application(engine: Engine) -> web.Application:
    app = web.Application()
    app[ENGINE_KEY] = engine
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)

    async def run_engine(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(engine.run())
        yield
        task.cancel()

    app.cleanup_ctx.append(run_engine)
    return app
