"""Shell quoting by context, for ``command`` templates (docs/workflows.md, "Shell safety").

A command template is parsed by Jinja2 (so whitespace control ``{{- -}}``, ``{#- -#}``
and ``{% raw %}`` are already applied to the literal text), then its syntax tree is
walked in output order. The literal text is fed to a small model of POSIX ``sh``
(:class:`QuoteTracker`: unquoted, ``'...'``, ``"..."``, ``$( )`` and backquote
substitutions, ``#`` comments, backslashes, here-documents, ``$(( ))``, ``${ }``, and
``sh -c`` / ``eval`` scripts), so each ``{{ expr }}`` is known to stand in one context.
Each output expression is then wrapped in ``_shq("<context>")``, which escapes the
*rendered text* of the value for that context, whatever its Python type: a
``markupsafe.Markup`` from ``| tojson``, ``| e`` or ``| safe`` is quoted like any string.

The only way out is the explicit filter ``| shell_raw`` as the last filter of a
placeholder: its value is inserted as it is (a trusted fragment of shell).

Contexts no escaping can make sound are refused when the definition is loaded, with the
line and a reason: a here-document body or delimiter, the script of ``sh -c`` (and
``bash``, ``su``... ``-c``), the arguments of ``eval``, ``trap``, ``alias`` and ``ssh``
(shell code too), ``$(( ))``, ``${ }``, bash's ``$'...'``, right after ``$`` or ``\\``,
escaped quotes inside backquotes, ``case`` inside ``$( )``. ``{% if %}`` and ``{% for %}``
are followed branch by branch: every branch (and a loop body) must leave the quoting as
it found it. ``{% filter %}`` and ``{% call %}`` blocks, which would
re-write or re-place text around placeholders, are refused.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
from dataclasses import dataclass, field

from jinja2 import nodes

UNQUOTED = "u"
DOUBLE = "d"
SINGLE = "s"
COMMENT = "c"
# Contexts where a placeholder is always refused (the reason is in _REFUSED).
ARITH = "a"
PARAM = "p"
HEREDOC = "h"
ANSI = "q"

_REFUSED = {
    ARITH: (
        "a placeholder inside $(( )) is evaluated as arithmetic (and can run commands); "
        "compute in the template instead ({{ inputs.n + 1 }})"
    ),
    PARAM: (
        "a placeholder inside ${...} cannot be quoted soundly; "
        'pass the value through env: and write "${VAR:-default}" with a literal default'
    ),
    HEREDOC: (
        "a placeholder in a here-document cannot be quoted (the body of <<EOF expands $ and "
        "backquotes, and a value could end any body early with the delimiter); pass it through "
        'env: and write "$VAR" in the body of an unquoted here-document (<<EOF)'
    ),
    ANSI: "a placeholder inside bash's $'...' quoting cannot be quoted; use '...' or \"...\"",
}

# Programs that run their `-c` argument as a shell script.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "posh", "su"})
SHELLS |= {"runuser", "busybox"}
# Commands whose arguments are shell code: eval, trap's action, an alias's text, the
# command ssh has a remote shell run.
CODE_ARGUMENTS = frozenset({"eval", "trap", "alias", "ssh"})
# Words after which the next word is (again) a command's name.
COMMAND_PREFIXES = frozenset(
    {"if", "then", "do", "else", "elif", "while", "until", "!", "{", "time", "exec"}
    | {"command", "builtin", "env", "nohup", "xargs", "sudo", "doas", "nice", "ionice"}
    | {"timeout", "stdbuf", "setsid", "chroot", "taskset", "flock", "strace", "watch"}
    | {"-exec", "-execdir", "-ok", "-okdir"}
)
VALUE_COMMAND = "value-named command"
_UNKNOWN_WORD = "\x01"  # a word whose text depends on a branch or a value

NESTED_SHELL = (
    "a placeholder in the shell code that {what} runs would be run as code, not read as "
    "a value; "
    'pass the value as an argument instead: sh -c \'printf "%s" "$1"\' sh {{{{ x }}}}, '
    'or through env: and "$VAR"'
)


def _nested_message(what: str) -> str:
    if what == VALUE_COMMAND:
        return (
            "a placeholder after a value that may be the name of the command run (the "
            "first word, or the first after env, sudo, xargs, find -exec...): it could "
            "name eval or sh, which would run this one as code; write the program's name "
            "in the template (or pass the values through env:)"
        )
    return NESTED_SHELL.format(what=what)


def shell_raw(value: object) -> str:
    """The ``| shell_raw`` filter: the one explicit way to insert text unquoted.

    It only marks the placeholder it ends (``{{ x | shell_raw }}``), which the template
    pass leaves unquoted; the value itself is an ordinary string, so a ``shell_raw``
    value used anywhere else (``{% set y = x | shell_raw %}{{ y }}``) is quoted.
    """
    return str(value)


@dataclass
class _Frame:
    kind: str
    opener: str = ""  # "$(" or "`" for substitutions, the delimiter for a heredoc
    depth: int = 0  # open parentheses (substitutions, arithmetic) or braces (${ })
    # Simple-command state, for UNQUOTED frames: the words seen so far.
    word: str | None = None  # the current word's literal text, None between words
    in_shell: bool = False  # a shell's name was a word of this command
    saw_c: bool = False  # ... and then a -c option
    script_taken: bool = False  # ... and then the script word
    in_eval: str = ""  # ``eval`` (or another of CODE_ARGUMENTS) was a word of this command
    optarg: bool = False  # the next word is the argument of a shell's -o option
    options_done: bool = False  # the shell's first operand was seen: no -c after it
    permutes: bool = False  # su and runuser take options after operands too
    cmd_pos: bool = True  # the next word may be the command's name
    wrapped: bool = False  # a wrapper (env, sudo, xargs...) runs a later word as a command
    wrap_optarg: bool = False  # ... and the last word was one of its options
    heredoc_strip: bool = False
    line: str = ""  # a heredoc body's current line

    def key(self) -> tuple[object, ...]:
        return (self.kind, self.opener, self.depth, self.heredoc_strip, self.line)

    def nested_script(self) -> str:
        """Why a placeholder in this frame's current word would be code, or ''."""
        if self.in_eval:
            return self.in_eval
        if self.in_shell and self.saw_c and not self.script_taken:
            return "sh -c"
        if self.in_shell and (self.word or "").startswith("--command"):
            return "su --command"
        return ""


@dataclass
class QuoteTracker:
    """Follows the quoting state of ``sh`` through literal text."""

    stack: list[_Frame] = field(default_factory=lambda: [_Frame(UNQUOTED)])
    at_word_start: bool | None = True  # None: depends on a branch taken
    pending_backslash: bool = False
    after_dollar: bool = False
    unreliable: str = ""  # why placeholders from here on cannot be placed
    heredocs: list[tuple[str, bool]] = field(default_factory=list)  # (delimiter, strip tabs)
    delim: list[str] | None = None  # a heredoc delimiter being read: [text, quoted?, strip]

    @property
    def top(self) -> _Frame:
        return self.stack[-1]

    def context(self) -> str:
        """The escaping context of a placeholder here: primary kind + backquote depth."""
        backquotes = sum(1 for f in self.stack if f.opener == "`")
        return f"{self.top.kind}{backquotes}"

    # --- words of simple commands (for sh -c and eval) ---------------------------------

    def _word_frame(self) -> _Frame:
        for frame in reversed(self.stack):
            if frame.kind == UNQUOTED:
                return frame
        return self.stack[0]

    def _add_to_word(self, text: str) -> None:
        frame = self._word_frame()
        frame.word = (frame.word or "") + text

    def _end_word(self, frame: _Frame) -> None:
        """A word of the current simple command is complete: follow ``sh -c`` and eval.

        A shell's options come before its first operand (``sh -e -c SCRIPT``, ``sh
        FILE ARGS``; su and runuser take them anywhere); the word after ``-c`` that is
        not an option or an option's argument is the script. A word holding a value
        could be any option, ``-c`` included.
        """
        word = frame.word
        frame.word = None
        if word is None:
            return
        optarg, frame.optarg = frame.optarg, False
        unknown = _UNKNOWN_WORD in word
        literal = word.split(_UNKNOWN_WORD, 1)[0]
        assignment = re.match(r"[A-Za-z_][A-Za-z0-9_]*=", literal) is not None
        option = literal.startswith(("-", "+"))
        if word in COMMAND_PREFIXES:
            # The command's name is still to come: after env's or sudo's options (whose
            # arguments may look like a name: a word after an option is not taken as the
            # command's name for sure), or after if/then/!.
            frame.wrapped = True
            frame.wrap_optarg = False
        elif frame.cmd_pos or frame.wrapped:
            if unknown and not option and not assignment:
                # A value names the command: it could be eval or sh, the words after it code.
                frame.in_eval = frame.in_eval or VALUE_COMMAND
                frame.cmd_pos = frame.wrapped = False
            elif option:
                frame.wrap_optarg = frame.wrapped and "=" not in word
            elif assignment:
                pass
            elif frame.wrapped and frame.wrap_optarg:
                frame.wrap_optarg = False
            else:
                frame.cmd_pos = frame.wrapped = False  # a literal name: the command
        if word == "case" and any(f.opener in ("$(", "`") for f in self.stack):
            # Its "pattern)" lines would read as the end of the substitution.
            self.unreliable = "a case statement inside $( ) or backquotes"
        if optarg:
            return
        is_option = word[:1] in ("-", "+") or word.startswith(_UNKNOWN_WORD)
        if frame.in_shell and re.fullmatch(r"[-+][A-Za-z]*[oO]|--rcfile|--init-file", word):
            frame.optarg = True  # sh -o errexit: the next word is no operand
        if frame.saw_c and not frame.script_taken:
            if not is_option or unknown:
                frame.script_taken = True
            return
        name = os.path.basename(word)
        if name in SHELLS:
            frame.in_shell = True
            frame.options_done = False
            frame.permutes = name in ("su", "runuser")
        elif name in CODE_ARGUMENTS:
            frame.in_eval = name
        elif frame.in_shell and not frame.options_done:
            if unknown or re.fullmatch(r"-[A-Za-z]*c[A-Za-z]*", word):
                frame.saw_c = True
            elif word == "--" or not is_option:
                frame.options_done = not frame.permutes

    def _end_command(self, frame: _Frame) -> None:
        self._end_word(frame)
        frame.in_shell = frame.saw_c = frame.script_taken = frame.optarg = False
        frame.options_done = frame.permutes = frame.wrapped = frame.wrap_optarg = False
        frame.cmd_pos = True
        frame.in_eval = ""

    # --- the character model -----------------------------------------------------------

    def feed(self, text: str) -> None:
        """Advance through literal template text."""
        i = 0
        n = len(text)
        while i < n:
            i = self._step(text, i)

    def _step(self, text: str, i: int) -> int:
        ch = text[i]
        frame = self.top
        self.after_dollar = False
        if self.delim is not None:
            return self._read_delimiter(text, i)
        if frame.kind == HEREDOC:
            if ch == "\n":
                line = frame.line.lstrip("\t") if frame.heredoc_strip else frame.line
                frame.line = ""
                if line == frame.opener:
                    self.stack.pop()
                    self._start_heredoc()
            else:
                frame.line += ch
            return i + 1
        if self.pending_backslash:
            self.pending_backslash = False
            if ch in "\"'`" and any(f.opener == "`" for f in self.stack):
                self.unreliable = "escaped quotes inside backquotes; use $( ) instead"
            if frame.kind != SINGLE:
                self.at_word_start = False
                if ch != "\n":
                    self._add_to_word(ch)
            return i + 1
        if frame.kind == COMMENT:
            if ch == "\n":
                self.stack.pop()
                self._end_command(self.top)
                self._newline()
            return i + 1
        if frame.kind == SINGLE:
            if ch == "'":
                self.stack.pop()
            elif ch == "\\" and frame.opener == "$'":
                self.pending_backslash = True
            else:
                self._add_to_word(ch)
            return i + 1
        if frame.kind == ARITH:
            if ch == "(":
                frame.depth += 1
            elif ch == ")":
                if frame.depth:
                    frame.depth -= 1
                elif text.startswith("))", i):
                    self.stack.pop()
                    self.at_word_start = False
                    return i + 2
                else:
                    self.unreliable = "unbalanced parentheses in $(( ))"
            return i + 1
        if frame.kind == PARAM:
            if ch in "\"'`\\":
                self.unreliable = "quotes or backslashes inside ${...}"
            elif ch == "{":
                frame.depth += 1
            elif ch == "}":
                if frame.depth:
                    frame.depth -= 1
                else:
                    self.stack.pop()
            return i + 1
        if ch == "\\":
            self.pending_backslash = True
            return i + 1
        if ch == "$":
            if text.startswith("$((", i):
                self.stack.append(_Frame(ARITH, "$(("))
                return i + 3
            if text.startswith("$(", i):
                self._add_to_word("$(")
                self.stack.append(_Frame(UNQUOTED, "$("))
                self.at_word_start = True
                return i + 2
            if text.startswith("${", i):
                self._add_to_word("${")
                self.stack.append(_Frame(PARAM, "${"))
                return i + 2
            if frame.kind == UNQUOTED and text.startswith("$'", i):
                self._add_to_word(_UNKNOWN_WORD)
                self.stack.append(_Frame(SINGLE, "$'"))
                self.at_word_start = False
                return i + 2
            self.after_dollar = True
            self.at_word_start = False
            self._add_to_word(ch)
            return i + 1
        if ch == "`":
            if frame.opener == "`":
                self._end_word(frame)
                self.stack.pop()
                self.at_word_start = False
            else:
                self._add_to_word("`")
                self.stack.append(_Frame(UNQUOTED, "`"))
                self.at_word_start = True
            return i + 1
        if frame.kind == DOUBLE:
            if ch == '"':
                self.stack.pop()
                self.at_word_start = False
            else:
                self._add_to_word(ch)
            return i + 1
        # UNQUOTED (top level or inside a substitution)
        if ch == "'":
            self._add_to_word("")
            self.stack.append(_Frame(SINGLE))
            self.at_word_start = False
        elif ch == '"':
            self._add_to_word("")
            self.stack.append(_Frame(DOUBLE))
            self.at_word_start = False
        elif ch == "#" and self.at_word_start is None:
            self.unreliable = (
                "whether a '#' starts a comment depends on an {% if %} or {% for %} before it"
            )
        elif ch == "#" and self.at_word_start:
            self._end_word(frame)
            self.stack.append(_Frame(COMMENT))
        elif ch == "(" and text.startswith("((", i) and self.at_word_start is not False:
            self._end_word(frame)
            self.stack.append(_Frame(ARITH, "(("))
        elif ch == "(" and frame.opener == "$(":
            self._end_command(frame)
            frame.depth += 1
            self.at_word_start = True
        elif ch == ")" and frame.opener == "$(":
            self._end_command(frame)
            if frame.depth:
                frame.depth -= 1
                self.at_word_start = True
            else:
                self.stack.pop()
                self.at_word_start = False
        elif ch == "<" and text.startswith("<<", i) and not text.startswith("<<<", i):
            self._end_word(frame)
            strip = text.startswith("<<-", i)
            self.delim = ["", "", "-" if strip else ""]
            self.at_word_start = True
            return i + (3 if strip else 2)
        elif ch == "\n":
            self._end_command(frame)
            self._newline()
        elif ch in ";&|()":
            self._end_command(frame)
            self.at_word_start = True
        elif ch in " \t<>":
            self._end_word(frame)
            self.at_word_start = True
        else:
            self._add_to_word(ch)
            self.at_word_start = False
        return i + 1

    def _newline(self) -> None:
        self.at_word_start = True
        self._start_heredoc()

    def _start_heredoc(self) -> None:
        if self.heredocs:
            delimiter, strip = self.heredocs.pop(0)
            self.stack.append(_Frame(HEREDOC, delimiter, heredoc_strip=strip))

    def _read_delimiter(self, text: str, i: int) -> int:
        """One character of the word after ``<<`` (its quotes make the body literal)."""
        assert self.delim is not None
        word, quote, strip = self.delim
        ch = text[i]
        if quote in ("'", '"'):
            if ch == quote:
                self.delim = [word, "q", strip]
            else:
                self.delim = [word + ch, quote, strip]
            return i + 1
        if quote == "\\":
            self.delim = [word + ch, "q", strip]
            return i + 1
        if ch in " \t" and not word:
            return i + 1
        if ch in "'\"\\":
            self.delim = [word, ch, strip]
            return i + 1
        if ch in " \t\n;&|()<>":
            if not word:
                self.unreliable = "a here-document operator without a delimiter"
            self.heredocs.append((word, strip == "-"))
            self.delim = None
            return i  # the character is read again as shell text
        self.delim = [word + ch, quote, strip]
        return i + 1

    def placeholder(self) -> str:
        """Note a placeholder here and return its context; it is part of a word.

        Raises:
            ValueError: no escaping of the value can be sound here; the message says why
                and what to write instead.
        """
        if self.pending_backslash:
            raise ValueError(
                "a backslash right before a placeholder would escape the value's first "
                "character; remove it or put the placeholder inside quotes"
            )
        if self.after_dollar:
            raise ValueError(
                "'$' right before a placeholder would make the value a shell expansion "
                "(write '{{ x }}', not '${{ x }}')"
            )
        if self.delim is not None:
            raise ValueError(_REFUSED[HEREDOC])
        if self.unreliable:
            raise ValueError(f"cannot tell how a placeholder is quoted here: {self.unreliable}")
        for frame in self.stack:
            if frame.kind in _REFUSED:
                raise ValueError(_REFUSED[frame.kind])
            if frame.kind == UNQUOTED and frame.word is not None:
                what = frame.nested_script()
                if what:
                    raise ValueError(_nested_message(what))
            if frame.opener == "$'":
                raise ValueError(_REFUSED[ANSI])
        top = self._word_frame()
        if top.nested_script() and top.word is None:
            # The placeholder starts the script word itself.
            raise ValueError(_nested_message(top.nested_script()))
        context = self.context()
        if self.top.kind != COMMENT:
            self._add_to_word(_UNKNOWN_WORD)
        self.at_word_start = False
        return context

    def raw_fragment(self) -> None:
        """A ``| shell_raw`` value: trusted text the model cannot see."""
        if self.top.kind not in (COMMENT,):
            self._add_to_word(_UNKNOWN_WORD)
        self.at_word_start = False

    # --- branches -----------------------------------------------------------------------

    def snapshot(self) -> QuoteTracker:
        """An independent copy, to follow one branch of a block from here."""
        return copy.deepcopy(self)

    def _key(self) -> tuple[object, ...]:
        return (
            tuple(f.key() for f in self.stack),
            self.pending_backslash,
            self.after_dollar,
            tuple(self.heredocs),
            tuple(self.delim) if self.delim is not None else None,
        )

    @staticmethod
    def merge(states: list[QuoteTracker]) -> QuoteTracker:
        """The state after one of ``states``, whichever a branch left.

        Raises:
            ValueError: the branches leave the quoting in different states.
        """
        first = states[0]
        merged = first.snapshot()
        for other in states[1:]:
            if other._key() != first._key():
                raise ValueError(
                    "the branches of this block leave the shell quoting in different states "
                    "(a quote, substitution or here-document opened in one branch and not "
                    "in another); open and close quotes inside each branch or outside the "
                    "block"
                )
            if other.at_word_start != merged.at_word_start:
                merged.at_word_start = None
            if other.unreliable and not merged.unreliable:
                merged.unreliable = other.unreliable
            for mine, theirs in zip(merged.stack, other.stack, strict=True):
                if mine.word != theirs.word:
                    mine.word = _UNKNOWN_WORD
                mine.in_shell |= theirs.in_shell
                mine.saw_c |= theirs.saw_c
                mine.in_eval = mine.in_eval or theirs.in_eval
                mine.optarg |= theirs.optarg
                mine.options_done &= theirs.options_done
                mine.permutes |= theirs.permutes
                mine.cmd_pos |= theirs.cmd_pos
                mine.wrapped |= theirs.wrapped
                mine.wrap_optarg |= theirs.wrap_optarg
                mine.script_taken &= theirs.script_taken
        return merged

    def same(self, other: QuoteTracker) -> bool:
        """Both states place every later placeholder alike (used for loop fixpoints)."""
        return (
            self._key() == other._key()
            and self.at_word_start == other.at_word_start
            and self.unreliable == other.unreliable
            and all(
                (a.word, a.in_shell, a.saw_c, a.script_taken, a.in_eval, a.optarg)
                == (b.word, b.in_shell, b.saw_c, b.script_taken, b.in_eval, b.optarg)
                and (a.options_done, a.permutes, a.cmd_pos, a.wrapped, a.wrap_optarg)
                == (b.options_done, b.permutes, b.cmd_pos, b.wrapped, b.wrap_optarg)
                for a, b in zip(self.stack, other.stack, strict=True)
            )
        )


def escape(value: object, context: str) -> str:
    """Render ``value`` as literal shell text for ``context`` (see :meth:`QuoteTracker.context`).

    The value's rendered text is quoted whatever its type (``Markup`` included).

    Raises:
        ValueError: the value holds a NUL byte, which no shell argument can carry.
    """
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
    elif kind == UNQUOTED:
        out = shlex.quote(text)
    else:  # the tracker refuses the others at load time
        raise ValueError(f"no sound quoting for context {context!r}")
    # Inside backquotes the shell removes one level of backslashes before \ ` $ and then
    # parses the text again: protect those characters once per level.
    for _ in range(backquotes):
        out = re.sub(r"([\\$`])", r"\\\1", out)
    return out


# --- the pass over a command template's syntax tree -------------------------------------


class CommandRefused(ValueError):
    """A placeholder (or block) of a command template cannot be quoted soundly."""

    def __init__(self, lineno: int, reason: str) -> None:
        super().__init__(f"line {lineno} of the command: {reason}")
        self.lineno = lineno
        self.reason = reason


_REFUSED_TAGS = {
    nodes.FilterBlock: (
        "{% filter %} re-writes the text around placeholders after they are quoted; "
        "apply the filter to the value instead ({{ x | f }})"
    ),
    nodes.CallBlock: (
        "{% call %} inserts a macro's text unquoted; call the macro in a placeholder "
        "instead ({{ m(x) }}: its whole text is one quoted value)"
    ),
    nodes.EvalContextModifier: "{% autoescape %} is not supported in a command",
    nodes.ScopedEvalContextModifier: "{% autoescape %} is not supported in a command",
}


def _is_raw(expr: nodes.Expr) -> bool:
    return isinstance(expr, nodes.Filter) and expr.name == "shell_raw"


class _Annotator:
    """Walks a parsed command template in output order, placing every placeholder."""

    def __init__(self, filter_name: str) -> None:
        self.filter_name = filter_name

    def body(self, body: list[nodes.Node], tracker: QuoteTracker, captured: bool) -> QuoteTracker:
        for node in body:
            tracker = self.node(node, tracker, captured)
        return tracker

    def node(self, node: nodes.Node, tracker: QuoteTracker, captured: bool) -> QuoteTracker:
        lineno = node.lineno or 1
        for kind, reason in _REFUSED_TAGS.items():
            if isinstance(node, kind):
                raise CommandRefused(lineno, reason)
        try:
            if isinstance(node, nodes.Output):
                self.output(node, tracker, captured)
            elif isinstance(node, nodes.If):
                tracker = self.branches(node, tracker, captured)
            elif isinstance(node, nodes.For):
                tracker = self.loop(node, tracker, captured)
            elif isinstance(node, nodes.Macro | nodes.AssignBlock):
                # Captured text is a value: where it is output it is quoted as a whole.
                self.body(node.body, QuoteTracker(), True)
            elif isinstance(node, nodes.With | nodes.Scope):
                tracker = self.body(node.body, tracker, captured)
            elif isinstance(node, nodes.Assign):
                pass
            else:
                tag = type(node).__name__.lower()
                raise CommandRefused(lineno, f"{{% {tag} %}} is not supported in a command")
        except CommandRefused:
            raise
        except ValueError as exc:
            raise CommandRefused(lineno, str(exc)) from None
        return tracker

    def output(self, node: nodes.Output, tracker: QuoteTracker, captured: bool) -> None:
        for index, child in enumerate(node.nodes):
            if isinstance(child, nodes.TemplateData):
                if not captured:
                    tracker.feed(child.data)
                continue
            if captured:
                continue
            if _is_raw(child):
                tracker.raw_fragment()
                continue
            try:
                context = tracker.placeholder()
            except ValueError as exc:
                raise CommandRefused(child.lineno or node.lineno or 1, str(exc)) from None
            node.nodes[index] = nodes.Filter(
                child, self.filter_name, [nodes.Const(context)], [], None, None,
                lineno=child.lineno,
            )  # fmt: skip

    def branches(self, node: nodes.If, tracker: QuoteTracker, captured: bool) -> QuoteTracker:
        ends = [self.body(node.body, tracker.snapshot(), captured)]
        for elif_ in node.elif_:
            ends.append(self.body(elif_.body, tracker.snapshot(), captured))
        ends.append(self.body(node.else_, tracker.snapshot(), captured))
        return QuoteTracker.merge(ends)

    def loop(self, node: nodes.For, tracker: QuoteTracker, captured: bool) -> QuoteTracker:
        # The body runs 0..n times: find the state it settles in, each pass from the
        # union of what the passes before left.
        state = tracker.snapshot()
        for _ in range(4):
            after = self.body(node.body, state.snapshot(), captured)
            merged = QuoteTracker.merge([state, after])
            if merged.same(state):
                break
            state = merged
        else:
            raise ValueError("cannot follow the shell quoting through this {% for %}")
        otherwise = self.body(node.else_, tracker.snapshot(), captured)
        return QuoteTracker.merge([state, otherwise])


def annotate(template: nodes.Template, filter_name: str = "_shq") -> None:
    """Wrap each placeholder of a parsed command in ``filter_name("<context>")``, in place.

    Raises:
        CommandRefused: a placeholder or block cannot be quoted soundly; it names the
            line of the command and the reason.
    """
    _Annotator(filter_name).body(template.body, QuoteTracker(), False)
