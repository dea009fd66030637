"""Adapter hot-swap benchmark: load time of a new LoRA adapter, and failed requests during the swap.

Requests stream in on adapter A (the active one) while adapter B is hot-loaded and promoted the way
`strop adapters promote` does it (load, then switch; A stays loaded for requests still on it); the
requests after the switch go to B. Every request must succeed. The two adapters are small random
LoRAs for the real base model (their weights do not matter to serving time).

    .venv/bin/python bench/hotswap.py [--requests 64] [--json bench/results/hotswap.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from strop.config import load_settings
from strop.serving.adapters import ADAPTER_META, Adapter, load_adapter, unload_adapter
from strop.serving.endpoint import connect
from strop.serving.models import model_dir

REPO = Path(__file__).resolve().parent.parent
console = Console(stderr=True)


def random_lora(base: Path, out: Path, seed: int) -> Adapter:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    model.save_pretrained(out)
    (out / ADAPTER_META).write_text(json.dumps({"name": out.name}))
    return Adapter(out.name, out, {})


async def ask(client: httpx.AsyncClient, base_url: str, model: str, outcomes: list[dict]) -> None:
    began = time.perf_counter()
    try:
        reply = await client.post(f"{base_url}/chat/completions", timeout=600, json={
            "model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Name a colour."}]})
        ok, detail = reply.status_code == 200, "" if reply.status_code == 200 else reply.text[:200]
    except httpx.HTTPError as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    outcomes.append({"model": model, "ok": ok, "latency_s": time.perf_counter() - began, "detail": detail})


async def swap_under_load(endpoint, old: str, new: Adapter, requests: int) -> dict:
    outcomes: list[dict] = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=requests)) as client:
        before = [asyncio.create_task(ask(client, endpoint.base_url, old, outcomes)) for _ in range(requests // 2)]
        await asyncio.sleep(0.5)  # the first half is in flight on the old adapter
        began = time.perf_counter()
        load_s = await asyncio.to_thread(load_adapter, endpoint, new)
        swap_s = time.perf_counter() - began
        after = [asyncio.create_task(ask(client, endpoint.base_url, new.name, outcomes))
                 for _ in range(requests - requests // 2)]
        await asyncio.gather(*before, *after)
    return {"load_s": load_s, "swap_s": swap_s, "outcomes": outcomes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "hotswap.json")
    args = parser.parse_args()
    settings = load_settings()
    endpoint = connect(settings, lambda msg: console.print(f"[dim]{msg}[/]"))
    base = model_dir(settings.resolved_models_dir)
    with tempfile.TemporaryDirectory() as tmp:
        old, new = random_lora(base, Path(tmp) / "bench-a", 1), random_lora(base, Path(tmp) / "bench-b", 2)
        load_adapter(endpoint, old)
        try:
            result = asyncio.run(swap_under_load(endpoint, old.name, new, args.requests))
        finally:
            for name in (old.name, new.name):
                unload_adapter(endpoint, name)
    outcomes = result.pop("outcomes")
    failed = [o for o in outcomes if not o["ok"]]
    summary = {**result, "requests": len(outcomes), "failed": len(failed), "failures": failed[:5],
               "latency_p50_s": statistics.median(o["latency_s"] for o in outcomes)}
    table = Table(title=f"adapter hot-swap under {args.requests} concurrent requests")
    for column in ("load (s)", "requests", "failed", "p50 latency (s)"):
        table.add_column(column)
    table.add_row(f"{summary['load_s']:.2f}", str(summary["requests"]), str(summary["failed"]),
                  f"{summary['latency_p50_s']:.1f}")
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
