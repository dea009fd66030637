"""The embedded vLLM server as a managed process.

vLLM runs in its own process group (it forks an engine process), so stopping it means stopping
the group. A record in ``<state>/serve/server.json`` lets any later strop command find, reuse or
stop the server; a lock keeps two commands from starting two servers at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil

from strop.config import Settings
from strop.errors import StropError
from strop.files import write_atomic
from strop.serving.models import SMOLLM2, prepare_model

ENTRYPOINT = "vllm.entrypoints.openai.api_server"
LOG_TAIL_LINES = 25
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ServerRecord:
    """What a later command needs to find, reuse or stop a server."""

    pid: int
    host: str
    port: int
    model: str
    model_dir: str
    log: str
    started_at: float

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


class VLLMServer:
    """Start, find, health-check and stop the embedded vLLM server for one state folder."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.serve = settings.serve
        self.dir = settings.serve_dir
        self.record_path = self.dir / "server.json"
        self.log_path = self.dir / "vllm.log"
        self._child: subprocess.Popen | None = None

    # -- finding ---------------------------------------------------------------------------
    def running(self) -> ServerRecord | None:
        """The recorded server if its process is still alive; a stale record is removed."""
        try:
            record = ServerRecord(**json.loads(self.record_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if _is_vllm(record.pid):
            return record
        self.record_path.unlink(missing_ok=True)
        return None

    def healthy(self, record: ServerRecord) -> bool:
        try:
            return httpx.get(f"{record.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    # -- starting --------------------------------------------------------------------------
    def start(self, progress: Progress | None = None) -> ServerRecord:
        """Return a healthy server, reusing the one already running for this state folder."""
        progress = progress or (lambda _msg: None)
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._start_lock():
            record = self.running()
            if record is not None:
                progress(f"reusing vLLM (pid {record.pid}) at {record.url}")
                self._wait_healthy(record, progress)
                return record
            _require_vllm()
            self._require_free_port()
            progress("checking the model")
            model_dir = prepare_model(self.settings.resolved_models_dir)
            return self._launch(model_dir, progress)

    def command(self, model_dir: Path) -> list[str]:
        s = self.serve
        cmd = [
            sys.executable, "-m", ENTRYPOINT,
            "--model", str(model_dir),
            "--served-model-name", SMOLLM2.name,
            "--host", s.host,
            "--port", str(s.port),
            "--max-model-len", str(s.max_model_len),
            "--dtype", s.dtype,
            "--enable-lora", "--max-lora-rank", str(s.max_lora_rank), "--max-loras", str(s.max_loras),
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
            # Schema-guided actions must not wander into runs of free whitespace until max_tokens.
            "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
        ]
        if s.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + list(s.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",  # adapters are hot-loaded, never a restart
            "VLLM_CPU_KVCACHE_SPACE": str(self.serve.kv_cache_gib),
            "VLLM_NO_USAGE_STATS": "1",
            "HF_HUB_OFFLINE": "1",  # models come from the state folder, never from a hub
            "TRANSFORMERS_OFFLINE": "1",
        })
        return env

    def _launch(self, model_dir: Path, progress: Progress) -> ServerRecord:
        progress(f"starting vLLM on {self.serve.host}:{self.serve.port} (log: {self.log_path})")
        with self.log_path.open("wb") as log:
            self._child = subprocess.Popen(
                self.command(model_dir), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.environment(), start_new_session=True,
            )
        record = ServerRecord(
            pid=self._child.pid, host=self.serve.host, port=self.serve.port, model=SMOLLM2.name,
            model_dir=str(model_dir), log=str(self.log_path), started_at=time.time(),
        )
        write_atomic(self.record_path, json.dumps(asdict(record), indent=2))
        try:
            with _sigterm_as_interrupt():
                self._wait_healthy(record, progress)
        except BaseException:  # Ctrl-C and kill included: never leave a half-started server behind
            self._terminate(record.pid)
            self.record_path.unlink(missing_ok=True)
            raise
        return record

    def _wait_healthy(self, record: ServerRecord, progress: Progress) -> None:
        deadline = time.monotonic() + self.serve.start_timeout_s
        started = time.monotonic()
        while not self.healthy(record):
            if not self._alive(record.pid):
                code = self._child.returncode if self._child else "unknown"
                raise StropError(
                    f"vLLM exited (code {code}) while starting.",
                    fix=f"Read the log below (full log: {record.log}); check the [serve] settings.",
                    detail=self.log_tail(),
                )
            if time.monotonic() > deadline:
                raise StropError(
                    f"vLLM did not become healthy within {self.serve.start_timeout_s:.0f} s.",
                    fix="Raise serve.start_timeout_s (STROP_SERVE__START_TIMEOUT_S) on a slow machine.",
                    detail=self.log_tail(),
                )
            progress(f"waiting for vLLM ({time.monotonic() - started:.0f} s): {self.last_log_line()}")
            time.sleep(0.5)

    def _require_free_port(self) -> None:
        host, port = self.serve.host, self.serve.port
        if _port_free(host, port):
            return
        raise StropError(
            f"Port {port} on {host} is already in use{_port_owner(port)}.",
            fix=f"Stop that program, or choose another port: STROP_SERVE__PORT={port + 1} "
            "(or [serve] port in strop.toml).",
        )

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        with (self.dir / "start.lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- stopping --------------------------------------------------------------------------
    def stop(self) -> ServerRecord | None:
        """Stop the recorded server and every process it started; return what was stopped."""
        record = self.running()
        if record is not None:
            self._terminate(record.pid)
        self.record_path.unlink(missing_ok=True)
        return record

    def _terminate(self, pgid: int, grace_s: float = 20.0) -> None:
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            deadline = time.monotonic() + wait_s
            while live_group_members(pgid, self._reap) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not live_group_members(pgid, self._reap):
                return

    def _reap(self) -> None:
        if self._child is not None:
            self._child.poll()

    def _alive(self, pid: int) -> bool:
        self._reap()
        return _is_vllm(pid)

    # -- logs ------------------------------------------------------------------------------
    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return f"--- last {min(lines, len(text))} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])

    def last_log_line(self) -> str:
        tail = self.log_tail(1).splitlines()
        return tail[-1][:100] if len(tail) > 1 else ""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so cleanup runs (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise StropError(
            "vLLM is not installed in this environment, so strop cannot start its embedded server.",
            fix="Run `make setup` (CPU), install CUDA `vllm` (GPU), or set STROP_LLM_URL to a running server.",
        )


def _is_vllm(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and ENTRYPOINT in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def live_group_members(pgid: int, reap: Callable[[], None] | None = None) -> list[int]:
    """Live (non-zombie) processes in a process group; ``reap`` first collects our own exited child."""
    if reap:
        reap()
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
    return members


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _port_owner(port: int) -> str:
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f" by {proc.name()} (pid {conn.pid})"
    return ""
