"""Blue/green swaps, the server's API key and the merge's failure modes, against a stand-in vLLM process
(tests/unit/fake_vllm.py: a real HTTP server in its own process group; real vLLM is in bench/swap.py)."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from strop.config import load_settings
from strop.errors import StropError
from strop.serving.adapters import ADAPTER_META, Registry
from strop.serving.endpoint import Endpoint, connect
from strop.serving.merge import merge_adapter, merged_dir, prune_merged
from strop.serving.policy import activate
from strop.serving.server import ENTRYPOINT, VLLMServer, warn_if_exposed
from tests.conftest import REPO, free_port

FAKE = Path(__file__).with_name("fake_vllm.py")


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("STROP_SERVE__PORT", str(free_port()))
    monkeypatch.setenv("STROP_SERVE__START_TIMEOUT_S", "20")
    monkeypatch.setenv("STROP_SERVE__DRAIN_TIMEOUT_S", "5")
    base = tmp_path / "base"
    base.mkdir()
    for module in ("server", "endpoint"):  # the base model's conversion is not what these tests are about
        monkeypatch.setattr(f"strop.serving.{module}.policy_model_dir", lambda _settings, verify=True: (base, None))
    monkeypatch.setattr(VLLMServer, "command", fake_command)
    return load_settings()


def fake_command(self, model_dir, lora=True):
    return [sys.executable, str(FAKE), "--port", str(self.serve.port), "--model", str(model_dir), ENTRYPOINT]


def group_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def server(settings):
    server = VLLMServer(settings)
    yield server
    server.recover_swap()
    server.stop()


def test_the_server_needs_the_random_key_kept_in_a_private_server_json(server):
    record = server.start()
    assert len(record.api_key) >= 24
    assert stat.S_IMODE(server.record_path.stat().st_mode) == 0o600
    assert json.loads(server.record_path.read_text())["api_key"] == record.api_key
    assert record.api_key not in " ".join(psutil.Process(record.pid).cmdline())
    assert httpx.get(f"{record.base_url}/models").status_code == 401
    endpoint = connect(server.settings)
    assert endpoint.api_key == record.api_key
    assert httpx.get(f"{endpoint.base_url}/models",
                     headers={"Authorization": f"Bearer {endpoint.api_key}"}).status_code == 200


def test_serving_beyond_loopback_is_warned_about():
    with pytest.warns(UserWarning, match="reachable from other machines"):
        warn_if_exposed("0.0.0.0")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_exposed("127.0.0.1")
        warn_if_exposed("localhost")
        warn_if_exposed("::1")


def test_a_swap_switches_to_the_new_server_and_stops_the_old(server, tmp_path):
    old = server.start()
    new = server.swap(tmp_path / "merged-v1", "v1")
    assert new.pid != old.pid and new.port != old.port and new.policy == "v1"
    assert server.running() == new and not server.swap_path.exists()
    assert not group_alive(old.pid)
    assert server.swap(tmp_path / "merged-v1", "v1") == new  # already serving it: nothing to do


def test_a_new_server_that_never_gets_healthy_leaves_the_old_one_serving(server, tmp_path, monkeypatch):
    old = server.start()
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    with pytest.raises(StropError, match="exited"):
        server.swap(tmp_path / "merged-v1", "v1")
    assert server.running() == old and server.healthy(old)
    assert not server.swap_path.exists()
    assert [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path / "merged-v1") in
            " ".join(p.info["cmdline"] or [])] == []


SWAPPER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from strop.config import load_settings
    from strop.serving.server import VLLMServer
    sys.path.insert(0, {repo!r})
    from tests.unit.test_swap import fake_command
    VLLMServer.command = fake_command
    VLLMServer(load_settings()).swap(Path({target!r}), "v1")
""")


def test_a_swap_killed_half_way_leaves_the_old_server_and_no_stray_process(server, tmp_path, monkeypatch):
    old = server.start()
    monkeypatch.setenv("FAKE_VLLM_DELAY", "30")  # the new server is still starting when the kill comes
    target = str(tmp_path / "merged-v1")
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER.format(repo=str(REPO), target=target)],
                               env=os.environ.copy())
    deadline = time.monotonic() + 20
    while "new" not in json.loads(server.swap_path.read_text() if server.swap_path.exists() else "{}"):
        assert time.monotonic() < deadline, "the swap never started its server"
        time.sleep(0.1)
    new_pid = json.loads(server.swap_path.read_text())["new"]["pid"]
    swapper.send_signal(signal.SIGKILL)
    swapper.wait()
    assert group_alive(new_pid)  # left behind by the kill ...
    assert server.running() == old  # ... until the next command looks
    assert not group_alive(new_pid) and not server.swap_path.exists() and server.healthy(old)


def test_a_server_beside_the_main_one_serves_one_job_and_stops_after_it(server, tmp_path):
    main = server.start()
    with server.beside(tmp_path / "merged-v2", "v2") as side:
        assert side.port != main.port and side.policy == "v2" and server.healthy(side)
        assert server.running() == main  # clients keep using the main server
        assert json.loads(server.beside_path.read_text())["server"]["pid"] == side.pid
    assert not group_alive(side.pid) and not server.beside_path.exists() and server.healthy(main)


def test_the_gate_asks_a_merged_candidate_on_a_server_of_its_own(server, tmp_path, monkeypatch):
    from strop.serving.policy import candidate_endpoint

    main = server.start()
    make_adapter(server.settings.adapters_dir, "v1")
    monkeypatch.setattr("strop.serving.policy.ensure_merged", lambda _settings, name: tmp_path / f"merged-{name}")
    current = connect(server.settings)
    with candidate_endpoint(server.settings, current, "v1") as endpoint:
        assert endpoint.base_url != current.base_url and endpoint.model_dir == str(tmp_path / "merged-v1")
        assert endpoint.model_for("v1") == endpoint.model  # merged: asked as the plain model it serves
        assert connect(server.settings) == current  # everyone else still asks the current server
        side = server_at(json.loads(server.beside_path.read_text())["server"])
    assert not group_alive(side.pid) and server.running() == main


def test_an_evaluation_serves_an_adapter_of_another_model_merged_beside_and_loads_the_others(
        server, tmp_path, monkeypatch):
    from strop.serving.policy import evaluation_endpoint

    main = server.start()
    current, said, loaded = connect(server.settings), [], []
    earlier = make_adapter(server.settings.adapters_dir, "v1")  # trained on another policy than the one served
    meta = json.loads((earlier / ADAPTER_META).read_text())
    (earlier / ADAPTER_META).write_text(json.dumps({**meta, "base_model": str(tmp_path / "merged-v0")}))
    make_adapter(server.settings.adapters_dir, "v2")  # trained on the served model
    monkeypatch.setattr("strop.serving.policy.ensure_merged", lambda _settings, name: tmp_path / f"merged-{name}")
    # stands in for loading a runtime LoRA into the serving server
    monkeypatch.setattr("strop.serving.policy.resolve_adapter", lambda _s, _e, name: loaded.append(name) or name)
    with evaluation_endpoint(server.settings, current, "v1", said.append) as (adapter, endpoint):
        assert adapter == "v1" and endpoint.base_url != current.base_url and endpoint.policy == "v1"
        assert endpoint.model_dir == str(tmp_path / "merged-v1") and connect(server.settings) == current
    assert server.running() == main and not server.beside_path.exists() and "beside" in said[-1] and not loaded
    with evaluation_endpoint(server.settings, current, "v2") as (adapter, endpoint):
        assert adapter == "v2" and endpoint == current and loaded == ["v2"]
    with pytest.raises(StropError, match="v9"), evaluation_endpoint(server.settings, current, "v9"):
        pass


BESIDE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from strop.config import load_settings
    from strop.serving.server import VLLMServer
    sys.path.insert(0, {repo!r})
    from tests.unit.test_swap import fake_command
    VLLMServer.command = fake_command
    with VLLMServer(load_settings()).beside(Path({target!r}), "v2"):
        time.sleep(60)
""")


def test_a_server_beside_a_killed_job_is_stopped_by_the_next_command(server, tmp_path):
    main = server.start()
    job = subprocess.Popen([sys.executable, "-c", BESIDE.format(repo=str(REPO), target=str(tmp_path / "m"))],
                           env=os.environ.copy())
    deadline = time.monotonic() + 20
    while not server.beside_path.exists() or not server.healthy(
            server_at(json.loads(server.beside_path.read_text())["server"])):
        assert time.monotonic() < deadline, "the job never started its server"
        time.sleep(0.1)
    side_pid = json.loads(server.beside_path.read_text())["server"]["pid"]
    assert server.running() == main and group_alive(side_pid)  # its job still runs: left alone
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert server.running() == main
    assert not group_alive(side_pid) and not server.beside_path.exists()


def server_at(record: dict):
    from strop.serving.server import ServerRecord

    return ServerRecord(**record)


def make_adapter(root: Path, name: str, parent=None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"not a tensor file")
    (folder / ADAPTER_META).write_text(json.dumps({"name": name, "parent": parent, "created_at": 1.0}))
    return folder


def test_a_merge_that_fails_promotes_nothing_and_keeps_the_old_server(server, tmp_path, monkeypatch):
    old = server.start()
    make_adapter(server.settings.adapters_dir, "v1")
    monkeypatch.setattr("strop.serving.merge.base_of", lambda _settings, _adapter: tmp_path / "base")
    endpoint = Endpoint(old.base_url, old.model, old.api_key, managed=True)
    with pytest.raises(StropError, match="Merging adapter v1 .* failed"):
        activate(server.settings, endpoint, "v1", "promote", "round 1")
    assert Registry(server.settings.adapters_dir).active is None
    assert server.running() == old
    assert list((server.settings.resolved_models_dir / "merged").iterdir()) == []


def test_merge_leaves_no_partial_folder(tmp_path):
    folder = make_adapter(tmp_path / "adapters", "v1")
    adapter = Registry(tmp_path / "adapters").get("v1")
    assert adapter.path == folder
    with pytest.raises(StropError, match="failed"):
        merge_adapter(adapter, tmp_path / "no-such-base", tmp_path / "merged" / "v1-x")
    assert list((tmp_path / "merged").iterdir()) == []


def test_retention_removes_merged_folders_no_kept_adapter_needs(tmp_path):
    settings = load_settings(state_dir=tmp_path / "state")
    for name in ("v1", "v2", "v3"):
        make_adapter(settings.adapters_dir, name)
    registry = Registry(settings.adapters_dir)
    folders = {name: merged_dir(settings, registry.get(name)) for name in ("v1", "v2", "v3")}
    meta = json.loads((settings.adapters_dir / "v3" / ADAPTER_META).read_text())
    (settings.adapters_dir / "v3" / ADAPTER_META).write_text(json.dumps(meta | {"base_model": str(folders["v2"])}))
    for folder in folders.values():
        folder.mkdir(parents=True)
    stale = folders["v1"].parent / ".v9-abc.partial-999999999"
    stale.mkdir()
    assert prune_merged(settings, {"v3"}) == 1
    assert sorted(p.name for p in folders["v1"].parent.iterdir()) == sorted(
        [folders["v2"].name, folders["v3"].name])  # v3's own and the one it was trained on


def test_rollouts_sample_from_a_copy_of_the_policy_served_beside_in_the_rollout_dtype(server, monkeypatch):
    from strop.serving.policy import rollout_endpoint

    started = []
    monkeypatch.setattr(VLLMServer, "command", lambda self, model_dir, lora=True: started.append(
        (self.serve.dtype, lora)) or fake_command(self, model_dir))
    main = server.start()
    current = connect(server.settings)

    def rolling(dtype: str, mode: str = "merged"):
        return server.settings.model_copy(update={
            "improve": server.settings.improve.model_copy(update={"rollout_dtype": dtype}),
            "serve": server.settings.serve.model_copy(update={"adapter_mode": mode})})

    with rollout_endpoint(rolling("bfloat16"), current) as endpoint:
        assert endpoint.base_url != current.base_url and endpoint.policy == current.policy
        assert connect(server.settings) == current  # chats keep the serving server and its dtype
        side = server_at(json.loads(server.beside_path.read_text())["server"])
    assert started == [("float32", True), ("bfloat16", False)]  # it serves the policy alone: no runtime LoRA
    assert not group_alive(side.pid) and server.running() == main
    for same in (rolling("serve"), rolling("bfloat16", "lora")):  # nothing started
        with rollout_endpoint(same, current) as endpoint:
            assert endpoint == current
    assert len(started) == 2
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")  # a copy that does not start: the serving server rolls out
    said = []
    with rollout_endpoint(rolling("bfloat16"), current, said.append) as endpoint:
        assert endpoint == current and "did not start" in said[-1]
    assert not server.beside_path.exists() and server.running() == main and server.healthy(main)


def test_both_gate_sides_are_asked_on_servers_beside_with_ngram_speculation(server, monkeypatch):
    from strop.serving.policy import candidate_endpoint, current_gate_endpoint

    started = []
    monkeypatch.setattr(VLLMServer, "command", lambda self, model_dir, lora=True: started.append(
        (list(self.serve.extra_args), lora)) or fake_command(self, model_dir))
    main = server.start()
    current = connect(server.settings)
    make_adapter(server.settings.adapters_dir, "v1")
    monkeypatch.setattr("strop.serving.policy.ensure_merged", lambda _settings, name: Path(current.model_dir))

    def gating(tokens: int, mode: str = "merged"):
        return server.settings.model_copy(update={
            "improve": server.settings.improve.model_copy(update={"gate_ngram": tokens}),
            "serve": server.settings.serve.model_copy(update={"adapter_mode": mode})})

    with current_gate_endpoint(gating(4), current) as endpoint:
        assert endpoint.base_url != current.base_url and endpoint.policy == current.policy
        assert connect(server.settings) == current  # chats keep the serving server, which never speculates
    with candidate_endpoint(gating(4), current, "v1") as endpoint:
        assert endpoint.base_url != current.base_url and endpoint.policy == "v1"
    speculating = [args for args, lora in started[1:]]
    assert started[0] == ([], True) and [lora for _, lora in started[1:]] == [False, False]
    assert all(args[0] == "--speculative-config" and json.loads(args[1])["num_speculative_tokens"] == 4
               for args in speculating)
    for same in (gating(0), gating(4, "lora")):  # no speculation, or not merged: the serving server answers
        with current_gate_endpoint(same, current) as endpoint:
            assert endpoint == current
    with candidate_endpoint(gating(0), current, "v1"):
        pass
    assert started[-1] == ([], False) and len(started) == 4
    assert server.running() == main and not server.beside_path.exists()
