"""Agent benchmark: episode throughput against raw vLLM, and framework overhead per step.

1. Throughput: arithmetic episodes run 8 at a time through strop's agent on the embedded vLLM; every
   request the agent sends is captured. The same requests are then replayed with the `openai` client,
   8 at a time, each forced to generate exactly the tokens the agent's call generated (``ignore_eos``).
   Ratio = agent tokens/s over direct tokens/s. vLLM's prefix cache is emptied before each phase, so the
   replay does not find the agent's prompts computed already.
2. Overhead: the agent's recorded replies are replayed by an OpenAI-compatible loopback server that
   answers at once, so time per step is strop's own (graph, LangChain, HTTP, tools, trajectory write):
   for ``Agent.run`` and for ``Agent.stream``, which streams the action's tokens as the CLI shows them.

    .venv/bin/python bench/agent.py [--episodes 16] [--concurrency 8]
    .venv/bin/python bench/agent.py --overhead-only    # no vLLM: replays the actions recorded in the JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai
from rich.console import Console
from rich.table import Table

from strop.agents.agent import Agent, Task
from strop.agents.graph import chat_model
from strop.aio import at_most
from strop.config import ServeSettings, load_settings
from strop.serving.endpoint import Endpoint
from strop.serving.server import VLLMServer
from strop.tools.builtin import BUILTIN_TOOLS
from strop.tools.toolkit import final_answer
from strop.trajectories import TrajectoryStore

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "math" / "arithmetic.jsonl"
TOOLS = [*BUILTIN_TOOLS, final_answer]
console = Console(stderr=True)


def questions(n: int) -> list[str]:
    with DATA.open() as fh:
        return [json.loads(line)["question"] for line in fh][:: 1600 // n][:n]


def agent_for(settings, endpoint: Endpoint, store: TrajectoryStore, **options) -> Agent:
    model = chat_model(endpoint, settings.sampling, settings.request_timeout_s, **options)
    return Agent(settings, model, TOOLS, model_name=endpoint.model, store=store)


def measure_throughput(settings, endpoint: Endpoint, prompts: list[str], concurrency: int, state: Path) -> dict:
    captured: list[tuple[dict, int]] = []  # every request the agent sent, with the tokens it generated

    def record(response: httpx.Response) -> None:
        response.read()  # a no-op once arecord has read it
        captured.append((json.loads(response.request.content), response.json()["usage"]["completion_tokens"]))

    async def arecord(response: httpx.Response) -> None:
        await response.aread()
        record(response)

    # Both clients carry the hook, whichever the graph calls the model through (run_many: the async one).
    agent = agent_for(settings, endpoint, TrajectoryStore(state / "throughput.sqlite"),
                      http_client=httpx.Client(event_hooks={"response": [record]}, timeout=600),
                      http_async_client=httpx.AsyncClient(event_hooks={"response": [arecord]}, timeout=600))
    reset_prefix_cache(endpoint)
    began = time.perf_counter()
    runs = asyncio.run(agent.run_many([Task(p) for p in prompts], concurrency))
    agent_s = time.perf_counter() - began
    agent_tokens = sum(tokens for _, tokens in captured)

    client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0)

    async def replay(body: dict, tokens: int) -> int:
        extra = {k: body[k] for k in ("response_format",) if k in body} | {"ignore_eos": True}
        reply = await client.chat.completions.create(model=body["model"], messages=body["messages"],
                                                     temperature=body.get("temperature", 0.0),
                                                     max_tokens=max(tokens, 1), extra_body=extra)
        return reply.usage.completion_tokens

    async def replay_all() -> int:
        return sum(await at_most(concurrency, (replay(body, tokens) for body, tokens in captured)))

    reset_prefix_cache(endpoint)  # else the direct replay finds every prompt computed by the agent already
    began = time.perf_counter()
    direct_tokens = asyncio.run(replay_all())
    direct_s = time.perf_counter() - began
    agent_rate, direct_rate = agent_tokens / agent_s, direct_tokens / direct_s
    return {"episodes": len(runs), "model_calls": len(captured), "answered": sum(r.status == "answered" for r in runs),
            "agent_tokens": agent_tokens, "agent_s": round(agent_s, 2), "agent_tok_s": round(agent_rate, 2),
            "direct_tokens": direct_tokens, "direct_s": round(direct_s, 2), "direct_tok_s": round(direct_rate, 2),
            "ratio": round(agent_rate / direct_rate, 3), "recorded": [_actions(r) for r in runs]}


def _actions(run) -> list[str]:
    """What the model generated in ``run``, in order (a step-budget note comes after the last action)."""
    return [m["content"] for m in run.messages if m["role"] == "assistant"][:run.model_calls]


def reset_prefix_cache(endpoint: Endpoint) -> None:
    """Forget vLLM's cached prompt prefixes (a development endpoint, enabled by VLLM_SERVER_DEV_MODE)."""
    root = endpoint.base_url.removesuffix("/v1")
    for _ in range(20):  # refused while requests still hold cache blocks
        if httpx.post(f"{root}/reset_prefix_cache", timeout=30).json().get("success"):
            return
        time.sleep(0.5)
    raise RuntimeError("vLLM did not reset its prefix cache")


class Replayer:
    """An OpenAI-compatible /v1/chat/completions on loopback that answers at once with the next recorded action.

    Streamed requests (the agent streams its tokens) get server-sent events, one chunk per word or
    symbol as vLLM streams tokens, then the usage chunk; others get one JSON completion. It runs in the
    benchmark's process, so its own work counts as strop's: it is a bare HTTP/1.1 keep-alive loop
    (``http.server`` took over twice its CPU per request, work vLLM does in a process of its own).
    """

    def __init__(self) -> None:
        self.script: list[str] = []
        self.lock = threading.Lock()
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.socket.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:  # closed
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # send at once, as vLLM does
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        pending = b""
        with connection:
            while True:
                while b"\r\n\r\n" not in pending:
                    received = connection.recv(1 << 16)
                    if not received:
                        return
                    pending += received
                head, pending = pending.split(b"\r\n\r\n", 1)
                length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head)[1])
                while len(pending) < length:
                    pending += connection.recv(1 << 16)
                body, pending = pending[:length], pending[length:]
                kind, reply = self._answer(json.loads(body))
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                                   % (kind, len(reply), reply))

    def _answer(self, request: dict) -> tuple[bytes, bytes]:
        with self.lock:
            content = self.script.pop(0)
        if request.get("stream"):
            return b"text/event-stream", (b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in _chunks(content))
                                          + b"data: [DONE]\n\n")
        return b"application/json", json.dumps(_completion(content)).encode()


USAGE = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


def _completion(content: str) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "usage": USAGE,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


def _chunks(content: str) -> list[dict]:
    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    pieces = [chunk({"role": "assistant", "content": ""})]
    pieces += [chunk({"content": token}) for token in re.findall(r"\w+|\W", content)]
    pieces.append(chunk({}, "stop"))
    return [*pieces, {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
                      "usage": USAGE}]


def measure_overhead(settings, recorded: list[list[str]], prompts: list[str], state: Path) -> dict:
    """Time per step of ``Agent.run`` (final state only) and of ``Agent.stream`` (tokens and tool events)."""
    server = Replayer()
    endpoint = Endpoint(f"http://127.0.0.1:{server.port}/v1", "m", "EMPTY", managed=False)
    agent = agent_for(settings, endpoint, TrajectoryStore(state / "overhead.sqlite"))
    try:
        ran = _per_step_ms(agent.run, recorded, prompts, server)
        streamed = _per_step_ms(lambda prompt: [*agent.stream(prompt)][-1].trajectory, recorded, prompts, server)
    finally:
        server.close()
    return {"episodes_measured": len(ran), **_quantiles(ran), **_quantiles(streamed, "stream_"),
            "load_average_1m": round(os.getloadavg()[0], 2)}  # other work on the machine slows every figure


def _per_step_ms(episode, recorded: list[list[str]], prompts: list[str], server: Replayer) -> list[float]:
    per_step_ms = []
    for repeat in range(4):  # the first round warms up; the others give a steadier distribution
        for prompt, actions in zip(prompts, recorded, strict=True):
            server.script = list(actions)
            began = time.perf_counter()
            run = episode(prompt)
            elapsed = time.perf_counter() - began
            if run.model_calls != len(actions) or run.errors:  # a replay that failed measures nothing
                raise RuntimeError(f"replay of {prompt!r} went astray: {run.status}, {run.errors}")
            if repeat:
                per_step_ms.append(elapsed * 1000 / run.model_calls)
    return per_step_ms


def _quantiles(samples: list[float], prefix: str = "") -> dict:
    return {f"{prefix}p50_ms": round(statistics.median(samples), 2),
            f"{prefix}p90_ms": round(statistics.quantiles(samples, n=10)[8], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "agent.json")
    parser.add_argument("--overhead-only", action="store_true",
                        help="no vLLM: replay the actions recorded in --json through the loopback server; "
                        "print the overhead and write it into --json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the server in `finally`

    state = Path(tempfile.mkdtemp(prefix="strop-bench-agent-"))
    settings = load_settings(state_dir=state, models_dir=REPO / ".strop" / "models", serve=ServeSettings(port=8392))
    if args.overhead_only:
        results = json.loads(args.json.read_text())
        with console.status("replaying recorded actions through a loopback server"):
            overhead = measure_overhead(settings, results["replay"]["actions"], results["replay"]["prompts"], state)
        results["overhead_per_step"] = overhead
        args.json.write_text(json.dumps(results, indent=2))
        console.print_json(data=overhead)
        return
    prompts = questions(args.episodes)
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # for /reset_prefix_cache between the timed phases
    server = VLLMServer(settings)
    with console.status("starting vLLM") as status:
        record = server.start(progress=status.update)
    try:
        endpoint = Endpoint(record.base_url, record.model, record.api_key, managed=True)
        with console.status(f"{len(prompts)} episodes, {args.concurrency} at a time, then the same requests direct"):
            throughput = measure_throughput(settings, endpoint, prompts, args.concurrency, state)
    finally:
        server.stop()
    recorded = throughput.pop("recorded")
    with console.status("replaying recorded actions through a loopback server"):
        overhead = measure_overhead(settings, recorded, prompts, state)
    report({"throughput": throughput, "overhead_per_step": overhead, "concurrency": args.concurrency,
            "replay": {"prompts": prompts, "actions": recorded}}, args.json)


def report(results: dict, path: Path) -> None:
    t, o = results["throughput"], results["overhead_per_step"]
    table = Table(title="strop agent on the embedded vLLM")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(f"episodes ({t['model_calls']} model calls, {t['answered']} answered)", str(t["episodes"]))
    table.add_row(f"agent tok/s, {results['concurrency']} concurrent episodes", f"{t['agent_tok_s']:.1f}")
    table.add_row("direct openai tok/s, same requests and tokens", f"{t['direct_tok_s']:.1f}")
    table.add_row("agent / direct", f"{t['ratio']:.3f}")
    table.add_row("framework overhead per step p50 / p90 (ms)", f"{o['p50_ms']:.1f} / {o['p90_ms']:.1f}")
    table.add_row("  streamed (tokens, tool events) p50 / p90 (ms)",
                  f"{o['stream_p50_ms']:.1f} / {o['stream_p90_ms']:.1f}")
    Console().print(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    console.print(f"JSON written to {path}")


if __name__ == "__main__":
    sys.exit(main())
