"""Ship an ApplicationDefinition to its site as Python source, and load it back there.

Balsam 0.7 pickled app classes with dill, which broke ``super()``, replayed imports blindly and hid the
code. Here the stored form is plain source: the class, plus what it refers to at module level —

- modules become ``import`` lines; functions and classes from importable modules become ``from ... import``;
- functions and classes defined beside the app (a script, a notebook cell) are shipped as source too;
- constants whose ``repr`` reads back equal (numbers, strings, lists, dicts, ...) become assignments;
- anything else is refused at ``sync()`` with the name of the global, rather than failing later on a
  compute node.

A class with no methods (a typical shell app) is rebuilt from its attributes, so it needs no source file at
all, which matters in Jupyter, where classes have none.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import linecache
import re
import sys
import textwrap
import types
from typing import Any, Dict, List, Optional, Set

from balsam.exceptions import AppError

APP_ATTRIBUTES = ("site", "command_template", "parameters", "environment_variables", "transfers", "cleanup_files", "python_exe")


def _is_literal(value: Any) -> bool:
    try:
        return bool(ast.literal_eval(repr(value)) == value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


def _functions_of(cls: type) -> List[types.FunctionType]:
    out: List[types.FunctionType] = []
    for value in vars(cls).values():
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            value = value.fget
        if isinstance(value, types.FunctionType):
            out.append(value)
    return out


def _class_source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        pass
    # Jupyter: classes have no file, but their methods' code objects point into linecache's cell copies.
    for fn in _functions_of(cls):
        code = fn.__code__
        lines = linecache.getlines(code.co_filename)
        if not lines:
            continue
        pattern = re.compile(rf"^\s*class\s+{re.escape(cls.__name__)}\b")
        for start in range(min(code.co_firstlineno - 1, len(lines) - 1), -1, -1):
            if pattern.match(lines[start]):
                return "".join(inspect.getblock(lines[start:]))
    raise AppError(f"cannot find the source code of {cls.__qualname__}: define it in a file or a notebook cell")


def _synthesized_source(cls: type) -> Optional[str]:
    """Source rebuilt from attributes, for an app class with no methods."""
    if _functions_of(cls):
        return None
    lines = [f"class {cls.__name__}({', '.join(b.__name__ for b in cls.__bases__)}):"]
    if cls.__doc__:
        lines.append(f"    {cls.__doc__!r}")
    for name, value in vars(cls).items():
        if name.startswith("__") or name.startswith("_balsam"):
            continue
        if not _is_literal(value):
            return None
        lines.append(f"    {name} = {value!r}")
    if len(lines) == 1:
        lines.append("    pass")
    return "\n".join(lines) + "\n"


def _names_loaded(source: str) -> List[str]:
    tree = ast.parse(source)
    seen: Dict[str, None] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            seen.setdefault(node.id, None)
    return list(seen)


def _exported_name(owner: Optional[str], name: str, value: Any) -> Optional[str]:
    """The name under which module ``owner`` exposes exactly ``value``, if it is an importable module."""
    if not owner or owner == "__main__" or owner.startswith("_balsam_app_"):
        return None
    module = sys.modules.get(owner)
    if module is None:
        return None
    for candidate in (getattr(value, "__qualname__", None), getattr(value, "__name__", None), getattr(value, "_name", None), name):
        if isinstance(candidate, str) and candidate.isidentifier() and getattr(module, candidate, None) is value:
            return candidate
    return None


def _globals_of(cls: type) -> Dict[str, Any]:
    """The namespace the class was defined in: its methods' globals, else its module's."""
    for fn in _functions_of(cls):
        return fn.__globals__
    module = sys.modules.get(cls.__module__)
    return vars(module) if module is not None else {}


def _pin_site(source: str, cls: type) -> str:
    """``site = <a Site object or variable>`` in the class body, rewritten as the site's name: the stored app
    lives at that site, and Balsam 0.7 lets ``site`` be a Site object."""
    value = vars(cls).get("site")
    name = getattr(value, "name", None)
    if value is None or _is_literal(value) or not isinstance(name, str):
        return source
    tree = ast.parse(source)
    if not tree.body or not isinstance(tree.body[0], ast.ClassDef):
        return source
    lines = source.splitlines(keepends=True)
    for node in tree.body[0].body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "site" for t in targets) and node.end_lineno is not None:
            indent = lines[node.lineno - 1][: node.col_offset]
            lines[node.lineno - 1 : node.end_lineno] = [f"{indent}site = {name!r}\n"]
            return "".join(lines)
    return source


def capture_source(cls: type, base: type) -> str:
    """The source that recreates ``cls`` at its site (see the module docstring)."""
    globs = _globals_of(cls)
    imports: List[str] = []
    defs: List[str] = []
    seen: Set[str] = set()
    visiting: Set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in visiting:
            return
        visiting.add(id(obj))
        src = None
        if inspect.isclass(obj):
            src = _synthesized_source(obj)
            if src is None:
                src = _class_source(obj)
        else:
            try:
                src = inspect.getsource(obj)
            except (OSError, TypeError):
                raise AppError(f"cannot find the source code of {obj.__qualname__}, which {cls.__name__} uses") from None
        src = textwrap.dedent(src)
        if obj is cls:
            src = _pin_site(src, cls)
        for name in _names_loaded(src):
            refer(name)
        defs.append(src)

    def refer(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in globs:
            return  # a local, a builtin, or a name bound inside the class
        value = globs[name]
        if value is base:
            return
        if hasattr(builtins, name) and getattr(builtins, name) is value:
            return
        if isinstance(value, types.ModuleType):
            imports.append(f"import {value.__name__}" if value.__name__ == name else f"import {value.__name__} as {name}")
            return
        owner = getattr(value, "__module__", None)
        if (inspect.isclass(value) or inspect.isfunction(value)) and owner == cls.__module__:
            visit(value)
            return
        if name == "site_config" and (value is None or type(value).__name__ == "SiteConfig"):
            # ``from balsam.api import site_config`` (Balsam 0.7's docs use it in hooks): the config of the site the
            # app runs at, read there; this process's value (None outside a site) would be the wrong site's.
            imports.append("from balsam.api import site_config")
            return
        attr = _exported_name(owner, name, value)
        if attr is not None:
            imports.append(f"from {owner} import {attr}" + ("" if attr == name else f" as {name}"))
            return
        if _is_literal(value):
            defs.append(f"{name} = {value!r}\n")
            return
        raise AppError(
            f"{cls.__name__} uses the global {name!r} (a {type(value).__name__}), which cannot be shipped to the site: "
            "define it inside the class, or import it from a module"
        )

    visit(cls)
    header = "\n".join(sorted(set(imports)))
    source = (header + "\n\n" if header else "") + "\n\n".join(d.rstrip() + "\n" for d in defs)
    missing = _unresolved(source, base)
    if missing:
        raise AppError(
            f"{cls.__name__} uses {', '.join(repr(m) for m in missing)}, which the stored app cannot see (a local variable of the "
            "function that defines the class?): use a literal, a module-level constant, or define the class at module level"
        )
    return source


def _unresolved(source: str, base: type) -> List[str]:
    """Names the source reads as globals that it neither defines nor gets from builtins."""
    import symtable

    table = symtable.symtable(source, "<app>", "exec")
    defined = {sym.get_name() for sym in table.get_symbols() if sym.is_assigned() or sym.is_imported()}
    defined.add(base.__name__)
    wanted: Set[str] = set()

    def walk(t: symtable.SymbolTable) -> None:
        for sym in t.get_symbols():
            if sym.is_referenced() and (sym.is_global() or t.get_type() == "module") and not sym.is_assigned():
                wanted.add(sym.get_name())
        for child in t.get_children():
            walk(child)

    walk(table)
    return sorted(n for n in wanted - defined if not hasattr(builtins, n))


def load_source(source: str, class_name: str, module_name: str, base: type) -> type:
    """Execute stored app source in a fresh module and return the class (or load one stored by value)."""
    if is_pickled(source):
        return load_pickled(source, class_name)
    filename = f"<balsam app {module_name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(module_name)
    module.__dict__["ApplicationDefinition"] = base
    sys.modules[module_name] = module  # so values pickled from the app's own classes can be loaded
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except Exception as exc:
        raise AppError(f"app {class_name}: its stored code failed to load: {type(exc).__name__}: {exc}") from exc
    cls = module.__dict__.get(class_name)
    if not isinstance(cls, type):
        raise AppError(f"app {class_name}: its stored code does not define class {class_name}")
    return cls


# ------------------------------------------------------------------------------------------ apps without source
# A class defined in ``python -c``, ``python - <<EOF`` or the plain REPL has no source Python can find. Such a
# class is stored by value (cloudpickle) instead, in the same app row that only sync writes (the site owner's
# code, exactly like source, which the site executes too): nothing a user puts in job parameters, tags or data
# ever takes this form or reaches this loader. Byte-code is tied to the Python version, so the version is
# recorded and a node with another one refuses the app with a clear error instead of crashing on it.
PICKLED_HEADER = "#!balsam-app cloudpickle-v1 python="


def pickle_class(cls: type) -> str:
    """``cls`` by value, as the text stored in the app's ``source_code`` (header, note, base64)."""
    import base64

    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - a declared dependency
        raise AppError(f"cannot find the source code of {cls.__qualname__}, and cloudpickle (which stores such classes "
                       "by value) is not installed: pip install cloudpickle, or define the app in a file") from None
    try:
        data = cloudpickle.dumps(cls, protocol=4)
    except Exception as exc:
        raise AppError(f"cannot find the source code of {cls.__qualname__}, and it cannot be stored by value either: "
                       f"{type(exc).__name__}: {exc}") from None
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    body = base64.encodebytes(data).decode("ascii")
    return (f"{PICKLED_HEADER}{version} cloudpickle={cloudpickle.__version__}\n"
            f"# {cls.__name__} was defined where Python keeps no source (python -c, a pipe, the interactive prompt),\n"
            f"# so it is stored by value and loads only on Python {version}. Define it in a file to ship readable source.\n"
            f"{body}")


def is_pickled(source: str) -> bool:
    """True for app code stored by :func:`pickle_class`."""
    return source.startswith(PICKLED_HEADER)


def load_pickled(source: str, class_name: str) -> type:
    """The class stored by :func:`pickle_class`; AppError, saying what to do, when this Python cannot load it."""
    import base64
    import pickle

    header, _, rest = source.partition("\n")
    fields = dict(part.split("=", 1) for part in header[len("#!balsam-app "):].split()[1:] if "=" in part)
    wanted = fields.get("python", "?")
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if wanted != here:
        raise AppError(f"app {class_name} was defined without a source file on Python {wanted} and is stored as Python "
                       f"{wanted} byte-code; this node runs Python {here} ({sys.executable}), which cannot load it: "
                       f"set launcher.python_exe to a Python {wanted}, or define the app in a file and sync it again")
    try:
        import cloudpickle  # noqa: F401 - its functions are named inside the pickle
    except ImportError:
        raise AppError(f"app {class_name} is stored by value (cloudpickle) and cloudpickle is not installed here") from None
    payload = "".join(line for line in rest.splitlines() if line and not line.startswith("#"))
    try:
        cls = pickle.loads(base64.decodebytes(payload.encode("ascii")))  # the site owner's code, from sync only
    except Exception as exc:
        raise AppError(f"app {class_name}: its stored class failed to load (stored with cloudpickle "
                       f"{fields.get('cloudpickle', '?')}): {type(exc).__name__}: {exc}") from None
    if not isinstance(cls, type) or cls.__name__ != class_name:
        raise AppError(f"app {class_name}: its stored value is not the class {class_name}")
    return cls
