"""Shell command templates: a parameter value reaches the program as exactly one argument (or as exactly the
text the template puts it in), whatever the template does around the placeholder (DESIGN.md section 7).

Each ``{{ expression }}`` is quoted for the shell context it sits in, found by reading the template's own text
the way ``sh`` would (quotes, backslashes, ``$(...)`` and backticks):

- unquoted (``echo {{ x }}``): the value, shell-quoted;
- inside double quotes (``echo "{{ x }}"``, ``"--name={{ x }}.txt"``): the quote is closed, the shell-quoted
  value put in, and the quote reopened, so the value joins the quoted word verbatim;
- inside single quotes (``echo '{{ x }}'``): the same with single quotes.

Places where no quoting is safe are refused when the app is defined: a placeholder right after a backslash or
``$``, inside ``${...}``, or in a here-document. Quoting applies to the expression's final value, after any Jinja
filter, so a filter cannot undo it.
"""

from __future__ import annotations

import re
import shlex
from typing import Any, Callable, Dict, List, Optional, Tuple

from balsam.exceptions import AppError, ValidationError

_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
UNQUOTED, DOUBLE, SINGLE = "u", "d", "s"


class _Scanner:
    """Follows the shell's quoting state over the template's literal text, one chunk at a time."""

    def __init__(self, app: str) -> None:
        self.app = app
        self.stack: List[str] = [UNQUOTED]  # contexts: u (unquoted, incl. $( ) and backticks), d, s, p (${ })
        self.parens: List[int] = [0]
        self.escaped = False
        self.last = ""
        self.heredoc = False
        self.word_start = True

    def feed(self, text: str) -> None:
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            top = self.stack[-1]
            self.last = c
            was_escaped = self.escaped
            if self.escaped:
                self.escaped = False
            elif top == SINGLE:
                if c == "'":
                    self.stack.pop()
            elif c == "\\":
                self.escaped = True
            elif top == DOUBLE:
                if c == '"':
                    self.stack.pop()
                elif c == "$" and text[i + 1 : i + 2] == "(":
                    self.stack.append(UNQUOTED)
                    self.parens.append(0)
                    i += 1
                elif c == "$" and text[i + 1 : i + 2] == "{":
                    self.stack.append("p")
                    i += 1
                elif c == "`":
                    self.stack.append("`")
            elif top == "p":
                if c == "}":
                    self.stack.pop()
            else:  # unquoted, a $( ) or a backtick command
                if c == "'":
                    self.stack.append(SINGLE)
                elif c == '"':
                    self.stack.append(DOUBLE)
                elif c == "`":
                    if top == "`":
                        self.stack.pop()
                    else:
                        self.stack.append("`")
                elif c == "$" and text[i + 1 : i + 2] == "(":
                    self.stack.append(UNQUOTED)
                    self.parens.append(0)
                    i += 1
                elif c == "$" and text[i + 1 : i + 2] == "{":
                    self.stack.append("p")
                    i += 1
                elif c == "(" and top == UNQUOTED:
                    self.parens[-1] += 1
                elif c == ")" and top == UNQUOTED and len(self.stack) > 1:
                    if self.parens[-1] == 0:
                        self.stack.pop()
                        self.parens.pop()
                    else:
                        self.parens[-1] -= 1
                elif c == "<" and text[i + 1 : i + 2] == "<" and text[i + 2 : i + 3] != "<":
                    self.heredoc = True
                elif c == "#" and self.word_start:
                    end = text.find("\n", i)
                    i = n if end < 0 else end  # a comment: quotes in it mean nothing
                    self.last = "\n"
                    self.word_start = True
                    continue
            self.word_start = not was_escaped and c in " \t\n;&|()<>" and self.stack[-1] in (UNQUOTED, "`")
            i += 1

    def context(self, placeholder: str) -> str:
        """The quoting context of a placeholder at the current position (AppError where none is safe)."""
        where = f"{self.app}: command_template: {placeholder}"
        if self.escaped:
            raise AppError(f"{where} follows a backslash, which would escape its quoting; remove the backslash")
        if self.last == "$" and self.stack[-1] != SINGLE:
            raise AppError(f"{where} follows '$'; to pass a variable's name, write it out, or use the value directly")
        if self.heredoc:
            raise AppError(f"{where} comes after a here-document ('<<'), where quotes do not apply; pass the value as an "
                           "argument instead")
        top = self.stack[-1]
        if top == "p":
            raise AppError(f"{where} is inside ${{...}}; put it outside, e.g. \"${{VAR:-}}\"{placeholder}")
        return DOUBLE if top == DOUBLE else SINGLE if top == SINGLE else UNQUOTED


def quote_for(context: str, value: Any) -> str:
    """``value`` as shell text that is exactly the value, in a template position of ``context``."""
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        raise ValidationError(f"a parameter value contains a NUL character, which no command line can carry: {text[:40]!r}")
    quoted = shlex.quote(text)
    if context == DOUBLE:
        return '"' + quoted + '"'
    if context == SINGLE:
        return "'" + quoted + "'"
    return quoted


def _jinja_env() -> Any:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    env.filters["_balsam_u"] = lambda v: quote_for(UNQUOTED, v)
    env.filters["_balsam_d"] = lambda v: quote_for(DOUBLE, v)
    env.filters["_balsam_s"] = lambda v: quote_for(SINGLE, v)
    return env


def _fast(template: str, app: str) -> Optional[Callable[[Dict[str, Any]], str]]:
    """A renderer for templates that only substitute ``{{ name }}`` (no Jinja needed); None otherwise.

    Output is identical to Jinja's (stripped); launchers render a command per job, so skipping Jinja counts.
    """
    if "{%" in template or "{#" in template or "\r" in template:
        return None
    parts = _VAR.split(template)
    literal = parts[0::2]
    if any("{{" in p or "}}" in p for p in literal):
        return None
    names = parts[1::2]
    scanner = _Scanner(app)
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
    """The Jinja template with each ``{{ expression }}`` piped through the quoting filter of its context."""
    import jinja2

    env = _jinja_env()
    scanner = _Scanner(app)
    out: List[str] = []
    expr: Optional[List[str]] = None
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
            else:
                if kind == "data":
                    scanner.feed(value)
                out.append(value)
    except jinja2.TemplateSyntaxError as exc:
        raise AppError(f"{app}: command_template line {exc.lineno}: {exc.message}") from None
    return "".join(out)


def compile_command(template: str, app: str = "app") -> Callable[[Dict[str, Any]], str]:
    """A renderer ``values -> command line`` for ``template`` (AppError if a placeholder cannot be quoted safely)."""
    fast = _fast(template, app)
    if fast is not None:
        return fast
    compiled = _jinja_env().from_string(_rewrite(template, app))
    return lambda values: str(compiled.render(**values)).strip()


def template_variables(template: str, app: str) -> List[str]:
    """The variables a template uses (its parameters); AppError on a Jinja syntax error or an unsafe placeholder."""
    import jinja2
    from jinja2 import meta

    try:
        ast = _jinja_env().parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise AppError(f"{app}: command_template line {exc.lineno}: {exc.message}") from None
    compile_command(template, app)  # refuses placeholders that no quoting makes safe
    return sorted(meta.find_undeclared_variables(ast))


__all__ = ["compile_command", "quote_for", "template_variables"]
