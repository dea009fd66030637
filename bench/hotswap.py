"""Adapter hot-swap benchmark: a stream of requests that never stops while a new LoRA adapter loads and while
the registry switches to it.

Client workers send requests back to back, each asking the adapter the registry names active at that moment
(as agents do). Midway, adapter B is hot-loaded while A serves (the load is in flight under the stream),
then the registry switches from A to B the way `strop adapters promote` does it (load, then switch; A stays
loaded for requests still on it). Every request must succeed; the report counts the requests that overlapped
the load and the switch, and their latencies against the ones before. The two adapters are small random
LoRAs for the real base model (their weights do not matter to serving time).

Needs a running server (`strop serve start`, or llm_url):

    .venv/bin/python bench/hotswap.py [--workers 4] [--settle 5] [--json bench/results/hotswap.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from strop.config import load_settings
from strop.serving.adapters import ADAPTER_META, Adapter, Registry, load_adapter, unload_adapter
from strop.serving.endpoint import connect

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
    (out / ADAPTER_META).write_text(json.dumps({"name": out.name, "created_at": time.time()}))
    return Adapter(out.name, out, {"name": out.name})


class Stream:
    """Workers sending requests back to back to whatever adapter the registry names active."""

    def __init__(self, endpoint, registry: Registry, adapters: dict[str, Adapter], workers: int):
        self.endpoint, self.registry, self.adapters = endpoint, registry, adapters
        self.records: list[dict] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.work, daemon=True) for _ in range(workers)]

    def work(self) -> None:
        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"}
        with httpx.Client(timeout=600, headers=headers) as client:
            while not self.stop.is_set():
                began = time.perf_counter()  # before the registry is read: a request sent after a switch began after it
                adapter = self.adapters[self.registry.active]
                try:
                    reply = client.post(f"{self.endpoint.base_url}/chat/completions", json={
                        "model": adapter.served_name, "max_tokens": 4,
                        "messages": [{"role": "user", "content": "Name a colour."}]})
                    ok, detail = reply.status_code == 200, "" if reply.status_code == 200 else reply.text[:200]
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                self.records.append({"adapter": adapter.name, "ok": ok, "began": began,
                                     "ended": time.perf_counter(), "detail": detail})

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        for thread in self.threads:
            thread.join()


def overlapping(records: list[dict], start: float, end: float) -> list[dict]:
    return [r for r in records if r["began"] < end and r["ended"] > start]


def latency(records: list[dict]) -> float | None:
    return round(statistics.median(r["ended"] - r["began"] for r in records), 3) if records else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4, help="clients sending back to back")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of stream before the load and after "
                        "the switch")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "hotswap.json")
    args = parser.parse_args()
    settings = load_settings()
    endpoint = connect(settings, lambda msg: console.print(f"[dim]{msg}[/]"))
    from strop.serving.models import model_dir

    base = model_dir(settings.resolved_models_dir)
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp))
        old, new = random_lora(base, Path(tmp) / "bench-a", 1), random_lora(base, Path(tmp) / "bench-b", 2)
        adapters = {old.name: old, new.name: new}
        load_adapter(endpoint, old)
        registry.set_active(old.name, "promote", "benchmark start")
        try:
            with Stream(endpoint, registry, adapters, args.workers) as stream:
                time.sleep(args.settle)
                load_began = time.perf_counter()
                load_s = load_adapter(endpoint, new)
                load_ended = time.perf_counter()
                registry.set_active(new.name, "promote", "benchmark switch")
                switched = time.perf_counter()
                time.sleep(args.settle)
        finally:
            for adapter in (old, new):
                unload_adapter(endpoint, adapter.served_name)
    records = stream.records
    during_load = overlapping(records, load_began, load_ended)
    through_switch = overlapping(records, load_ended, switched + 0.001)
    before = [r for r in records if r["ended"] <= load_began]
    after = [r for r in records if r["began"] >= switched]
    failed = [r for r in records if not r["ok"]]
    summary = {
        "workers": args.workers, "load_s": round(load_s, 3), "requests": len(records), "failed": len(failed),
        "failures": [r["detail"] for r in failed[:5]],
        "during_load": {"requests": len(during_load), "failed": sum(not r["ok"] for r in during_load),
                        "latency_p50_s": latency(during_load)},
        "through_switch": {"requests": len(through_switch), "failed": sum(not r["ok"] for r in through_switch)},
        "before": {"requests": len(before), "latency_p50_s": latency(before)},
        "after_switch": {"requests": len(after), "on_new_adapter": sum(r["adapter"] == new.name for r in after),
                         "latency_p50_s": latency(after)},
    }
    table = Table(title=f"adapter hot-swap under a stream of {args.workers} back-to-back clients")
    for column in ("load (s)", "requests", "failed", "during load", "p50 before (s)", "p50 during load (s)",
                   "after switch on B"):
        table.add_column(column)
    table.add_row(f"{load_s:.2f}", str(len(records)), str(len(failed)), str(len(during_load)),
                  str(summary["before"]["latency_p50_s"]), str(summary["during_load"]["latency_p50_s"]),
                  f"{summary['after_switch']['on_new_adapter']}/{len(after)}")
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    console.print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
