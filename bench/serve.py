"""Serving benchmark: start time, single-stream and 8-concurrent tokens/s.

strop's path (the chat model every agent step goes through: LangChain's ChatOpenAI) is measured
against a direct `openai` client loop on the same server in the same run, with the same prompts
and the same number of generated tokens (``ignore_eos``), alternating the two paths to spread out machine noise.

    .venv/bin/python bench/serve.py [--tokens 32] [--requests 2] [--rounds 2] [--json bench/results/serve.json]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
from langchain_core.messages import HumanMessage
from rich.console import Console
from rich.table import Table

from strop.agents.graph import chat_model
from strop.config import ServeSettings, load_settings
from strop.serving.endpoint import Endpoint
from strop.serving.server import VLLMServer

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["What is the capital of France?", "Describe a river.", "Why is the sky blue?", "Name a famous painter."]
console = Console(stderr=True)


def direct_call(client: openai.OpenAI, model: str, prompt: str, tokens: int) -> int:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0.0,
        max_tokens=tokens, extra_body={"ignore_eos": True})
    return reply.usage.completion_tokens


def strop_call(llm, prompt: str) -> int:
    return llm.invoke([HumanMessage(prompt)]).usage_metadata["output_tokens"]


def throughput(call, streams: int, requests: int) -> float:
    """Generated tokens per second with ``streams`` concurrent clients, each sending ``requests``."""
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(streams * requests)]
    began = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        tokens = sum(pool.map(call, jobs))
    return tokens / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--requests", type=int, default=2, help="requests per stream and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "serve.json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the server in `finally`

    state = Path(tempfile.mkdtemp(prefix="strop-bench-"))
    settings = load_settings(state_dir=state, models_dir=REPO / ".strop" / "models",
                             serve=ServeSettings(port=8391))
    server = VLLMServer(settings)
    began = time.perf_counter()
    with console.status("starting vLLM") as status:
        record = server.start(progress=status.update)
    start_s = time.perf_counter() - began
    try:
        results = measure(record.base_url, record.model, settings, args)
    finally:
        server.stop()
    report(start_s, results, args)


def measure(base_url: str, model: str, settings, args) -> dict[str, dict[str, list[float]]]:
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY")
    endpoint = Endpoint(base_url=base_url, model=model, api_key="EMPTY", managed=True)
    sampling = settings.sampling.model_copy(update={"temperature": 0.0, "max_tokens": args.tokens})
    llm = chat_model(endpoint, sampling).model_copy(update={"extra_body": {"ignore_eos": True}})
    paths = {
        "direct": lambda prompt: direct_call(client, model, prompt, args.tokens),
        "strop": lambda prompt: strop_call(llm, prompt),
    }
    for call in paths.values():  # warm both paths before timing
        call(PROMPTS[0])
    results = {name: {"single": [], "concurrent8": []} for name in paths}
    for round_no in range(args.rounds):
        for name, call in paths.items():
            console.log(f"round {round_no + 1}/{args.rounds}: {name}")
            results[name]["single"].append(throughput(call, 1, args.requests))
            results[name]["concurrent8"].append(throughput(call, 8, args.requests))
    return results


def report(start_s: float, results: dict, args) -> None:
    summary = {"server_start_s": round(start_s, 2), "tokens_per_request": args.tokens, "rounds": args.rounds}
    table = Table(title=f"vLLM embedded default (start {start_s:.1f} s)")
    for column in ("load", "direct tok/s", "strop tok/s", "strop / direct"):
        table.add_column(column, justify="right")
    for load in ("single", "concurrent8"):
        direct = statistics.median(results["direct"][load])
        ours = statistics.median(results["strop"][load])
        summary[load] = {"direct_tok_s": round(direct, 2), "strop_tok_s": round(ours, 2),
                         "ratio": round(ours / direct, 3), "runs": {name: results[name][load] for name in results}}
        table.add_row(load, f"{direct:.1f}", f"{ours:.1f}", f"{ours / direct:.3f}")
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    console.print(f"JSON written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
