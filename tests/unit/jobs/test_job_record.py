"""What an image job shows its owner and the admin, state by state: no result before its charge is written; how a
provider's answer is stored."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pytest

from downcity.jobs.record import GENERIC_FAILURE, NO_IMAGE, JobRecord, outcome_fields
from downcity.types import FilePart, ImageJobResult, UIMessage

RESULT = {"role": "assistant", "parts": [{"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AA"}]}
JOB = JobRecord(
    job_id="job_1",
    status="queued",
    input={"prompt": "a cat"},
    state={"provider_job_id": "up_1"},
    city_id="web",
    user_id="alice",
    model_id="pic",
    provider_id="img",
    created_at_ms=1_000,
    updated_at_ms=1_000,
    idempotency_key="k1",
    next_poll_at_ms=1_200,
)


@pytest.mark.parametrize(
    ("job", "shown"),
    [
        (JOB, {"job_id": "job_1", "status": "queued", "poll_after_ms": 250}),
        (
            replace(JOB, status="running", poll_after_ms=900, message="half way"),
            {"job_id": "job_1", "status": "running", "message": "half way", "poll_after_ms": 900},
        ),
        # Terminal but its charge not yet written: still running, result hidden.
        (
            replace(JOB, status="succeeded", result=RESULT, message="done"),
            {"job_id": "job_1", "status": "running", "poll_after_ms": 250},
        ),
        (
            replace(JOB, status="failed", error="content policy violation", poll_after_ms=40),
            {"job_id": "job_1", "status": "running", "poll_after_ms": 40},
        ),
        (
            replace(JOB, status="succeeded", result=RESULT, message="done", next_poll_at_ms=None),
            {"job_id": "job_1", "status": "succeeded", "result": RESULT, "message": "done"},
        ),
        (
            replace(JOB, status="failed", error="content policy violation", poll_after_ms=40, next_poll_at_ms=None),
            {"job_id": "job_1", "status": "failed", "error": "content policy violation"},
        ),
    ],
    ids=["queued", "running", "succeeded-unbilled", "failed-unreleased", "succeeded", "failed"],
)
def test_the_owner_sees_a_result_only_once_its_charge_is_written(job: JobRecord, shown: dict[str, object]) -> None:
    assert job.to_public(default_poll_ms=250) == shown


def test_the_admin_sees_everything_but_the_input_provider_state_result_lease_and_key() -> None:
    job = replace(JOB, status="succeeded", result=RESULT, next_poll_at_ms=None, charge_microcredits=20_000)

    assert job.to_admin() == {
        "job_id": "job_1",
        "status": "succeeded",
        "city_id": "web",
        "user_id": "alice",
        "model_id": "pic",
        "provider_id": "img",
        "created_at_ms": 1_000,
        "updated_at_ms": 1_000,
        "error": None,
        "message": None,
        "poll_after_ms": None,
        "attempts": 0,
        "next_poll_at_ms": None,
        "charge_microcredits": 20_000,
        "finished_at_ms": None,
    }


@pytest.mark.parametrize(
    ("job", "row"),
    [
        (
            replace(JOB, status="succeeded", finished_at_ms=4_500),
            {"status": "ok", "http_status": 200, "error_type": None, "duration_ms": 3_500, "created_at_ms": 4_500},
        ),
        (
            replace(JOB, status="failed", error="content policy violation", updated_at_ms=2_000),
            {
                "status": "error",
                "http_status": 502,
                "error_type": "image_failed",
                "duration_ms": 1_000,
                "created_at_ms": 2_000,
            },
        ),
        (
            replace(JOB, status="failed", error="upstream timeout", finished_at_ms=61_000),
            {
                "status": "error",
                "http_status": 504,
                "error_type": "upstream_timeout",
                "duration_ms": 60_000,
                "created_at_ms": 61_000,
            },
        ),
    ],
    ids=["succeeded", "failed", "timed-out"],
)
def test_a_finished_job_is_one_usage_row_keyed_by_its_charge(job: JobRecord, row: dict[str, object]) -> None:
    assert job.usage_row() == {
        "request_id": "job_1",
        "idempotency_key": "image:job_1",
        "city_id": "web",
        "user_id": "alice",
        "pathway": "image",
        "model_id": "pic",
        "provider_id": "img",
        "fallback_from": None,
        **row,
    }


def test_a_job_bills_and_fetches_as_its_owner_with_the_token_metadata_stored_at_creation() -> None:
    with_metadata = replace(JOB, state={**JOB.state, "user_metadata": {"plan": "pro"}})

    assert (with_metadata.user_info().user_id, with_metadata.user_info().metadata) == ("alice", {"plan": "pro"})
    assert JOB.user_info().metadata == {}


def test_a_job_finished_the_moment_it_was_created_lasted_0_ms() -> None:
    assert replace(JOB, status="succeeded", finished_at_ms=1_000).usage_row()["duration_ms"] == 0


def test_a_fallback_jobs_usage_row_names_the_model_it_fell_back_from() -> None:
    fell_back = replace(JOB, status="succeeded", state={**JOB.state, "fallback_from": "old-pic"}, finished_at_ms=1_500)

    assert fell_back.usage_row()["fallback_from"] == "old-pic"


DRAWN = UIMessage(
    role="assistant",
    parts=[FilePart(media_type="image/png", url="data:image/png;base64,AA", drawnAt=datetime.datetime(2024, 1, 2))],
)


def test_a_succeeded_answer_is_stored_as_json_with_its_parts_extras_serialized() -> None:
    stored = outcome_fields(ImageJobResult(job_id="up_1", status="succeeded", result=DRAWN, message="done"))

    assert stored == {
        "status": "succeeded",
        "result": {
            "id": "",
            "role": "assistant",
            "parts": [
                {
                    "type": "file",
                    "mediaType": "image/png",
                    "url": "data:image/png;base64,AA",
                    "filename": None,
                    "drawnAt": "2024-01-02T00:00:00",
                }
            ],
            "metadata": {},
        },
        "error": None,
        "message": "done",
    }


@pytest.mark.parametrize(
    ("answer", "stored"),
    [
        (
            ImageJobResult(job_id="up_1", status="failed", result=DRAWN, error="blocked"),
            {"status": "failed", "result": None, "error": "blocked", "message": None},
        ),
        (
            ImageJobResult(job_id="up_1", status="succeeded"),
            {"status": "failed", "result": None, "error": NO_IMAGE, "message": None},
        ),
        (
            ImageJobResult(job_id="up_1", status="failed", message="sorry"),
            {"status": "failed", "result": None, "error": GENERIC_FAILURE, "message": "sorry"},
        ),
        (
            ImageJobResult(job_id="up_1", status="running", message="half way"),
            {"status": "running", "result": None, "error": None, "message": "half way"},
        ),
    ],
    ids=["failed-with-an-image", "succeeded-without-an-image", "failed-without-an-error", "running"],
)
def test_only_a_success_with_an_image_is_stored_as_a_success_and_every_failure_has_an_error(
    answer: ImageJobResult, stored: dict[str, object]
) -> None:
    assert outcome_fields(answer) == stored
