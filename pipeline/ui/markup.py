"""A tiny HTML builder that escapes by default: only `Html` values pass through unescaped.

Every string that reaches a page (input text, model answers, errors, row ids, job names) goes
through `tag()` or `esc()`, so `<script>` in a row renders as text; there is no template engine
whose autoescape could be switched off by mistake.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from urllib.parse import urlencode


class Html(str):
    """Markup that is already safe (built by this module); everything else is escaped."""

    __slots__ = ()


def esc(value: object) -> Html:
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def _children(items: Iterable[object]) -> Iterable[Html]:
    for item in items:
        if item is None or item is False:
            continue
        if isinstance(item, str | int | float):
            yield esc(item)
        elif isinstance(item, Iterable):
            yield from _children(item)
        else:
            yield esc(item)


def join(*items: object) -> Html:
    return Html("".join(_children(items)))


def _attr_name(key: str) -> str:
    return key.rstrip("_").replace("_", "-")


def tag(element: str, /, *children: object, **attrs: object) -> Html:
    """`tag("a", "x<y", href="/rows?a=1")` -> `<a href="/rows?a=1">x&lt;y</a>`.

    Attribute names: a trailing `_` is dropped (`class_`), other `_` become `-` (`data_x`);
    None/False omit the attribute, True writes it bare.
    """
    parts = [element]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        if value is True:
            parts.append(_attr_name(key))
        else:
            parts.append(f'{_attr_name(key)}="{esc(value)}"')
    opening = "<" + " ".join(parts) + ">"
    if element in ("br", "hr", "input", "meta", "link"):
        return Html(opening)
    return Html(opening + join(*children) + f"</{element}>")


def url(path: str, params: Mapping[str, object] | None = None) -> str:
    """A URL with its query string encoded (escaped again when it lands in an attribute)."""
    clean = {k: str(v) for k, v in (params or {}).items() if v is not None and v != ""}
    return path + ("?" + urlencode(clean) if clean else "")
