"""Token counts like the real services report them: about four characters per token."""

from __future__ import annotations

LEVELS = ("minimal", "low", "medium", "high")


def count(text: str) -> int:
    """ceil(chars / 4)."""
    return (len(text) + 3) // 4


def by_level(level: str, output: int) -> int:
    """Thinking tokens for a thinking level (or an OpenAI reasoning_effort)."""
    level = level.lower()
    if level == "low":
        return output + 8
    if level == "medium":
        return 3 * output + 16
    if level == "high":
        return 8 * output + 32
    return 0  # minimal, none, unknown


def by_budget(budget: int, output: int) -> int:
    """Thinking tokens for a thinkingBudget (-1 = dynamic, 0 = off)."""
    if budget == 0:
        return 0
    if budget < 0:
        return by_level("medium", output)
    return min(budget, 3 * output + 16)


def default_level(model: str) -> str:
    """What a model thinks when the request says nothing."""
    if model.startswith("gemini-3"):
        return "low"
    if model.startswith("gemini-2.5"):
        return "medium"
    if model.startswith("gemini-"):
        return "minimal"
    if model.startswith("gpt-5") and "chat" not in model:
        return "medium"
    if model.startswith("o") and model[1:2].isdigit():
        return "medium"
    return "minimal"


def thinking(model: str, level: str | None, budget: int | None, output: int) -> int:
    if level:
        return by_level(level, output)
    if budget is not None:
        return by_budget(budget, output)
    return by_level(default_level(model), output)
