"""strop installed from its wheel (not the repository) finds its suites, prompts, styles and sample data."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with strop's wheel; its dependencies come from the test environment's
    site-packages through a path file (installing them again would download gigabytes)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(root / "dist"), str(REPO)], check=True, timeout=300)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(python_says(venv, "import sysconfig; print(sysconfig.get_path('purelib'))", root))
    (site / "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    wheel = next((root / "dist").glob("strop-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "-q", str(wheel)], check=True, timeout=300)
    return venv


def python_says(venv: Path, code: str, cwd: Path) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True,
                          cwd=cwd).stdout.strip()


def run(venv: Path, *args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "strop"), *args], capture_output=True, text=True, timeout=900,
                          cwd=cwd, env={**os.environ, **(env or {})})


def test_the_wheel_runs_strop_from_its_own_files(installed, tmp_path):
    where = python_says(installed, "import strop.scenarios; print(strop.scenarios.__file__)", tmp_path)
    assert str(installed) in where, f"strop came from {where}, not from the wheel"
    assert run(installed, "demo", "--help", cwd=tmp_path).returncode == 0


def test_the_wheel_evaluates_the_smoke_suite(installed, live, tmp_path):
    # A state folder of its own (this test process may hold the session's embedded memory), the session's server
    # reached by URL.
    env = {"STROP_STATE_DIR": str(tmp_path / "state"), "STROP_LLM_URL": f"{live.record.url}/v1",
           "STROP_LLM_MODEL": live.record.model, "STROP_LLM_API_KEY": live.record.api_key}
    result = run(installed, "eval", "smoke", "--limit", "1", "--json", str(tmp_path / "run.json"), env=env,
                 cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 1: below the suite's threshold, still graded
    assert (tmp_path / "run.json").exists(), result.stderr[-2000:]
    assert "memory corpus" not in result.stderr, result.stderr[-2000:]  # the sample notes came with the wheel
    assert json.loads((tmp_path / "run.json").read_text()), result.stderr[-2000:]
