"""The on-disk buffer of MLflow writes: kept through an outage, replayed in order, once."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from orchestrator import write_buffer
from orchestrator.write_buffer import BufferedClient, TrackingBehindError, settle


def _closed_port() -> str:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(autouse=True)
def _fast_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    yield
    write_buffer._ACTIVE.clear()


def test_writes_survive_an_outage_and_replay_in_order_once(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    down = BufferedClient(MlflowClient(_closed_port()), sweep)
    run = down.create_run("0", run_name="t1", tags={"bitsweep.trial_id": "t1"})
    assert run.info.run_id.startswith(write_buffer.PLACEHOLDER)  # no server: a placeholder
    for step in (10, 20):
        down.log_batch(run.info.run_id, metrics=[Metric("val/loss", 1.0 / step, 1, step)])
    artifacts = tmp_path / "tmp-artifacts"
    artifacts.mkdir()
    (artifacts / "error.txt").write_text("details")
    down.log_artifacts(run.info.run_id, str(artifacts), "logs")
    down.set_terminated(run.info.run_id, status="FINISHED")
    assert down.pending == 5 and write_buffer.pending_writes() == 5
    assert write_buffer.has_pending(str(sweep))
    down.close()
    (artifacts / "error.txt").unlink()  # the caller's temporary folder is gone; the copy is not

    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # the store is back
    back = BufferedClient(store, sweep)  # a new process (``bitsweep sync``) reads the journal
    assert back.pending == 5
    assert back.replay() == 5 and back.pending == 0
    runs = store.search_runs(["0"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in store.get_metric_history(runs[0].info.run_id, "val/loss")]
    assert steps == [10, 20]
    assert [a.path for a in store.list_artifacts(runs[0].info.run_id, "logs")] == ["logs/error.txt"]
    assert not write_buffer.has_pending(str(sweep))
    assert BufferedClient(store, sweep).replay() == 0  # nothing is replayed twice


def test_a_refused_write_is_raised_not_buffered(tmp_path: Path) -> None:
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = BufferedClient(store, tmp_path / "sweep")
    run = client.create_run("0")
    client.log_batch(run.info.run_id, tags=[RunTag("a", "1")])
    with pytest.raises(Exception, match=r"does not exist|not found"):
        client.log_batch("0" * 32, tags=[RunTag("a", "1")])
    assert client.pending == 0


def test_settle_names_the_sync_command_while_the_store_is_away(tmp_path: Path) -> None:
    client = write_buffer.buffered(MlflowClient(_closed_port()), str(tmp_path))
    client.create_run("0")
    with pytest.raises(TrackingBehindError, match="bitsweep sync demo-1"):
        settle(str(tmp_path), "bitsweep sync demo-1 --storage x", timeout=0.1)
    assert (tmp_path / write_buffer.BUFFER_DIR / write_buffer.COMPLETE_MARK).exists()
