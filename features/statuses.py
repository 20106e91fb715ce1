"""Which non-ok statuses are facts about the input and which are failures of the pipeline itself.

The publish gate treats them differently (see ``validation.*`` in the README):

- **input** statuses say the upload is bad (a truncated or unreadable video, a frame that is not
  an image). They are published as status rows — consumers need to know — and count against the
  *catalogue's* share of bad input, not against one small run;
- **transient** statuses are the pipeline's own failures that may pass on another try (an
  inference error on the device, out of memory on a single frame): the next run embeds those
  frames again;
- every other non-ok status (including any status not listed here) is a failure of the pipeline
  and counts against ``validation.max_reject_rate`` of the run: a model that fails every frame
  must never publish.
"""

from __future__ import annotations

STATUS_OK = "ok"

# From frame extraction (features/video_frames.py) and image decoding (udfs/images.py).
INPUT_STATUSES = frozenset({
    "video_empty", "video_unreadable", "not_a_video", "video_truncated", "no_video_stream",
    "unsupported_codec", "video_undecodable", "no_frames", "video_too_large", "video_too_long",
    "empty_image", "undecodable_image", "image_too_large",
})

# From the engine (udfs/engine.py): a batch or frame that failed on the device.
TRANSIENT_STATUSES = frozenset({"inference_error"})


def is_input_status(status: str | None) -> bool:
    return status in INPUT_STATUSES


def is_pipeline_failure(status: str | None) -> bool:
    """Non-ok and not the input's fault."""
    return status != STATUS_OK and status not in INPUT_STATUSES
