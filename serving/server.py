"""The embedded vLLM server as a managed process.

vLLM runs in its own process group (it forks an engine process), so stopping it means stopping
the group. A record in ``<state>/serve/server.json`` lets any later strop command find, reuse or
stop it; a lock keeps two commands from starting two servers at once.

The server answers only requests that carry its API key: a random key made at each start and kept in
``server.json`` (mode 0600, readable by this user only), where strop's endpoint reads it.

A swap (:meth:`VLLMServer.swap`) starts a second server on another model folder, points ``server.json``
at it once healthy, lets the old one finish its requests and stops it. ``swap.json`` names both servers
while a swap is under way, so a swap killed half-way is cleaned up by the next command that looks.
A server started beside the main one for a single job (:meth:`VLLMServer.beside`) is named in
``beside.json`` and stopped by the next command that finds its job gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil

from strop.config import Settings
from strop.errors import StropError
from strop.serving.merge import policy_model_dir
from strop.serving.models import SMOLLM2

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
    api_key: str = ""
    policy: str | None = None  # the adapter merged into model_dir (None: the base model, or runtime LoRAs)

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
        self.swap_path = self.dir / "swap.json"
        self.beside_path = self.dir / "beside.json"
        self.log_path = self.dir / "vllm.log"
        self._child: subprocess.Popen | None = None

    # -- finding ---------------------------------------------------------------------------
    def running(self) -> ServerRecord | None:
        """The recorded server if its process is still alive; a stale record is removed."""
        self.recover_swap()
        self.recover_beside()
        record = _read_record(self.record_path)
        if record is None:
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
        """Return a healthy server, reusing the one already running for this state folder.

        A new server serves the current policy: the base model, or in ``merged`` mode the active adapter's
        merged model folder.
        """
        progress = progress or (lambda _msg: None)
        self.dir.mkdir(parents=True, exist_ok=True)
        warn_if_exposed(self.serve.host)
        with self._start_lock():
            record = self.running()
            if record is not None:
                progress(f"reusing vLLM (pid {record.pid}) at {record.url}")
                self._wait_healthy(record, progress)
                return record
            _require_vllm()
            self._require_free_port()
            progress("checking the model")
            model_dir, policy = policy_model_dir(self.settings)
            try:  # recorded from the start, so a later command finds (and can stop) a server whose starter died
                return self._launch(model_dir, policy, self.serve.port, progress, on_spawn=self._write_record)
            except BaseException:
                self.record_path.unlink(missing_ok=True)
                raise

    def _write_record(self, record: ServerRecord) -> None:
        write_private(self.record_path, json.dumps(asdict(record), indent=2))

    def command(self, model_dir: Path, lora: bool = True) -> list[str]:
        """The vLLM command line; ``lora=False`` for a server that serves one model and never loads an adapter
        (the CPU build's LoRA layers cost about a tenth of every step even with no adapter loaded)."""
        s = self.serve
        cmd = [
            sys.executable, "-m", ENTRYPOINT,
            "--model", str(model_dir),
            "--served-model-name", SMOLLM2.name,
            "--host", s.host,
            "--port", str(s.port),
            "--max-model-len", str(s.max_model_len),
            "--block-size", str(s.block_size),
            "--dtype", s.dtype,
            "--distributed-executor-backend", s.executor,
            *(["--enable-lora", "--max-lora-rank", str(s.max_lora_rank), "--max-loras", str(s.max_loras)] if lora
              else []),
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
            # Schema-guided actions must not wander into runs of free whitespace until max_tokens.
            "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
        ]
        if s.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + list(s.extra_args)

    def environment(self, api_key: str = "") -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "VLLM_API_KEY": api_key,  # in the environment, not on the command line that `ps` shows
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",  # adapters are hot-loaded, never a restart
            "VLLM_CPU_KVCACHE_SPACE": str(self.serve.kv_cache_gib),
            # The CPU build runs a "uni" executor only with this off (else it switches to "mp")
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0" if self.serve.executor == "uni" else "1",
            "VLLM_NO_USAGE_STATS": "1",
            "HF_HUB_OFFLINE": "1",  # models come from the state folder, never from a hub
            "TRANSFORMERS_OFFLINE": "1",
        })
        return env

    def _launch(self, model_dir: Path, policy: str | None, port: int, progress: Progress,
                on_spawn: Callable[[ServerRecord], None] | None = None, lora: bool = True) -> ServerRecord:
        """Start vLLM on ``model_dir`` at ``port`` and wait until healthy; a failure leaves no process behind."""
        progress(f"starting vLLM on {self.serve.host}:{port} (log: {self.log_path})")
        api_key = secrets.token_urlsafe(24)
        command = self.command(model_dir, lora)
        command[command.index("--port") + 1] = str(port)
        log_path = self.log_path if port == self.serve.port else self.dir / f"vllm-{port}.log"
        with log_path.open("wb") as log:
            self._child = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.environment(api_key), start_new_session=True,
            )
        record = ServerRecord(
            pid=self._child.pid, host=self.serve.host, port=port, model=SMOLLM2.name,
            model_dir=str(model_dir), log=str(log_path), started_at=time.time(), api_key=api_key,
            policy=policy,
        )
        try:
            with _sigterm_as_interrupt():
                if on_spawn:
                    on_spawn(record)
                self._wait_healthy(record, progress)
        except BaseException:  # Ctrl-C and kill included: never leave a half-started server behind
            self._terminate(record.pid)
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
                    detail=self.log_tail(path=Path(record.log)),
                )
            if time.monotonic() > deadline:
                raise StropError(
                    f"vLLM did not become healthy within {self.serve.start_timeout_s:.0f} s.",
                    fix="Raise serve.start_timeout_s (STROP_SERVE__START_TIMEOUT_S) on a slow machine.",
                    detail=self.log_tail(path=Path(record.log)),
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

    # -- swapping (blue/green) --------------------------------------------------------------
    def swap(self, model_dir: Path, policy: str | None, progress: Progress | None = None) -> ServerRecord | None:
        """Serve ``model_dir`` from a new server, switch ``server.json`` to it once healthy, drain and stop the old.

        Returns the new record, or None when no server runs (the next start serves ``model_dir``). When the new
        server fails to start, the old one keeps serving and ``server.json`` is unchanged.
        """
        progress = progress or (lambda _msg: None)
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._start_lock():
            old = self.running()
            if old is None:
                return None
            if Path(old.model_dir) == Path(model_dir) and old.policy == policy:
                return old
            port = self._other_port(old)
            intent = {"swapper": os.getpid(), "old": asdict(old)}
            write_private(self.swap_path, json.dumps(intent))

            def note_new(record: ServerRecord) -> None:  # from here a kill leaves a server swap.json names
                write_private(self.swap_path, json.dumps(intent | {"new": asdict(record)}))

            try:
                new = self._launch(model_dir, policy, port, progress, on_spawn=note_new)
            except BaseException:
                self.swap_path.unlink(missing_ok=True)
                raise
            self._write_record(new)  # from here clients find the new server
        progress(f"draining vLLM (pid {old.pid})")
        self.drain(old)
        self._terminate(old.pid)
        self.swap_path.unlink(missing_ok=True)
        return new

    @contextlib.contextmanager
    def beside(self, model_dir: Path, policy: str | None) -> Iterator[ServerRecord]:
        """A second server on ``model_dir`` for one job (the gate's candidate, merged; a round's rollouts), stopped
        when it ends. It serves that model alone: no runtime LoRA, which makes it faster.

        ``server.json`` keeps naming the server clients use; ``beside.json`` names this one, so a later command
        stops it if the job was killed (:meth:`recover_beside`).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._start_lock():
            main = self.running()
            port = self._other_port(main) if main else self.serve.port + 1
            try:
                new = self._launch(model_dir, policy, port, lambda _msg: None, lora=False, on_spawn=lambda record:
                                   write_private(self.beside_path, json.dumps({"owner": os.getpid(),
                                                                               "server": asdict(record)})))
            except BaseException:
                self.beside_path.unlink(missing_ok=True)
                raise
        try:
            yield new
        finally:
            self._terminate(new.pid)
            self.beside_path.unlink(missing_ok=True)

    def recover_beside(self) -> None:
        """Stop a server :meth:`beside` started for a job whose process is gone."""
        try:
            record = json.loads(self.beside_path.read_text())
        except (OSError, ValueError):
            return
        if psutil.pid_exists(record.get("owner", -1)):
            return  # its job is still running
        pid = (record.get("server") or {}).get("pid")
        if pid and _is_vllm(pid):
            self._terminate(pid)
        self.beside_path.unlink(missing_ok=True)

    def _other_port(self, old: ServerRecord) -> int:
        """A free port for the second server: serve.port and the one above take turns."""
        base = self.serve.port
        for port in (base, base + 1, base + 2):
            if port != old.port and _port_free(self.serve.host, port):
                return port
        raise StropError(f"No free port near {base} on {self.serve.host} for the second server of a swap.",
                         fix=f"Free port {base + 1}, or choose another serve.port.")

    def drain(self, record: ServerRecord, quiet_s: float = 1.0) -> None:
        """Wait until the old server has no request running or waiting (and none arrived for ``quiet_s``)."""
        deadline = time.monotonic() + self.serve.drain_timeout_s
        quiet_since = None
        while time.monotonic() < deadline and self._alive(record.pid):
            if requests_in_flight(record):
                quiet_since = None
            else:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= quiet_s:
                    return
            time.sleep(0.2)

    def recover_swap(self) -> None:
        """Stop what a killed swap left behind: whichever of its servers ``server.json`` does not name."""
        try:
            intent = json.loads(self.swap_path.read_text())
        except (OSError, ValueError):
            return
        swapper = intent.get("swapper", -1)
        if swapper != os.getpid() and psutil.pid_exists(swapper):
            return  # that swap is still under way
        current = _read_record(self.record_path)
        for side in ("new", "old"):
            pid = (intent.get(side) or {}).get("pid")
            if pid and (current is None or pid != current.pid) and _is_vllm(pid):
                self._terminate(pid)
        self.swap_path.unlink(missing_ok=True)

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
    def log_tail(self, lines: int = LOG_TAIL_LINES, path: Path | None = None) -> str:
        """The end of ``path``, by default the running server's log (after a swap it may be another file)."""
        if path is None:
            record = _read_record(self.record_path)
            path = Path(record.log) if record else self.log_path
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return f"--- last {min(lines, len(text))} lines of {path} ---\n" + "\n".join(text[-lines:])

    def last_log_line(self) -> str:
        tail = self.log_tail(1).splitlines()
        return tail[-1][:100] if len(tail) > 1 else ""


def _read_record(path: Path) -> ServerRecord | None:
    try:
        return ServerRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a file only this user can read (it holds the server's API key)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def warn_if_exposed(host: str) -> None:
    """Serving beyond this machine is allowed, but said out loud: the API key is then all that guards it."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        warnings.warn(f"serve.host is {host}: the embedded vLLM is reachable from other machines, guarded only "
                      "by the API key in server.json. Use 127.0.0.1 unless you mean to share it.",
                      UserWarning, stacklevel=2)


def requests_in_flight(record: ServerRecord) -> float:
    """Requests running or waiting on a vLLM server, from its Prometheus metrics (0 when it cannot say)."""
    try:
        text = httpx.get(f"{record.url}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return total


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
