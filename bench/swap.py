"""Serving the active adapter merged vs as a runtime LoRA, and the blue/green swap that promotes it, on real vLLM.

One run, side by side, in a state folder of its own (the converted model in .strop/models is reused):

1. server A serves the base model: throughput with the base model, then with a runtime LoRA (r=16 on all
   projections, random weights: serving time does not depend on the values);
2. promotion in ``merged`` mode: the adapter is merged into a model folder, server B starts on it and takes
   over, A drains and stops, while ``--clients`` concurrent clients send requests back to back, each finding
   the server the way strop does (``server.json``); every request must succeed;
3. throughput of the promoted (merged) model on B;
4. rollback the same way (server C on the base model, under the same load), and the base model once more.

Throughput: ``--requests`` chat requests, ``--concurrency`` at a time, ``--tokens`` generated each (EOS
ignored, so every request does the same work). The merged model is compared with the mean of the two base
measurements (before and after), which brackets any drift of a shared machine.

    .venv/bin/python bench/swap.py [--requests 24] [--concurrency 8] [--tokens 64] [--clients 64]
                                   [--json bench/results/swap.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console

from strop.config import ServeSettings, load_settings
from strop.files import sha256_file
from strop.serving.adapters import ADAPTER_META, Registry, load_adapter
from strop.serving.endpoint import Endpoint, connect
from strop.serving.merge import ensure_merged
from strop.serving.models import MANIFEST, prepare_model
from strop.serving.policy import activate
from strop.serving.server import VLLMServer

REPO = Path(__file__).resolve().parent.parent
console = Console(stderr=True)
QUESTION = "Explain in a few sentences why the sky is blue, and what changes at sunset."
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_lora(base: Path, out: Path, rank: int = 16) -> None:
    """A LoRA of the rank and modules strop trains, with random weights, saved as a strop adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.002)
    model.save_pretrained(out)
    meta = {"name": out.name, "parent": None, "created_at": time.time(), "base_model": str(base),
            "base_checksum": sha256_file(base / MANIFEST)}
    (out / ADAPTER_META).write_text(json.dumps(meta))


def ask(endpoint: Endpoint, model: str, tokens: int, timeout: float = 600.0) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": tokens,
            "temperature": 0.0, "ignore_eos": True}
    return {"url": f"{endpoint.base_url}/chat/completions", "json": body, "timeout": timeout,
            "headers": {"Authorization": f"Bearer {endpoint.api_key}"}}


async def throughput(endpoint: Endpoint, model: str, requests: int, concurrency: int, tokens: int) -> dict:
    """Generated tokens per second over ``requests`` requests, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient() as client:
        async def one() -> int:
            async with gate:
                response = await client.post(**ask(endpoint, model, tokens))
                response.raise_for_status()
                return response.json()["usage"]["completion_tokens"]

        began = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(requests)))
        seconds = time.perf_counter() - began
    return {"model": model, "tokens": sum(counts), "seconds": round(seconds, 2),
            "tokens_per_s": round(sum(counts) / seconds, 2)}


def greedy_text(endpoint: Endpoint, model: str, tokens: int = 24) -> str:
    request = ask(endpoint, model, tokens)
    request["json"]["ignore_eos"] = False
    response = httpx.post(**request)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


class Load:
    """``clients`` workers sending short requests back to back to whichever server ``server.json`` names."""

    def __init__(self, record_path: Path, clients: int, tokens: int = 8):
        self.record_path, self.clients, self.tokens = record_path, clients, tokens
        self.results: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)

    def current(self) -> Endpoint:
        record = json.loads(self.record_path.read_text())
        return Endpoint(f"http://{record['host']}:{record['port']}/v1", record["model"], record["api_key"], True)

    async def run(self) -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=self.clients)) as client:
            async def worker() -> None:
                while not self.stop.is_set():
                    endpoint, began = self.current(), time.perf_counter()
                    try:
                        response = await client.post(**ask(endpoint, endpoint.model, self.tokens))
                        ok, why = response.status_code == 200, response.status_code
                    except httpx.HTTPError as exc:
                        ok, why = False, type(exc).__name__
                    self.results.append({"ok": ok, "why": why, "port": int(endpoint.base_url.split(":")[2][:-3]),
                                         "began": began, "s": time.perf_counter() - began})

            await asyncio.gather(*(worker() for _ in range(self.clients)))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def swap_under_load(record_path: Path, clients: int, switch) -> dict:
    """Run ``switch`` while the load runs; count the requests sent during it and those that failed."""
    with Load(record_path, clients) as load:
        time.sleep(3)  # the load is under way before the switch begins
        began = time.perf_counter()
        switch()
        seconds = time.perf_counter() - began
        time.sleep(3)
    during = [r for r in load.results if began <= r["began"] <= began + seconds]
    failed = [r for r in load.results if not r["ok"]]
    return {"swap_s": round(seconds, 2), "clients": clients, "requests": len(load.results),
            "requests_sent_during_swap": len(during), "failed": len(failed),
            "failures": sorted({str(r["why"]) for r in failed}),
            "ports_served": sorted({r["port"] for r in load.results}),
            "p50_latency_s_during": round(statistics.median(r["s"] for r in during), 3) if during else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--port", type=int, default=8461)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "swap.json")
    args = parser.parse_args()

    models_dir = REPO / ".strop" / "models"
    base = prepare_model(models_dir)
    with tempfile.TemporaryDirectory(prefix="strop-swap-") as tmp:
        settings = load_settings(state_dir=Path(tmp), models_dir=Path(tmp) / "models",
                                 serve=ServeSettings(port=args.port, adapter_mode="merged"))
        (Path(tmp) / "models").mkdir()
        (Path(tmp) / "models" / base.name).symlink_to(base)
        random_lora(base.resolve(), settings.adapters_dir / "v1")
        server = VLLMServer(settings)
        rate = lambda endpoint, model: asyncio.run(  # noqa: E731
            throughput(endpoint, model, args.requests, args.concurrency, args.tokens))
        try:
            console.print("starting server A (base model)")
            endpoint = connect(settings)
            adapter = Registry(settings.adapters_dir).get("v1")
            load_adapter(endpoint, adapter)
            base_before = rate(endpoint, endpoint.model)
            lora = rate(endpoint, adapter.served_name)
            lora_text = greedy_text(endpoint, adapter.served_name)
            console.print(f"base {base_before['tokens_per_s']} tok/s, runtime LoRA {lora['tokens_per_s']} tok/s")

            began = time.perf_counter()
            merged_folder = ensure_merged(settings, "v1")
            merge_s = time.perf_counter() - began
            merged_bytes = sum(p.stat().st_size for p in merged_folder.iterdir())
            console.print(f"merged in {merge_s:.1f} s; promoting under load")
            promote = swap_under_load(server.record_path, args.clients,
                                      lambda: activate(settings, endpoint, "v1", "promote", "bench"))
            endpoint = connect(settings)
            merged = rate(endpoint, endpoint.model)
            merged_text = greedy_text(endpoint, endpoint.model)
            console.print(f"merged {merged['tokens_per_s']} tok/s; rolling back under load")
            rollback = swap_under_load(server.record_path, args.clients,
                                       lambda: activate(settings, endpoint, None, "rollback", "bench"))
            endpoint = connect(settings)
            base_after = rate(endpoint, endpoint.model)
        finally:
            server.recover_swap()
            server.stop()
    base_mean = (base_before["tokens_per_s"] + base_after["tokens_per_s"]) / 2
    result = {
        "bench": "swap", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": vars(args) | {"json": str(args.json)},
        "throughput": {"base_before": base_before, "runtime_lora": lora, "merged": merged, "base_after": base_after},
        "ratio_merged_to_base": round(merged["tokens_per_s"] / base_mean, 3),
        "ratio_runtime_lora_to_base": round(lora["tokens_per_s"] / base_before["tokens_per_s"], 3),
        "merge_s": round(merge_s, 2), "merged_folder_bytes": merged_bytes,
        "greedy_same_text_merged_vs_lora": merged_text == lora_text,
        "promote": promote, "rollback": rollback,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    console.print_json(json.dumps(result))


if __name__ == "__main__":
    main()
