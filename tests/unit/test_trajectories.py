import io
import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from strop.errors import StropError
from strop.trajectories import SCHEMA_VERSION, StepTiming, Trajectory, TrajectoryStore


def make(prompt="What is 2 + 2?", **fields) -> Trajectory:
    messages = [{"role": "user", "content": prompt},
                {"role": "assistant", "content": '{"tool":"final_answer","args":{"answer":"4"}}'}]
    base = {"messages": messages, "status": "answered", "answer": "4", "model": "m",
            "steps": [StepTiming("model", "m", 12.5, prompt_tokens=30, completion_tokens=9)]}
    return Trajectory(prompt=prompt, **(base | fields))


@pytest.fixture
def store(tmp_path):
    s = TrajectoryStore(tmp_path / "t.sqlite")
    yield s
    s.close()


def test_round_trip_keeps_every_field(store):
    t = make(thread_id="th1", scenario="smoke", case_id="c3", errors=["x"], adapter="v2",
             sampling={"temperature": 0.7})
    store.append(t)
    back = store.get(t.id)
    assert back == t
    assert back.completion_tokens == 9 and back.schema_version == SCHEMA_VERSION


def test_get_accepts_a_unique_prefix_and_rejects_unknown(store):
    t = make()
    store.append(t)
    assert store.get(t.id[:6]).id == t.id
    with pytest.raises(StropError, match="matches no trajectory"):
        store.get("zzzz")


def test_query_filters_and_orders(store):
    for i in range(5):
        store.append(make(f"q{i}", created_at=1000.0 + i, scenario="a" if i % 2 else "b",
                          status="answered" if i < 3 else "error"))
    assert [t.prompt for t in store.query(limit=2)] == ["q4", "q3"]
    assert [t.prompt for t in store.query(scenario="a", newest_first=False)] == ["q1", "q3"]
    assert [t.prompt for t in store.query(status="error")] == ["q4", "q3"]
    assert [t.prompt for t in store.query(since=1003.0)] == ["q4", "q3"]
    assert store.count() == 5


def test_records_are_append_only(store):
    t = make()
    store.append(t)
    with pytest.raises(sqlite3.IntegrityError):
        store.append(t)
    with pytest.raises(ValueError, match="status"):
        store.append(make(status="fine"))


def test_export_writes_one_json_record_per_line_oldest_first(store):
    for i in range(3):
        store.append(make(f"q{i}", created_at=10.0 + i))
    buffer = io.StringIO()
    assert store.export_jsonl(buffer) == 3
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [r["prompt"] for r in lines] == ["q0", "q1", "q2"]
    assert lines[0]["messages"][1]["role"] == "assistant" and lines[0]["completion_tokens"] == 9


def test_second_connection_reads_while_the_first_writes(store, tmp_path):
    store.append(make("first"))
    reader = TrajectoryStore(tmp_path / "t.sqlite")
    store.append(make("second"))
    assert {t.prompt for t in reader.query()} == {"first", "second"}
    reader.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "t.sqlite"
    TrajectoryStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StropError, match="newer than this strop"):
        TrajectoryStore(path)


WRITER = """
import sys, time
from strop.trajectories import Trajectory, TrajectoryStore
store = TrajectoryStore(__import__("pathlib").Path(sys.argv[1]))
i = 0
while True:
    store.append(Trajectory(prompt=f"p{i}", messages=[{"role": "user", "content": "x" * 2000}], status="answered"))
    print(i, flush=True)
    i += 1
"""


def test_kill_9_while_appending_leaves_every_committed_run_readable(tmp_path):
    path = tmp_path / "t.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = -1
    deadline = time.monotonic() + 60
    while committed < 30 and time.monotonic() < deadline:
        committed = int(writer.stdout.readline())
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    store = TrajectoryStore(path)
    prompts = {t.prompt for t in store.query()}
    assert {f"p{i}" for i in range(committed + 1)} <= prompts  # every acknowledged append survived
    store.append(make("after the crash"))
    assert store.count() == len(prompts) + 1
