"""Retries that tell the model what was wrong with its previous answer.

A re-send of the same request after an invalid answer (a label not in the list, a dropped
placeholder, a broken schema) tends to get the same answer again. The retry instead carries
the validation error after the row's text, so the second attempt is likely to succeed.
"""

from __future__ import annotations

MAX_ERROR = 300


def with_feedback(user: str, error: str) -> str:
    """The row's text followed by why the previous answer to it was rejected."""
    reason = " ".join(error.split())[:MAX_ERROR]
    return (
        f"{user}\n\n---\nYour previous answer was rejected: {reason}. Answer the text above "
        "again, following the instructions and the answer schema exactly."
    )
