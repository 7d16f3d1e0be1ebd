"""Models, fields, managers and lazy queries: the ORM-style layer of the Python API.

A model instance keeps the row it was loaded with (``_row``, DB representation) and decodes a field on
first access. ``save()`` compares each field's current value, encoded, with the loaded one, so changes made
in place (``job.data["k"] = v``) are saved too (Balsam 0.7 missed them).

A query is lazy and chainable; it runs on first iteration, ``len``, ``bool``, indexing or ``count()``, and
caches its results. It touches the sites chosen by :mod:`balsam._api.sites`; results from several sites are
merged in the requested order.
"""

from __future__ import annotations

import datetime as _dt
import operator
from pathlib import Path, PurePath, PurePosixPath
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ClassVar,
    Dict,
    Generic,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    overload,
)

from balsam._api import sites as _sites
from balsam._api.schemas import records
from balsam.db import query as q
from balsam.db.codec import decode_parameters, dumps, encode_parameters, loads
from balsam.exceptions import CommandPending, MultipleObjectsReturned, ObjectDoesNotExist, ValidationError

if TYPE_CHECKING:
    from balsam._api.queued import QueuedWrite
    from balsam._api.sites import SiteRef

M = TypeVar("M", bound="Model")
UTC = _dt.timezone.utc


class _Lazy:
    """Marks a row snapshot that will be built on first use (bulk creation defers it)."""

    def __repr__(self) -> str:
        return "<lazy row>"


LAZY_ROW = _Lazy()


def row_of(obj: Any) -> Optional[Dict[str, Any]]:
    """The object's loaded row (DB representation), building a deferred one now; None for a new object."""
    d = obj.__dict__
    row = d.get("_row")
    if row is LAZY_ROW:
        row = d["_row"] = obj._materialize_row()
    return row  # type: ignore[no-any-return]


def _as_utc(other: Any) -> Any:
    return other.replace(tzinfo=UTC) if isinstance(other, _dt.datetime) and other.tzinfo is None else other


class UTCTime(_dt.datetime):
    """An aware UTC datetime (every time the API returns) that also meets a naive one, taken as UTC: Balsam 0.7 gave
    naive UTC times, and its users write ``datetime.utcnow() - job.last_update`` or compare with ``hour_ago``, which
    an aware datetime alone refuses ("can't subtract offset-naive and offset-aware datetimes"). Python tries this
    subclass's reflected operator first, so ``naive - t`` and ``naive < t`` work too."""

    __slots__ = ()

    def __sub__(self, other: Any) -> Any:  # type: ignore[override]
        return _dt.datetime.__sub__(self, _as_utc(other))

    def __rsub__(self, other: Any) -> Any:
        return _dt.datetime.__sub__(_as_utc(other), self) if isinstance(other, _dt.datetime) else NotImplemented

    def __eq__(self, other: object) -> bool:
        return _dt.datetime.__eq__(self, _as_utc(other))

    def __ne__(self, other: object) -> bool:
        return _dt.datetime.__ne__(self, _as_utc(other))

    def __lt__(self, other: Any) -> bool:  # type: ignore[override]
        return _dt.datetime.__lt__(self, _as_utc(other))

    def __le__(self, other: Any) -> bool:  # type: ignore[override]
        return _dt.datetime.__le__(self, _as_utc(other))

    def __gt__(self, other: Any) -> bool:  # type: ignore[override]
        return _dt.datetime.__gt__(self, _as_utc(other))

    def __ge__(self, other: Any) -> bool:  # type: ignore[override]
        return _dt.datetime.__ge__(self, _as_utc(other))

    __hash__ = _dt.datetime.__hash__

    def __repr__(self) -> str:  # shown as the datetime it is
        return repr(_dt.datetime(self.year, self.month, self.day, self.hour, self.minute, self.second, self.microsecond, self.tzinfo))


def to_datetime(ts: Optional[float]) -> Optional[_dt.datetime]:
    """Seconds since the epoch as an aware UTC datetime (:class:`UTCTime`)."""
    return None if ts is None else UTCTime.fromtimestamp(ts, UTC)


def from_datetime(value: Any) -> Optional[float]:
    """An aware or naive-UTC datetime (or epoch seconds) as epoch seconds."""
    return None if value is None else q.to_timestamp(value)


class Field:
    """A model attribute backed by a column; decodes lazily, encodes for change detection and writes."""

    def __init__(self, kind: str = "plain", default: Any = None, writable: bool = True) -> None:
        self.kind = kind
        self.default = default
        self.writable = writable
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def decode(self, raw: Any) -> Any:
        kind = self.kind
        if kind == "plain" or raw is None and kind not in ("json", "records"):
            return raw
        if kind in ("json", "records"):
            value = loads(raw) if raw is not None else (self.default() if callable(self.default) else self.default)
            return records(value) if kind == "records" else value
        if kind == "time":
            return to_datetime(raw)
        if kind == "bool":
            return bool(raw)
        if kind == "params":
            return decode_parameters(raw)
        if kind == "state":
            from balsam.db.states import JobState
            return JobState(raw)
        if kind == "path":
            return Path(raw)
        return raw

    def encode(self, value: Any) -> Any:
        kind = self.kind
        if kind == "plain":
            return value
        if kind in ("json", "records"):
            return dumps(value)
        if kind == "time":
            return from_datetime(value)
        if kind == "bool":
            return 1 if value else 0
        if kind == "params":
            return encode_parameters(value or {})
        if kind == "state":
            return None if value is None else str(value.value if hasattr(value, "value") else value)
        if kind == "path":
            return None if value is None else str(value)
        return value

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        try:
            return d[self.name]
        except KeyError:
            pass
        row = d.get("_row")
        if row is LAZY_ROW:
            row = row_of(obj)
        if row is not None and self.name in row:
            if self.kind == "params":  # the JSON, with the out-of-band pickled values over their placeholders
                pickled = row.get("parameters_pickled")
                if pickled and getattr(d.get("_site"), "via_relay", False):
                    pickled = None  # never loaded from what a relay served (DESIGN.md 7): the placeholders stay
                value = decode_parameters(row[self.name], pickled)
            else:
                value = self.decode(row[self.name])
        else:
            value = self.default() if callable(self.default) else self.default
        d[self.name] = value
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


class PathStr(str):
    """A path kept as text (a job's workdir, relative to the site's data/ folder; a transfer item's local and remote
    paths): text, as it is stored, compared and shown, that also has the path methods of Balsam 0.7's ``Path``-typed
    fields (``job.workdir.as_posix()``, ``.name``, ``.parent``, ``job.workdir / "job.out"``) and equals the same path
    given as a ``Path``."""

    __slots__ = ()

    def as_posix(self) -> str:
        return str.__str__(self)

    @property
    def _path(self) -> PurePosixPath:
        return PurePosixPath(str.__str__(self))

    @property
    def name(self) -> str:
        return self._path.name

    @property
    def stem(self) -> str:
        return self._path.stem

    @property
    def suffix(self) -> str:
        return self._path.suffix

    @property
    def parts(self) -> Tuple[str, ...]:
        return self._path.parts

    @property
    def parent(self) -> Path:
        return Path(self._path.parent)

    def joinpath(self, *other: Any) -> Path:
        return Path(str.__str__(self)).joinpath(*other)

    def __truediv__(self, other: Union[str, "PurePath"]) -> Path:
        return Path(str.__str__(self)) / other

    def __fspath__(self) -> str:
        return str.__str__(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PurePath):
            return PurePosixPath(str.__str__(self)) == PurePosixPath(other.as_posix())
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__


class IdSet(List[int]):
    """A job's parent ids: a list (as stored and sent), that equals the same ids given as a set, as Balsam 0.7's
    ``Set[int]``-typed field did (``child.parent_ids == {parent.id}``)."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (set, frozenset)):
            return set(self) == other
        return list.__eq__(self, other)  # type: ignore[no-any-return]

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]


class TypedField(Field):
    """A Field whose value is handed out as ``wrap(value)`` (:class:`PathStr`, :class:`IdSet`): stored and written
    as the plain value."""

    def __init__(self, wrap: Callable[[Any], Any], kind: str = "plain", default: Any = None, writable: bool = True) -> None:
        super().__init__(kind, default, writable)
        self.wrap = wrap

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        value = super().__get__(obj, owner)
        if obj is None or value is None or type(value) is self.wrap:
            return value
        value = obj.__dict__[self.name] = self.wrap(value)
        return value


class Model:
    """Base of the API models. Subclasses declare Fields and a table spec."""

    _spec: ClassVar[q.TableSpec]
    _columns: ClassVar[Tuple[str, ...]]
    _fields: ClassVar[Dict[str, Field]]
    objects: ClassVar["Manager[Any]"]
    DoesNotExist: ClassVar[Type[ObjectDoesNotExist]]
    MultipleObjectsReturned: ClassVar[Type[MultipleObjectsReturned]]
    _read_only: ClassVar[bool] = False

    id: Optional[int]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: Dict[str, Field] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Field):
                    fields[name] = value
        cls._fields = fields
        # Each model's own classes, based on the ones a model names (Site's and App's, which the errors of site and
        # app lookups elsewhere derive from, so ``except Site.DoesNotExist`` catches an unknown ``site=`` too).
        cls.DoesNotExist = cls.__dict__.get("_does_not_exist") or type(
            "DoesNotExist", (ObjectDoesNotExist,), {"__module__": cls.__module__, "__qualname__": f"{cls.__name__}.DoesNotExist"})
        cls.MultipleObjectsReturned = cls.__dict__.get("_multiple_objects") or type(
            "MultipleObjectsReturned", (MultipleObjectsReturned,), {"__module__": cls.__module__, "__qualname__": f"{cls.__name__}.MultipleObjectsReturned"}
        )

    # ---------------------------------------------------------------- construction
    def _init_fields(self, values: Dict[str, Any]) -> None:
        self.__dict__["_row"] = None
        self.__dict__["_site"] = None
        for name, value in values.items():
            if name not in self._fields:
                raise ValidationError(f"{type(self).__name__} has no field {name!r} (fields: {', '.join(sorted(self._fields))})")
            setattr(self, name, value)

    @classmethod
    def _from_row(cls: Type[M], site: "SiteRef", row: Sequence[Any]) -> M:
        obj = cls.__new__(cls)
        d = obj.__dict__
        d["_row"] = dict(zip(cls._columns, row))
        d["_site"] = site
        return obj

    @property
    def site_id(self) -> Optional[int]:
        """The id of the site this object lives in."""
        site = self.__dict__.get("_site")
        return None if site is None else site.id

    @property
    def _is_new(self) -> bool:
        return self.__dict__.get("_row") is None

    @property
    def _state(self) -> str:
        """Balsam 0.7's lifecycle of a model object: "creating" (never saved), "dirty" (fields assigned since it was
        loaded or saved) or "clean"."""
        if self._is_new:
            return "creating"
        return "dirty" if self._changed_fields() else "clean"

    def _changed_fields(self) -> Dict[str, Any]:
        """Writable fields whose current value differs from the loaded one: name -> Python value."""
        row = row_of(self) or {}
        d = self.__dict__
        out = {}
        for name, f in self._fields.items():
            if not f.writable or name not in d:
                continue
            value = d[name]
            try:
                if f.kind == "params":
                    if name not in row or f.encode(value) != (row[name], row.get("parameters_pickled")):
                        out[name] = value
                    continue
                if f.encode(value) != row.get(name, f.encode(f.default() if callable(f.default) else f.default)) or name not in row:
                    out[name] = value
            except (TypeError, ValueError, AttributeError):
                out[name] = value  # a value its column cannot hold: the write refuses it, naming the field
        return out

    def _materialize_row(self) -> Dict[str, Any]:
        raise NotImplementedError

    def _reload_from(self, row: Sequence[Any]) -> None:
        d = self.__dict__
        for name in self._fields:
            d.pop(name, None)
        d.pop("_new_row", None)
        d["_row"] = dict(zip(self._columns, row))

    # ---------------------------------------------------------------- persistence (subclasses implement the writes)
    def save(self) -> None:
        """Create the object, or write the fields changed since it was loaded."""
        raise NotImplementedError

    @property
    def queued_command(self) -> Optional[int]:
        """The relay command that creates, changes or deletes this object, while its site has not applied it (None
        otherwise): ``save()`` or ``delete()`` through a relay whose site is offline queues the write, and
        ``refresh_from_db()`` shows the outcome (see :mod:`balsam._api.queued`)."""
        queued = self.__dict__.get("_queued")
        return None if queued is None else int(queued[0])

    @property
    def queued(self) -> Optional["QueuedWrite"]:
        """The queued write as a handle (its command, site and the relay's message), or None."""
        from balsam._api.queued import QueuedWrite

        queued = self.__dict__.get("_queued")
        if queued is None:
            return None
        return QueuedWrite(self.__dict__["_site"], queued[0], f"{queued[2]} of {self._label()}", queued[3])

    def _label(self) -> str:
        return f"{type(self).__name__} {self.id}" if self.id is not None else f"new {type(self).__name__}"

    def _queue(self, command_id: int, detail: Any = None, kind: str = "create", message: str = "") -> None:
        """Mark the object as written by a queued relay command (``kind``: create, update or delete; ``detail``:
        what resolving a create needs)."""
        self.__dict__["_queued"] = (int(command_id), detail, kind, message)

    def _queued_pending(self, error: CommandPending, kind: str) -> None:
        """Keep the write the relay queued (``error`` names its command) as this object's handle."""
        from balsam._api.queued import QueuedWrite

        QueuedWrite.from_pending(self.__dict__["_site"], error, f"{kind} of {self._label()}")
        self._queue(int(error.command_id or 0), None, kind, str(error))

    def _refuse_if_queued(self) -> None:
        queued = self.__dict__.get("_queued")
        if queued is not None:
            raise ValidationError(f"{self._label()} already has its {queued[2]} queued at the relay as command {queued[0]}: "
                                  "refresh_from_db() resolves it once its site syncs")

    def _resolve_queued(self) -> bool:
        """Ask the relay about the queued write: applied, a create gets its real id; refused, the site's error is
        raised (a create is new again, a change or delete did nothing); still queued, CommandPending. Returns
        whether the object was deleted."""
        return self._settle(self.__dict__["_site"].backend.queued_command(self.__dict__["_queued"][0]))

    def _settle(self, answer: Dict[str, Any]) -> bool:
        """Take the relay's answer about this object's queued write (see :meth:`_resolve_queued`)."""
        command_id, detail, kind = self.__dict__["_queued"][:3]
        if answer["state"] == "rejected":
            del self.__dict__["_queued"]  # nothing was written: saving it again makes a new command
            raise answer["error"]
        if answer["state"] != "applied":
            raise CommandPending(f"{self._label()}: {kind} still queued at the relay as command {command_id}: its site has not "
                                 "synced yet ('balsam site ls' shows when it was last seen)", command_id)
        del self.__dict__["_queued"]
        if kind == "create":
            self._created_by_command(detail, answer["result"])
        elif kind == "delete":
            self._deleted()
            return True
        return False

    def _deleted(self) -> None:
        """The object after its row was deleted: new again, with no id (saving it creates a new row)."""
        self.__dict__["_row"] = None
        self.__dict__["id"] = None

    def _created_by_command(self, detail: Any, result: Any) -> None:
        """Take the real id from the applied command's result."""
        raise NotImplementedError

    def refresh_from_db(self) -> None:
        """Reload every field from the site DB. A write queued at the relay is resolved first (see
        ``queued_command``): an applied delete leaves the object deleted (``id`` None), a refused write raises the
        site's error."""
        if self.__dict__.get("_queued") is not None and self._resolve_queued():
            return
        if self._is_new or self.id is None:
            raise ValidationError(f"this {type(self).__name__} was never saved")
        site = self.__dict__["_site"]
        rows = site.backend.select(self._spec.table, {"id": self.id}, columns=self._columns)
        if not rows:
            raise self.DoesNotExist(f"{type(self).__name__} {self.id} no longer exists")
        self._reload_from(rows[0])

    def display_dict(self) -> Dict[str, Any]:
        """Every field's value, for printing."""
        out: Dict[str, Any] = {"site_id": self.site_id}
        for name in self._fields:
            out[name] = getattr(self, name)
        return out

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={_short(getattr(self, k))!r}" for k in self._repr_fields())
        return f"{type(self).__name__}({shown})"

    def _repr_fields(self) -> Sequence[str]:
        return [n for n in self._fields][:6]

    def _repr_html_(self) -> str:
        """Jupyter's view: a table of the fields."""
        from balsam._api.display import model_html

        return model_html(self)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Model)
        if self.id is None or other.id is None:
            return self is other
        return bool(self.id == other.id and self.site_id == other.site_id)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.site_id, self.id if self.id is not None else id(self)))


class Query(Generic[M]):
    """A lazy, chainable, cached query over one model, across the sites in scope."""

    def __init__(
        self,
        manager: "Manager[M]",
        filters: Optional[Dict[str, Any]] = None,
        order: Tuple[str, ...] = (),
        lo: Optional[int] = None,
        hi: Optional[int] = None,
    ) -> None:
        self._manager = manager
        self._model = manager.model
        self._filters: Dict[str, Any] = dict(filters or {})
        self._order = order
        self._lo = lo
        self._hi = hi
        self._cache: Optional[List[M]] = None

    def _clone(self, **changes: Any) -> "Query[M]":
        args: Dict[str, Any] = {"filters": self._filters, "order": self._order, "lo": self._lo, "hi": self._hi}
        args.update(changes)
        return type(self)(self._manager, **args)

    @property
    def _sliced(self) -> bool:
        return self._lo is not None or self._hi is not None

    # ---------------------------------------------------------------- building
    def filter(self, **kwargs: Any) -> "Query[M]":
        """Narrow the query (keywords as in Balsam 0.7, or as the Django ORM of Balsam 0.x spells them:
        ``state__in``, ``tags__experiment``, ``last_update__gte``...; an unknown one is an error)."""
        if self._sliced:
            raise ValidationError("cannot filter a query after slicing it")
        filters = dict(self._filters)
        for key, value in q.django_lookups(self._model._spec, kwargs).items():
            if key in filters and key in ("tags", "data", "filter_tags"):
                merged = dict(q.tag_pairs(filters[key]))
                merged.update(q.tag_pairs(value))
                value = {k: v for k, v in merged.items()}
            filters[key] = value
        _check_filters(self._model, filters)
        return self._clone(filters=filters)

    def order_by(self, *fields: Optional[str]) -> "Query[M]":
        """Order by fields (``-field`` descending); ``order_by(None)`` restores the default."""
        if self._sliced:
            raise ValidationError("cannot order a query after slicing it")
        order = tuple(f for f in fields if f)
        q.order_clause(self._model._spec, order)  # validates
        return self._clone(order=order)

    # ---------------------------------------------------------------- running
    def _fetch(self) -> List[M]:
        if self._cache is not None:
            return self._cache
        filters = dict(self._filters)
        sites = _sites.scope(filters)
        model = self._model
        spec = model._spec
        lo = self._lo or 0
        hi = self._hi
        results: List[M] = []
        if len(sites) == 1:
            site = sites[0]
            limit = None if hi is None else max(hi - lo, 0)
            rows = site.backend.iterate(spec.table, filters, columns=model._columns, order_by=self._order, limit=limit, offset=lo)
            results = [model._from_row(site, r) for r in rows]  # from another host, each page while the next comes
        else:
            def read(site: "SiteRef") -> List[M]:
                rows = site.backend.select(spec.table, filters, columns=model._columns, order_by=self._order, limit=hi)
                return [model._from_row(site, r) for r in rows]

            for part in _sites.readable(sites, read):
                results.extend(part)
            results = _merge_sort(results, self._order or spec.default_order)
            results = results[lo:hi]
        self._cache = results
        return results

    def __iter__(self) -> Iterator[M]:
        return iter(self._fetch())

    def __len__(self) -> int:
        return len(self._fetch())

    def __bool__(self) -> bool:
        return bool(self._fetch())

    @overload
    def __getitem__(self, key: int) -> M: ...

    @overload
    def __getitem__(self, key: slice) -> "Query[M]": ...

    def __getitem__(self, key: Union[int, slice]) -> Union[M, "Query[M]"]:
        if isinstance(key, slice):
            step = _slice_bound(key.step)
            if step is not None and step != 1:
                # Balsam 0.7 gave every step-th object of the slice (as a list); here a query holding them, so
                # count(), update() and delete() act on exactly those. Its own slice took the start twice.
                if step < 1:
                    raise ValidationError(f"query slices take a positive step, got {step}")
                part = self[key.start:key.stop]
                part._cache = part._fetch()[::step]
                return part
            start, stop = _slice_bound(key.start), _slice_bound(key.stop)
            if (start is not None and start < 0) or (stop is not None and stop < 0):
                raise ValidationError("query slices cannot use negative indices")
            base = self._lo or 0
            # No site holds 2**62 rows: a bound past that (10**30) means "to the end", on every backend alike.
            new_lo = min(base + (start or 0), MAX_ROWS)
            new_hi = None if stop is None else min(base + stop, MAX_ROWS)
            if self._hi is not None:
                new_hi = self._hi if new_hi is None else min(new_hi, self._hi)
            return self._clone(lo=new_lo, hi=new_hi)
        if not isinstance(key, int) or isinstance(key, bool):
            raise TypeError("query indices must be integers or slices")
        if key < 0:
            raise ValidationError("queries cannot use negative indices")
        if key >= MAX_ROWS:
            raise IndexError("query index out of range")
        if self._cache is not None:
            return self._cache[key]
        items = list(self[key : key + 1])
        if not items:
            raise IndexError("query index out of range")
        return items[0]

    def __repr__(self) -> str:
        items = self._fetch()
        shown = ", ".join(repr(o) for o in items[:5])
        more = f", ...({len(items) - 5} more)" if len(items) > 5 else ""
        return f"<Query [{shown}{more}]>"

    def _repr_html_(self) -> str:
        """Jupyter's view: the first rows, the total and counts by state, "N more" (never every row)."""
        from balsam._api.display import query_html

        return query_html(self)

    def count(self) -> int:
        """How many objects match (without loading them)."""
        if self._cache is not None:
            return len(self._cache)
        if self._sliced:
            return len(self._fetch())
        filters = dict(self._filters)
        table = self._model._spec.table
        return sum(_sites.readable(_sites.scope(filters), lambda site: site.backend.count(table, filters)))

    def first(self) -> Optional[M]:
        """The first object in order, or None."""
        items = list(self[0:1]) if not self._sliced else self._fetch()[:1]
        return items[0] if items else None

    def get(self, **kwargs: Any) -> M:
        """The one object matching; DoesNotExist or MultipleObjectsReturned otherwise."""
        query = self.filter(**kwargs) if kwargs else self
        items = list(query[0:2]) if not query._sliced else query._fetch()[:2]
        model = self._model
        if not items:
            raise model.DoesNotExist(f"no {model.__name__} matches {_describe_filters(query._filters)}")
        if len(items) > 1:
            raise model.MultipleObjectsReturned(f"more than one {model.__name__} matches {_describe_filters(query._filters)}")
        return items[0]

    def exists(self) -> bool:
        """True if anything matches."""
        return self.first() is not None

    def _per_site_ids(self) -> List[Tuple["SiteRef", List[int]]]:
        if self._sliced:
            return [(site, [int(o.id or 0) for o in objs]) for site, objs in by_site(self._fetch())]
        filters = dict(self._filters)
        out = []
        for site in _sites.scope(filters):
            out.append((site, site.backend.ids(self._model._spec.table, filters)))
        return out

    def update(self, **fields: Any) -> int:
        """Write ``fields`` to every matching object; returns how many were updated."""
        return self._manager._query_update(self, fields)

    def delete(self) -> int:
        """Delete every matching object; returns how many were deleted."""
        return self._manager._query_delete(self)


MAX_ROWS = 2**62
"""More rows than any site holds: slice bounds past it are cut to it."""


def _slice_bound(value: Any) -> Optional[int]:
    """A query slice's start or stop: None or an integer (a float, text or bool is refused by name)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationError(f"query slices take integers, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValidationError(f"query slices take integers, got {value!r:.80}") from None


def _short(value: Any) -> Any:
    """Enums show as their value, datetimes as ISO text: reprs meant for people."""
    if isinstance(value, str) and type(value) is not str:
        return str(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat(timespec="seconds")
    return value


def by_site(objects: Iterable[M]) -> List[Tuple["SiteRef", List[M]]]:
    """Objects grouped by the site they live in (writes and refreshes go one transaction per site)."""
    groups: Dict[Path, Tuple["SiteRef", List[M]]] = {}
    for obj in objects:
        site = obj.__dict__["_site"]
        groups.setdefault(site.path, (site, []))[1].append(obj)
    return list(groups.values())


def _describe_filters(filters: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in filters.items()) or "(no filters)"


def _check_filters(model: Type[Model], filters: Dict[str, Any]) -> None:
    """Refuse a bad filter when the query is built, with the same error on the home host and from another host
    (:func:`balsam.db.query.check_filters`); the site scope keys are checked when the query runs."""
    q.check_filters(model._spec, filters)


def _merge_sort(items: List[M], order: Sequence[str]) -> List[M]:
    keys = list(order)
    if not any(k.lstrip("-+") == "id" for k in keys):
        keys.append(("-" if keys and keys[-1].startswith("-") else "") + "id")
    for key in reversed(keys):
        name = key.lstrip("-+")
        col = name

        def k(o: Any, col: str = col) -> Tuple[bool, Any]:
            v = o.__dict__["_row"].get(col)
            return (v is not None, v if v is not None else 0)

        items.sort(key=k, reverse=key.startswith("-"))
    return items


class Manager(Generic[M]):
    """``Model.objects``: the entry point of queries and creation."""

    def __init__(self, model: Type[M]) -> None:
        self.model = model

    def all(self) -> Query[M]:
        """Every object in scope."""
        return Query(self)

    def filter(self, **kwargs: Any) -> Query[M]:
        """Objects matching the Balsam filter keywords."""
        return Query(self).filter(**kwargs)

    def get(self, **kwargs: Any) -> M:
        """The one object matching; DoesNotExist or MultipleObjectsReturned otherwise."""
        return Query(self).get(**kwargs)

    def order_by(self, *fields: Optional[str]) -> Query[M]:
        """Every object in scope, ordered (``-field`` descending)."""
        return Query(self).order_by(*fields)

    def first(self) -> Optional[M]:
        """The first object in the default order, or None."""
        return Query(self).first()

    def count(self) -> int:
        """How many objects are in scope (without loading them)."""
        return Query(self).count()

    def create(self, *args: Any, **kwargs: Any) -> M:
        """Build and save one object (the model's own arguments: ``Job.objects.create("test/1", app_id=...)``)."""
        obj = self.model(*args, **kwargs)
        obj.save()
        return obj

    def _query_update(self, query: Query[M], fields: Dict[str, Any]) -> int:
        raise ValidationError(f"{self.model.__name__} objects cannot be updated in bulk")

    def _query_delete(self, query: Query[M]) -> int:
        raise ValidationError(f"{self.model.__name__} objects cannot be deleted in bulk")


def bind_manager(model: Type[M], manager_cls: Callable[[Type[M]], Manager[M]] = Manager) -> None:
    """Attach ``model.objects``."""
    model.objects = manager_cls(model)
