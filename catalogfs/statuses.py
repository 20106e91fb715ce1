"""The two status vocabularies of the catalogue, as enums (values are the strings in the tables).

:class:`Status` is a frame's or video's row status. Which non-ok statuses are facts about the
input and which are failures of the pipeline itself matters to the publish gate (see
``validation.*`` in docs/configuration.md):

- **input** statuses say the upload is bad (a truncated or unreadable video, a frame that is not
  an image). They are published as status rows — consumers need to know — and count against the
  *catalogue's* share of bad input, not against one small run;
- **transient** statuses are the pipeline's own failures that may pass on another try (an
  inference error on the device, out of memory on a single frame): the next run embeds those
  frames again;
- every other non-ok status (including any status not listed here) is a failure of the pipeline
  and counts against ``validation.max_reject_rate`` of the run: a model that fails every frame
  must never publish.

:class:`RunStatus` is the status of a run's row in ``feature_versions`` (lineage).

Both are ``StrEnum``: a member equals its string (``Status.OK == "ok"``), so they go into Spark
expressions, pandas columns and JSON as they are.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    # frame extraction (features/video_frames.py): the video itself
    VIDEO_EMPTY = "video_empty"
    VIDEO_UNREADABLE = "video_unreadable"
    NOT_A_VIDEO = "not_a_video"
    VIDEO_TRUNCATED = "video_truncated"
    NO_VIDEO_STREAM = "no_video_stream"
    UNSUPPORTED_CODEC = "unsupported_codec"
    VIDEO_UNDECODABLE = "video_undecodable"
    NO_FRAMES = "no_frames"
    VIDEO_TOO_LARGE = "video_too_large"
    VIDEO_TOO_LONG = "video_too_long"
    # image decoding (udfs/images.py): one frame
    EMPTY_IMAGE = "empty_image"
    UNDECODABLE_IMAGE = "undecodable_image"
    IMAGE_TOO_LARGE = "image_too_large"
    # the engine (udfs/engine.py): a batch or frame that failed on the device
    INFERENCE_ERROR = "inference_error"
    # the engine: a decoded frame its model's preprocessing could not take (a pipeline failure)
    PREPROCESS_ERROR = "preprocess_error"


class RunStatus(StrEnum):
    PUBLISHED = "published"      # the run committed every table
    PROMOTED = "promoted"        # the space became current (promote, rollback, first serving run)
    REJECTED = "rejected"        # validation failed: nothing committed
    SKIPPED = "skipped"          # Delta skipped a MERGE (its transaction id was used already)
    INTERRUPTED = "interrupted"  # the run died part-way; recovered from table history by a later run


STATUS_OK = Status.OK

INPUT_STATUSES = frozenset({
    Status.VIDEO_EMPTY, Status.VIDEO_UNREADABLE, Status.NOT_A_VIDEO, Status.VIDEO_TRUNCATED,
    Status.NO_VIDEO_STREAM, Status.UNSUPPORTED_CODEC, Status.VIDEO_UNDECODABLE, Status.NO_FRAMES,
    Status.VIDEO_TOO_LARGE, Status.VIDEO_TOO_LONG,
    Status.EMPTY_IMAGE, Status.UNDECODABLE_IMAGE, Status.IMAGE_TOO_LARGE,
})

TRANSIENT_STATUSES = frozenset({Status.INFERENCE_ERROR})


def is_input_status(status: str | None) -> bool:
    return status in INPUT_STATUSES


def is_pipeline_failure(status: str | None) -> bool:
    """Non-ok and not the input's fault."""
    return status != Status.OK and status not in INPUT_STATUSES
