"""Shell command templates: a parameter value reaches the program as exactly one argument (or as exactly the
text the template puts it in), whatever the template does around the placeholder (DESIGN.md section 7).

Each ``{{ expression }}`` is quoted for the shell context it sits in, found by reading the template's own text
the way bash would (quotes, ``$'...'``, backslashes, ``$(...)``, backticks, comments):

- unquoted (``echo {{ x }}``): the value, shell-quoted;
- inside double quotes (``echo "{{ x }}"``, ``"--name={{ x }}.txt"``): the quote is closed, the shell-quoted
  value put in, and the quote reopened, so the value joins the quoted word verbatim;
- inside single quotes (``echo '{{ x }}'``): the same with single quotes;
- where bash evaluates text as arithmetic whatever its quotes (``$((...))``, ``((...))``, ``$[...]``, ``let``,
  an array subscript, a variable the template declares ``-i``), or expands it twice (the word after ``>&``, when it
  is not a number): the value must be a number, or rendering fails
  with a ValidationError (the job FAILS with the reason), since ``$(...)`` or ``a[$(...)]`` there would run;
- inside ``[[ ... ]]``: quoted, and a value with ``[`` is refused (bash may evaluate it as an array subscript);
- inside a ``#`` comment: as it is, and a value with a line break is refused (the break would end the comment).

A line break in a value is written as ``$'\n'`` (bash's own quoting), so a rendered command has no line break
that came from a value: bash, after a syntax error in a template line, goes on with the next line, which is
then always the template's own, never the rest of a value.

Places where no quoting is safe are refused when the app is defined: a placeholder right after a backslash or
``$``, inside ``${...}``, ``$'...'`` or backticks (use ``$(...)``), or in a here-document. Quoting applies to the expression's final value,
after any Jinja filter, so a filter cannot undo it. Jinja blocks may output their text once, many times or not
at all, so each part of a block must close every quote and substitution it opens, and blocks whose output
skips ``{{ }}`` (``{% filter %}``, ``{% call %}``) are refused.
"""

from __future__ import annotations

import functools
import re
import shlex
from typing import Any, Callable, Dict, List, Optional, Tuple

from balsam.exceptions import AppError, ValidationError

_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
JINJA_NAMES = frozenset({"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else", "self",
                         "range", "dict", "lipsum", "cycler", "joiner", "namespace"})
"""Names that are not plain variables to Jinja (its constants, operators, ``self`` and its default globals): a
``{{ name }}`` template using one goes through Jinja, so it means what Jinja says (``{{ true }}`` is ``True``)."""
UNQUOTED, DOUBLE, SINGLE, ARITH, COMMENT = "u", "d", "s", "m", "k"
COND = "c"
"""Context prefix of a placeholder inside ``[[ ... ]]`` ("cu", "cd", "cs")."""
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_SUBSCRIPT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\[[^\]]*")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")
_DECLARE_INTEGER = re.compile(r"\b(?:declare|typeset|local|export|readonly)\s+(?:-[A-Za-z]+\s+)*-[A-Za-z]*i")
"""A template that declares integer variables: bash evaluates what is assigned to them as arithmetic."""
_BLOCK_OPEN = frozenset({"if", "for", "macro", "set", "with", "block", "autoescape"})
_BLOCK_MIDDLE = frozenset({"elif", "else"})
_UNSAFE_BLOCKS = frozenset({"call", "filter"})
"""Blocks whose output reaches the command without passing through a quoted ``{{ ... }}``."""


_EXPANSIONS = {"[": (ARITH, "]"), "(": (UNQUOTED, ")"), "{": ("p", "}")}
"""What ``$`` followed by each of these opens: a context and its closer."""


class _Scanner:
    """Follows the shell's quoting state over the template's literal text, one chunk at a time.

    A frame per open construct: [context, closer, depth]. Contexts: u (unquoted, also inside ``$( )``), "`"
    (backticks), d, s, p (``${ }``), a (``$'...'``), m (arithmetic: ``$(( ))``, ``(( ))``, ``$[ ]``, ``let``,
    an array subscript), c (``[[ ]]``).
    """

    def __init__(self, app: str, template: str = "") -> None:
        self.app = app
        self.integers = bool(_DECLARE_INTEGER.search(template))
        self.frames: List[List[Any]] = [[UNQUOTED, "", 0]]
        self.escaped = False
        self.last = ""
        self.heredoc = False
        self.comment = False
        """Inside a ``#`` comment (until the next line break)."""
        self.dup = False
        """In the word after ``>&``, which bash expands twice when it is not a number (quotes or not)."""
        self.word_start: Optional[bool] = True
        """Whether the next character starts a word (None: not known, after a ``{% %}`` tag)."""
        self.word = ""
        """The unquoted text of the current word so far (to see ``name[`` subscripts)."""
        self.continued: Tuple[Optional[bool], str, str] = (True, "", "")
        """Word start, word and last character before the latest backslash (a line continuation restores them)."""

    def _push(self, context: str, closer: str = "") -> None:
        self.frames.append([context, closer, 0])

    def _expansion(self, text: str, i: int) -> int:
        """At a ``$`` (``text[i]``), open the expansion it starts (``$(( ))``, ``$[ ]``, ``$( )``, ``${ }``: the same in
        double quotes as unquoted): the index of its last opening character, or ``i`` when it starts none."""
        if text[i + 1 : i + 3] == "((":
            self._push(ARITH, "))")
            return i + 2
        opened = _EXPANSIONS.get(text[i + 1 : i + 2])
        if opened is None:
            return i
        self._push(*opened)
        return i + 1

    def state(self) -> Tuple[Any, ...]:
        """What decides how the shell reads what follows (compared across the branches of a ``{% %}`` block)."""
        return (tuple(tuple(f) for f in self.frames), self.escaped, self.heredoc, self.last == "$", self.comment, self.dup)

    def feed(self, text: str) -> None:
        i = 0
        n = len(text)
        while i < n:
            if self.comment:  # quotes in a comment mean nothing; its line break ends it
                end = text.find("\n", i)
                if end < 0:
                    self.last = text[-1]
                    return
                i, self.comment = end, False
            c = text[i]
            nxt = text[i + 1 : i + 2]
            frame = self.frames[-1]
            top = frame[0]
            if self.escaped and c == "\n" and top not in (SINGLE, "a"):
                # A line continuation: bash removes the backslash and the line break as if neither were there.
                self.escaped = False
                self.word_start, self.word, self.last = self.continued
                i += 1
                continue
            at_word_start = self.word_start
            word_before, last_before = self.word, self.last
            self.last = c
            was_escaped = self.escaped
            if self.escaped:
                self.escaped = False
            elif c in "`\\" and any([f[0] == "`" for f in self.frames]):
                # bash finds the end of a `...` substitution first, at the next backtick that no backslash escapes,
                # whatever quotes the text between holds (it reads them only when it runs the inside).
                if c == "\\":
                    self.escaped = True
                else:
                    while self.frames[-1][0] != "`":
                        self.frames.pop()
                    self.frames.pop()
            elif top == SINGLE:
                if c == "'":
                    self.frames.pop()
            elif top == "a":  # $'...': backslash escapes apply
                if c == "\\":
                    self.escaped = True
                elif c == "'":
                    self.frames.pop()
            elif c == "\\":
                self.escaped = True
            elif top == DOUBLE:
                if c == '"':
                    self.frames.pop()
                elif c == "$" and (end := self._expansion(text, i)) > i:
                    i = end
                elif c == "`":
                    self._push("`", "`")
            elif top == "p":
                if c == "}":
                    self.frames.pop()
            else:  # unquoted, $( ), backticks, arithmetic, [[ ]], let
                closer = frame[1]
                if top == ARITH and c == "(":
                    frame[2] += 1
                elif top == ARITH and closer in ("))", "]") and c == closer[0] and frame[2] == 0 and text[i:i + len(closer)] == closer:
                    self.frames.pop()
                    i += len(closer) - 1
                elif top == ARITH and c == ")" and frame[2] > 0:
                    frame[2] -= 1
                elif top == ARITH and closer == ";" and c in "<>" and nxt == "&":
                    i += 1  # '>&' or '<&' among let's words: a redirection (its word is numbers-only, as let's are), not an end
                elif top == ARITH and closer == ";" and c in ";&|\n)":
                    self.frames.pop()  # the end of a let command
                    continue
                elif top == COND and c == "]" and nxt == "]" and at_word_start:
                    self.frames.pop()
                    i += 1
                elif c == "'":
                    self._push(SINGLE)
                elif c == '"':
                    self._push(DOUBLE)
                elif c == "`":
                    if top == "`":
                        self.frames.pop()
                    else:
                        self._push("`", "`")
                elif c == "$" and nxt == "'":
                    self._push("a")
                    i += 1
                elif c == "$" and (end := self._expansion(text, i)) > i:
                    i = end
                elif c == "(" and nxt == "(" and at_word_start is not False and top != ARITH:
                    self._push(ARITH, "))")  # (( arithmetic )), also for (( ... ))
                    i += 1
                elif c == "[" and nxt == "[" and at_word_start is not False and top != ARITH:
                    self._push(COND, "]]")
                    i += 1
                elif (c == "l" and text[i:i + 4] in ("let ", "let\t") and at_word_start is not False and top in (UNQUOTED, "`")):
                    self._push(ARITH, ";")
                    i += 2
                elif c == "(" and top == UNQUOTED:
                    frame[2] += 1
                elif c == ")" and top == UNQUOTED and len(self.frames) > 1 and frame[1] == ")":
                    if frame[2] == 0:
                        self.frames.pop()
                    else:
                        frame[2] -= 1
                elif c == "<" and nxt == "<" and text[i + 2 : i + 3] != "<":
                    self.heredoc = True
                elif c == ">" and nxt == "&" and top in (UNQUOTED, "`", COND):  # '[[x' is no [[: bash redirects
                    self.dup = True
                    i += 1
                elif c == "#" and top in (UNQUOTED, "`"):
                    if at_word_start is None:
                        raise AppError(f"{self.app}: command_template: '#' right after a {{% %}} tag may or may not start a "
                                       "comment; put a space or other text between them")
                    if at_word_start:
                        self.comment = True
                        self.word = ""
                        continue
            if self.escaped and not was_escaped:
                self.continued = (at_word_start, word_before, last_before)
            top = self.frames[-1][0]
            # An open subscript (``a[ ...``) goes on to its ']' through spaces, '#' and all: bash reads it as one word.
            self.word_start = (not was_escaped and c in " \t\n;&|()<>" and top in (UNQUOTED, "`", COND)
                               and _SUBSCRIPT.fullmatch(self.word) is None)
            if self.dup and self.word_start and self.word and c != ">":
                self.dup = False  # the word after >& ended
            self.word = "" if self.word_start else self.word + c
            i += 1

    def after_tag(self) -> None:
        """A ``{% %}`` tag was passed: the text before it may or may not have been output."""
        self.word_start = None
        self.word = ""

    def context(self, placeholder: str) -> str:
        """The quoting context of a placeholder at the current position (AppError where none is safe)."""
        where = f"{self.app}: command_template: {placeholder}"
        if self.comment:
            return COMMENT  # inert text, unless a line break ends the comment
        if self.escaped:
            raise AppError(f"{where} follows a backslash, which would escape its quoting; remove the backslash")
        if self.last == "$" and self.frames[-1][0] != SINGLE:
            raise AppError(f"{where} follows '$'; to pass a variable's name, write it out, or use the value directly")
        if self.heredoc:
            raise AppError(f"{where} comes after a here-document ('<<'), where quotes do not apply; pass the value as an "
                           "argument instead")
        contexts = [f[0] for f in self.frames]
        top = contexts[-1]
        if "`" in contexts:
            raise AppError(f"{where} is inside backticks, where no quoting keeps a backtick in the value from ending "
                           f"them; use $(...) instead of `...`")
        if top == "p":
            raise AppError(f"{where} is inside ${{...}}; put it outside, e.g. \"${{VAR:-}}\"{placeholder}")
        if top == "a":
            raise AppError(f"{where} is inside $'...', where backslashes escape; put it outside the quotes")
        if (ARITH in contexts or self.dup or _SUBSCRIPT.fullmatch(self.word)
                or (self.integers and _ASSIGNMENT.match(self.word))):
            context = ARITH  # bash evaluates the text, quotes or not: $(...) in it would run
        elif top == DOUBLE:
            context = DOUBLE
        elif top == SINGLE:
            context = SINGLE
        else:
            context = UNQUOTED
        if COND in contexts and context != ARITH:
            context = COND + context
        # What the placeholder puts here is never empty and never ends a word (quotes, or a number).
        self.word_start = False
        self.word += "0"
        self.last = "0"
        return context


def quote_for(context: str, value: Any) -> str:
    """``value`` as shell text that is exactly the value, in a template position of ``context``."""
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        raise ValidationError(f"a parameter value contains a NUL character, which no command line can carry: {text[:40]!r}")
    if context == COMMENT:
        if "\n" in text:
            raise ValidationError(f"a parameter value in a comment of the command cannot hold a line break (the rest would run as "
                                  f"a command): {text[:40]!r}")
        return text
    if context == ARITH:
        if isinstance(value, bool) or not _NUMBER.fullmatch(text.strip()):
            raise ValidationError(f"a parameter value in an arithmetic expression ($((...)), ((...)), let, a subscript) or after '>&' must be "
                                  f"a number, not {text[:40]!r}: bash would evaluate it, running any $(...) in it")
        return text.strip()
    if context.startswith(COND):
        if "[" in text:
            raise ValidationError(f"a parameter value inside [[ ... ]] cannot contain '[': bash may evaluate it as an array "
                                  f"subscript, running any $(...) in it: {text[:40]!r}")
        context = context[1:]
    # A line break goes in as $'\n', never as itself: bash recovers from a syntax error by skipping to the next
    # line, so the template text before a placeholder could otherwise make a value's next line run as a command.
    quoted = shlex.quote(text) if "\n" not in text else "$'\\n'".join(shlex.quote(part) for part in text.split("\n"))
    if context == DOUBLE:
        return '"' + quoted + '"'
    if context == SINGLE:
        return "'" + quoted + "'"
    return quoted


def _jinja_env() -> Any:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    for context in (UNQUOTED, DOUBLE, SINGLE, ARITH, COMMENT, COND + UNQUOTED, COND + DOUBLE, COND + SINGLE):
        env.filters[f"_balsam_{context}"] = functools.partial(quote_for, context)
    return env


def _simple_parts(template: str) -> Optional[Tuple[List[str], List[str]]]:
    """(literal texts, variable names) of a template that only substitutes ``{{ name }}`` of plain variables; None
    if it needs Jinja (a block, a comment, an expression, or a name that means something else to Jinja)."""
    if "{%" in template or "{#" in template or "\r" in template:
        return None
    parts = _VAR.split(template)
    literal = parts[0::2]
    if any("{{" in p or "}}" in p for p in literal):
        return None
    names = parts[1::2]
    if JINJA_NAMES.intersection(names):
        return None
    return literal, names


def _fast(template: str, app: str) -> Optional[Callable[[Dict[str, Any]], str]]:
    """A renderer for templates that only substitute ``{{ name }}`` (no Jinja needed); None otherwise.

    Output is identical to Jinja's (stripped); launchers render a command per job, so skipping Jinja counts.
    """
    parts = _simple_parts(template)
    if parts is None:
        return None
    literal, names = parts
    scanner = _Scanner(app, template)
    contexts: List[str] = []
    for name, text in zip(names, literal):
        scanner.feed(text)
        contexts.append(scanner.context("{{ " + name + " }}"))
    slots: List[Tuple[str, str, str]] = list(zip(names, contexts, literal[1:]))
    head = literal[0]

    def render(values: Dict[str, Any]) -> str:
        out = [head]
        for name, context, text in slots:
            out.append(quote_for(context, values[name]))
            out.append(text)
        return "".join(out).strip()

    return render


def _rewrite(template: str, app: str) -> str:
    """The Jinja template with each ``{{ expression }}`` piped through the quoting filter of its context.

    Text between the tags of a ``{% %}`` block may be output once, many times or not at all, so each stretch
    (``{% if %}`` to ``{% else %}``, a loop's body, ...) must leave the shell's quoting as it found it; a block
    whose output skips ``{{ }}`` (``{% filter %}``, ``{% call %}``) would skip the quoting, and is refused."""
    import jinja2

    env = _jinja_env()
    scanner = _Scanner(app, template)
    out: List[str] = []
    expr: Optional[List[str]] = None
    tag: Optional[List[Tuple[str, str]]] = None
    blocks: List[Tuple[str, Tuple[Any, ...]]] = []
    try:
        for _line, kind, value in env.lex(template):
            if kind == "variable_begin":
                expr = []
                out.append(value)
            elif kind == "variable_end":
                assert expr is not None
                text = "".join(expr).strip()
                context = scanner.context("{{ " + text + " }}")
                out.append(f" ({text}) | _balsam_{context} ")
                out.append(value)
                expr = None
            elif expr is not None:
                expr.append(value)
            elif kind == "block_begin":
                tag = []
                out.append(value)
            elif kind == "block_end":
                assert tag is not None
                _block_tag(scanner, blocks, tag, app)
                scanner.after_tag()
                tag = None
                out.append(value)
            elif tag is not None:
                if kind != "whitespace":
                    tag.append((kind, value))
                out.append(value)
            else:
                if kind == "data":
                    scanner.feed(value)
                out.append(value)
    except jinja2.TemplateSyntaxError as exc:
        raise AppError(f"{app}: command_template line {exc.lineno}: {exc.message}") from None
    return "".join(out)


def _block_tag(scanner: _Scanner, blocks: List[Tuple[str, Tuple[Any, ...]]], tag: List[Tuple[str, str]], app: str) -> None:
    """Check one ``{% %}`` tag against the quoting state where its block began (see :func:`_rewrite`)."""
    name = tag[0][1] if tag and tag[0][0] == "name" else ""
    shown = "{% " + name + " %}"
    if name in _UNSAFE_BLOCKS:
        raise AppError(f"{app}: command_template: {shown} blocks put text in the command without quoting its values; "
                       "use a filter inside {{ }} instead (e.g. {{ x | upper }})")
    if scanner.escaped or scanner.last == "$":
        raise AppError(f"{app}: command_template: {shown} follows {'a backslash' if scanner.escaped else chr(36)}, whose "
                       "meaning would depend on what the block outputs; move it inside the block")
    if name == "set" and any(k == "operator" and v == "=" for k, v in tag):
        return  # {% set x = ... %} outputs nothing
    if name in _BLOCK_OPEN:
        blocks.append((name, scanner.state()))
        return
    if name in _BLOCK_MIDDLE or name.startswith("end"):
        if blocks and scanner.state() != blocks[-1][1]:
            raise AppError(f"{app}: command_template: the text before {shown} leaves a quote, bracket or substitution open "
                           f"that {{% {blocks[-1][0]} %}} did not: each part of a block must close what it opens")
        if name.startswith("end") and blocks:
            blocks.pop()


def compile_command(template: str, app: str = "app") -> Callable[[Dict[str, Any]], str]:
    """A renderer ``values -> command line`` for ``template`` (AppError if a placeholder cannot be quoted safely)."""
    fast = _fast(template, app)
    if fast is not None:
        return fast
    compiled = _jinja_env().from_string(_rewrite(template, app))
    return lambda values: str(compiled.render(**values)).strip()


def template_variables(template: str, app: str) -> List[str]:
    """The variables a template uses (its parameters); AppError on a Jinja syntax error or an unsafe placeholder.

    A template that only substitutes ``{{ name }}`` is read without Jinja (the same answer): importing Jinja
    costs tens of milliseconds, paid by every process that defines such an app (a CLI command, a launcher
    before its first job)."""
    parts = _simple_parts(template)
    if parts is not None:
        compile_command(template, app)  # refuses placeholders that no quoting makes safe
        return sorted(set(parts[1]))
    import jinja2
    from jinja2 import meta

    try:
        ast = _jinja_env().parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise AppError(f"{app}: command_template line {exc.lineno}: {exc.message}") from None
    compile_command(template, app)  # refuses placeholders that no quoting makes safe
    return sorted(meta.find_undeclared_variables(ast))


__all__ = ["compile_command", "quote_for", "template_variables"]
