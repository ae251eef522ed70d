"""The reaper's rules for runs whose message or worker was lost, on the store itself (SQLite)."""

from __future__ import annotations

import datetime as dt

from flask import Flask
from flask.testing import FlaskClient

from tests.api_support import Project
from tests.service_support import TINY_SPEC


def _submit(client: FlaskClient, project: Project) -> str:
    response = client.post("/api/v1/runs", json={"spec": TINY_SPEC}, headers=project.headers)
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


def test_a_requeued_message_that_is_lost_again_is_sent_again(api_app: Flask, client: FlaskClient,
                                                             project: Project) -> None:
    """A run the reaper sent again whose new message was popped by a worker killed before recording it: a run
    submitted after that second sending has started, so (the queue being first in, first out) the message was
    taken; the run is sent a third time instead of waiting in ``queued`` for the visibility timeout."""
    from gradcheck_service.service.extensions import store
    from gradcheck_service.service.store.lifecycle import claim_run, reap_stale_runs
    from gradcheck_service.service.store.models import Run

    lost = _submit(client, project)
    with api_app.app_context():
        session = store.session()
        assert claim_run(session, lost, "w:1").outcome == "run"  # started once, then its worker vanished
        session.query(Run).filter_by(id=lost).update({"heartbeat_at": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)})
        session.commit()
        assert reap_stale_runs(session, 60) == [lost]  # sent again
        assert session.get(Run, lost).progress_stage == "requeued"  # type: ignore[union-attr]
        assert reap_stale_runs(session, 60) == []  # nothing proves the new message lost yet
    later = _submit(client, project)
    with api_app.app_context():
        session = store.session()
        assert claim_run(session, later, "w:2").outcome == "run"
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=120)
        session.query(Run).filter_by(id=later).update({"started_at": long_ago})
        session.commit()
        assert reap_stale_runs(session, 60) == [lost]
        assert reap_stale_runs(session, 60) == []  # once: the third message is watched from now on
