"""Shell quoting by context, for ``command`` templates (docs/workflows.md, "Shell safety").

The command template is scanned once, before rendering. The literal text between
placeholders is fed to a small model of POSIX ``sh`` quoting (unquoted, ``'...'``,
``"..."``, ``$( )`` and backquote substitutions, ``#`` comments, backslash escapes), so
each ``{{ expr }}`` is known to stand in one of those contexts. It is then rewritten to
``{{ (expr) | _shq("<context>") }}`` and the filter escapes the rendered value for
exactly that context: whatever the value holds, the shell reads it back as the same
literal characters, inside one word. ``| safe`` (a ``markupsafe.Markup``) opts a trusted
fragment out.

Limits, documented in docs/workflow-format: the quoting state follows the template text
as written, so a quote opened in one branch of ``{% if %}`` and closed in another is not
understood (write the quotes outside the block); here-documents are not modelled (pass
values through ``env:`` instead); ANSI-C ``$'...'`` quoting is bash-only and unused.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from markupsafe import Markup

UNQUOTED = "u"
DOUBLE = "d"
SINGLE = "s"
COMMENT = "c"


@dataclass
class _Frame:
    kind: str  # UNQUOTED / DOUBLE / SINGLE / COMMENT
    opener: str = ""  # "$(" or "`" for substitutions, "" otherwise
    depth: int = 0  # open parentheses inside a $( ) substitution


class QuoteTracker:
    """Follows the quoting state of ``sh`` through literal text."""

    def __init__(self) -> None:
        self.stack: list[_Frame] = [_Frame(UNQUOTED)]
        self.at_word_start = True
        self._pending_backslash = False
        self._after_dollar = False
        # Escaped quotes inside backquotes change meaning once the shell strips a level
        # of backslashes: a placeholder after one is refused rather than guessed at.
        self._unreliable = ""

    @property
    def top(self) -> _Frame:
        return self.stack[-1]

    def context(self) -> str:
        """The escaping context of a placeholder here: primary kind + backquote depth."""
        backquotes = sum(1 for f in self.stack if f.opener == "`")
        return f"{self.top.kind}{backquotes}"

    def feed(self, text: str) -> None:
        i = 0
        n = len(text)
        while i < n:
            ch = text[i]
            frame = self.top
            self._after_dollar = ch == "$" and frame.kind in (UNQUOTED, DOUBLE)
            if self._pending_backslash:
                self._after_dollar = False
                if ch in "\"'`" and any(f.opener == "`" for f in self.stack):
                    self._unreliable = "escaped quotes inside backquotes; use $( ) instead"
                # The character after a backslash is literal (outside single quotes).
                self._pending_backslash = False
                self.at_word_start = False
                i += 1
                continue
            if frame.kind == COMMENT:
                if ch == "\n":
                    self.stack.pop()
                    self.at_word_start = True
                i += 1
                continue
            if frame.kind == SINGLE:
                if ch == "'":
                    self.stack.pop()
                i += 1
                continue
            if ch == "\\":
                self._pending_backslash = True
                i += 1
                continue
            if frame.kind == DOUBLE:
                if ch == '"':
                    self.stack.pop()
                    self.at_word_start = False
                elif ch == "$" and text.startswith("$(", i):
                    self.stack.append(_Frame(UNQUOTED, "$("))
                    self._after_dollar = False
                    self.at_word_start = True
                    i += 1
                elif ch == "`":
                    self.stack.append(_Frame(UNQUOTED, "`"))
                    self.at_word_start = True
                i += 1
                continue
            # UNQUOTED (top level or inside a substitution)
            if ch == "'":
                self.stack.append(_Frame(SINGLE))
                self.at_word_start = False
            elif ch == '"':
                self.stack.append(_Frame(DOUBLE))
                self.at_word_start = False
            elif ch == "#" and self.at_word_start:
                self.stack.append(_Frame(COMMENT))
            elif ch == "$" and text.startswith("$(", i):
                self.stack.append(_Frame(UNQUOTED, "$("))
                self._after_dollar = False
                self.at_word_start = True
                i += 1
            elif ch == "`":
                if frame.opener == "`":
                    self.stack.pop()
                    self.at_word_start = False
                else:
                    self.stack.append(_Frame(UNQUOTED, "`"))
                    self.at_word_start = True
            elif ch == "(" and frame.opener == "$(":
                frame.depth += 1
                self.at_word_start = True
            elif ch == ")" and frame.opener == "$(":
                if frame.depth:
                    frame.depth -= 1
                    self.at_word_start = True
                else:
                    self.stack.pop()
                    self.at_word_start = False
            else:
                self.at_word_start = ch in " \t\n;&|()<>"
            i += 1

    def placeholder(self) -> str:
        """Note a placeholder here and return its context; it is part of a word.

        Raises:
            ValueError: the literal text just before the placeholder would combine with
                the value's first character (a backslash escaping it, a ``$`` starting an
                expansion with it), which no escaping of the value alone can prevent.
        """
        if self._pending_backslash:
            raise ValueError(
                "a backslash right before a placeholder would escape the value's first "
                "character; remove it or put the placeholder inside quotes"
            )
        if self._after_dollar:
            raise ValueError(
                "'$' right before a placeholder would make the value a shell expansion "
                "(write '{{ x }}', not '${{ x }}')"
            )
        if self._unreliable:
            raise ValueError(f"cannot tell how a placeholder is quoted here: {self._unreliable}")
        context = self.context()
        self.at_word_start = False
        return context


def escape(value: object, context: str) -> str:
    """Render ``value`` as literal shell text for ``context`` (see :meth:`QuoteTracker.context`).

    Raises:
        ValueError: the value holds a NUL byte, which no shell argument can carry.
    """
    if isinstance(value, Markup):
        return str(value)
    text = str(value)
    if "\x00" in text:
        raise ValueError("the value contains a NUL byte, which a shell command cannot carry")
    kind, backquotes = context[0], int(context[1:] or 0)
    if kind == SINGLE:
        out = text.replace("'", "'\\''")
    elif kind == DOUBLE:
        out = re.sub(r'([\\$`"])', r"\\\1", text)
    elif kind == COMMENT:
        out = text.replace("\r", " ").replace("\n", " ")
    else:
        out = shlex.quote(text)
    # Inside backquotes the shell removes one level of backslashes before \ ` $ and then
    # parses the text again: protect those characters once per level.
    for _ in range(backquotes):
        out = re.sub(r"([\\$`])", r"\\\1", out)
    return out


# --- the pre-pass over a Jinja2 template -------------------------------------------------

_RAW_END = re.compile(r"\{%[-+]?\s*endraw\s*[-+]?%\}")


def _find_close(source: str, start: int, close: str) -> int:
    """Index of ``close`` after ``start``, skipping Jinja2 string literals; -1 if none."""
    i = start
    n = len(source)
    quote = ""
    while i < n:
        ch = source[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif source.startswith(close, i):
            return i
        i += 1
    return -1


def rewrite_command(source: str, filter_name: str = "_shq") -> str:
    """Rewrite each ``{{ expr }}`` of a command template to escape for its context.

    Text that is not a well-formed tag (an unclosed ``{{``) is left for Jinja2 to reject
    with its own message.
    """
    tracker = QuoteTracker()
    out: list[str] = []
    pos = 0
    n = len(source)
    while pos < n:
        starts = [i for i in (source.find(t, pos) for t in ("{{", "{%", "{#")) if i >= 0]
        if not starts:
            tracker.feed(source[pos:])
            out.append(source[pos:])
            break
        start = min(starts)
        tracker.feed(source[pos:start])
        out.append(source[pos:start])
        opener = source[start : start + 2]
        if opener == "{#":
            end = source.find("#}", start + 2)
            if end < 0:
                out.append(source[start:])
                break
            out.append(source[start : end + 2])
            pos = end + 2
            continue
        close = "}}" if opener == "{{" else "%}"
        end = _find_close(source, start + 2, close)
        if end < 0:
            out.append(source[start:])
            break
        inner = source[start + 2 : end]
        if opener == "{%":
            out.append(source[start : end + 2])
            pos = end + 2
            if re.fullmatch(r"[-+]?\s*raw\s*[-+]?", inner):
                raw_end = _RAW_END.search(source, pos)
                stop = raw_end.start() if raw_end else n
                tracker.feed(source[pos:stop])
                out.append(source[pos:stop])
                pos = stop
            continue
        left = inner[0] if inner[:1] in ("-", "+") else ""
        right = inner[-1] if len(inner) > len(left) and inner[-1:] in ("-", "+") else ""
        expr = inner[len(left) : len(inner) - len(right)]
        context = tracker.placeholder()
        out.append(f'{{{{{left} ({expr}) | {filter_name}("{context}") {right}}}}}')
        pos = end + 2
    return "".join(out)
