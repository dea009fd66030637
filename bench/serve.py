"""Client overhead of strop's model path, as CPU time of the client process per request.

Every agent step goes through strop's chat model (LangChain's ChatOpenAI over the openai client). Its cost
on the client is the CPU this process spends per request (``time.process_time``: building, sending,
parsing), measured against a bare ``http.client`` loop sending the same request to the same server. The
server's time is not in this process's CPU time, so the figure does not move with the server's load. The
two paths alternate request by request (which goes first in each pair is random), so drift hits both alike;
the difference is the median of the paired differences with a 95% bootstrap interval (the mean too). The
interval's width, as a share of a request's wall time (``resolution_of_request_wall``), says how small an
overhead the run resolves: a 5% overhead needs it well under 0.05.

Needs a running server (`strop serve start`, or llm_url):

    .venv/bin/python bench/serve.py [--pairs 200] [--tokens 8] [--json bench/results/serve.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from langchain_core.messages import HumanMessage
from rich.console import Console
from rich.table import Table

from strop.agents.graph import chat_model
from strop.config import load_settings
from strop.serving.endpoint import connect

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Name a colour."
console = Console(stderr=True)


def bare_client(endpoint, tokens: int):
    """One request per call over a kept-alive http.client connection: the least a client can do."""
    url = urlsplit(endpoint.base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {endpoint.api_key}"}
    body = json.dumps({"model": endpoint.model, "messages": [{"role": "user", "content": PROMPT}],
                       "max_tokens": tokens, "temperature": 0.0, "ignore_eos": True})

    def call() -> int:
        try:
            conn.request("POST", f"{url.path}/chat/completions", body, headers)
            reply = conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            conn.close()  # the server closed the idle kept-alive connection: reconnect, as httpx's pool does
            conn.request("POST", f"{url.path}/chat/completions", body, headers)
            reply = conn.getresponse()
        data = json.loads(reply.read())
        if reply.status != 200:
            raise RuntimeError(f"server answered {reply.status}: {data}")
        return data["usage"]["completion_tokens"]

    return call


def strop_client(endpoint, settings, tokens: int):
    sampling = settings.sampling.model_copy(update={"temperature": 0.0, "max_tokens": tokens})
    llm = chat_model(endpoint, sampling).model_copy(update={"extra_body": {"ignore_eos": True}})
    return lambda: llm.invoke([HumanMessage(PROMPT)]).usage_metadata["output_tokens"]


def timed(call) -> tuple[float, float, int]:
    """(client CPU seconds, wall seconds, tokens) of one request."""
    cpu, wall = time.process_time(), time.perf_counter()
    tokens = call()
    return time.process_time() - cpu, time.perf_counter() - wall, tokens


def interval(diffs: list[float], rng: random.Random, stat=statistics.median,
             resamples: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of ``stat`` of the paired differences."""
    values = sorted(stat(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return values[int(0.025 * resamples)], values[int(0.975 * resamples) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200, help="requests per path, alternating")
    parser.add_argument("--tokens", type=int, default=8, help="tokens generated per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "serve.json")
    args = parser.parse_args()
    settings = load_settings()
    endpoint = connect(settings, lambda msg: console.print(f"[dim]{msg}[/]"))
    paths = {"bare": bare_client(endpoint, args.tokens), "strop": strop_client(endpoint, settings, args.tokens)}
    for call in paths.values():  # warm both: connections, imports, the server's prefix cache
        for _ in range(3):
            call()
    rng = random.Random(args.seed)
    runs: dict[str, list[tuple[float, float, int]]] = {"bare": [], "strop": []}
    console.print(f"measuring {args.pairs} pairs")  # no spinner: its thread's CPU would count as the client's
    for _ in range(args.pairs):
        order = ["bare", "strop"] if rng.random() < 0.5 else ["strop", "bare"]
        for name in order:
            runs[name].append(timed(paths[name]))
    report(runs, args, endpoint, rng)


def report(runs, args, endpoint, rng: random.Random) -> None:
    cpu = {name: [r[0] for r in rows] for name, rows in runs.items()}
    wall = {name: statistics.median(r[1] for r in rows) for name, rows in runs.items()}
    diffs = [s - b for s, b in zip(cpu["strop"], cpu["bare"], strict=True)]
    low, high = interval(diffs, rng)  # the median: a rare GC pause or reconnect does not widen it
    mean_low, mean_high = interval(diffs, rng, statistics.fmean)
    bare = statistics.median(cpu["bare"])
    summary = {
        "model": endpoint.model, "pairs": args.pairs, "tokens_per_request": args.tokens,
        "client_cpu_ms": {name: {"mean": round(1000 * statistics.fmean(v), 3),
                                 "median": round(1000 * statistics.median(v), 3)} for name, v in cpu.items()},
        "extra_cpu_ms_per_request": {"median": round(1000 * statistics.median(diffs), 3),
                                     "ci95": [round(1000 * low, 3), round(1000 * high, 3)],
                                     "mean": round(1000 * statistics.fmean(diffs), 3),
                                     "mean_ci95": [round(1000 * mean_low, 3), round(1000 * mean_high, 3)]},
        "cpu_ratio_median": round(statistics.median(cpu["strop"]) / bare, 3),
        "resolution_of_bare_cpu": round((high - low) / bare, 3),
        "resolution_of_request_wall": round((high - low) / wall["bare"], 6),
        "wall_ms_median": {name: round(1000 * v, 1) for name, v in wall.items()},
        "extra_cpu_share_of_request_wall": round(statistics.median(diffs) / wall["bare"], 4),
    }
    table = Table(title=f"client CPU per request over {args.pairs} alternating pairs ({args.tokens} tokens)")
    for column in ("path", "CPU mean (ms)", "CPU median (ms)", "wall median (ms)"):
        table.add_column(column, justify="right")
    for name in ("bare", "strop"):
        c = summary["client_cpu_ms"][name]
        table.add_row(name, f"{c['mean']:.2f}", f"{c['median']:.2f}", f"{summary['wall_ms_median'][name]:.0f}")
    Console().print(table)
    extra = summary["extra_cpu_ms_per_request"]
    console.print(f"strop adds {extra['median']:.2f} ms CPU per request (median of pairs, 95% CI "
                  f"{extra['ci95'][0]:.2f} to "
                  f"{extra['ci95'][1]:.2f}), {summary['extra_cpu_share_of_request_wall']:.1%} of a request's wall "
                  f"time; interval width {summary['resolution_of_request_wall']:.3%} of a request's wall time, "
                  f"{summary['resolution_of_bare_cpu']:.1%} of the bare loop's median CPU.")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    console.print(f"JSON written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
