"""flow_sdk: write flowd processors in Python (componentize-py).

A processor is a class built from its `Setup` that handles batches of
CloudEvents; `bridge(cls)` (or `collector`, `distributor`, `signal`) turns it
into the two classes componentize-py looks for in the app module:

    import flow_sdk

    class KeepInvoices:
        def __init__(self, setup):                  # init(setup)
            setup.config.reject_unknown([])         # ConfigError names the key
        def process(self, batch, out):              # bridge process
            for event in batch:
                if event.type.endswith(".invoice"):
                    out.forward(event)

    WitWorld, Bridge = flow_sdk.bridge(KeepInvoices)

Build with `componentize-py -d wit -w bridge-processor componentize app -p .
-p sdk/python` (see docs/python.md and processors/enrich-py/build).

Method signatures per kind (`input` and `port` are port numbers):

- bridge:      `process(batch, out)`                  out is an `Output`
- collector:   `process(input, batch, out)`           out is an `Output`
- distributor: `process(batch, out)`                  out is a `RoutedOutput`
- signal:      `process(input, batch, out)` and `tick(now_ms, out)`, `RoutedOutput`

Optional: `update(setup)` (default: build a new instance with the new
configuration; on error the old one stays) and `teardown()`.

Errors: raise `ConfigError` (configuration refused, from `__init__` or
`update`), `EventError(index, message)` (one input event cannot be
processed), or `Failed` (the call as a whole). Any other exception becomes a
`failed` error with its type and message; the instance stays alive.

The batch layout is the packed form of wit/types.wit (docs/wit.md): `bytes`,
18 u32 words per event (nine offset/length spans: id, source, type, subject,
time, datacontenttype, dataschema, data, then first extension and extension
count), 5 words per extension (name span, value span, kind 0 string,
1 boolean, 2 integer). Emit words forward input event `i` (bit 31 clear) or
emit event `i` of the created batch (bit 31 set).

Host imports: `log(level, message)` (level "trace" .. "error"), `state_get`,
`state_set`, `state_delete`, `state_keys`, `now_ms()`. They call into the
host and work only inside the component.

This module is pure Python. The bindings (`wit_world`) that componentize-py
generates at build time are imported here at module level when present: a
component has no file system at run time, so everything it uses must be
imported while componentize-py pre-initialises it (import at the top of your
module, never inside a function). Without the bindings (plain CPython, unit
tests) the reading and writing classes work and the glue and host helpers
raise RuntimeError.
"""

import json as _json

try:
    from componentize_py_types import Err as _Err
    from wit_world.imports import clock as _clock
    from wit_world.imports import log as _log
    from wit_world.imports import state as _state
    from wit_world.imports import types as _types
except ImportError:  # not inside a component build
    _Err = _clock = _log = _state = _types = None


def _bindings():
    if _types is None:
        raise RuntimeError("flow_sdk: the wit_world bindings are not available "
                           "(not built by componentize-py)")

EVENT_WORDS = 18
EXTENSION_WORDS = 5
NO_DATA = 0xFFFFFFFF
CREATED = 1 << 31

STRING, BOOLEAN, INTEGER = 0, 1, 2

_ID, _SOURCE, _TYPE, _SUBJECT, _TIME, _DCT, _SCHEMA, _DATA, _EXT = range(0, 18, 2)

__all__ = [
    "Batch", "Event", "NewEvent", "Output", "RoutedOutput", "Config", "Setup",
    "ConfigError", "EventError", "Failed", "bridge", "collector", "distributor",
    "signal", "literal", "json_get", "json_set", "log", "now_ms", "state_get",
    "state_set", "state_delete", "state_keys",
]


# ---------------------------------------------------------------- errors

class FlowError(Exception):
    """Base of the errors a processor raises; becomes the WIT `error`."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class ConfigError(FlowError):
    """The configuration is not acceptable; the message names the key."""


class EventError(FlowError):
    """Input event `index` of the batch cannot be processed."""

    def __init__(self, index, message):
        super().__init__(message)
        self.index = index


class Failed(FlowError):
    """The call failed as a whole."""


# ---------------------------------------------------------------- config

class Config:
    """Ordered `key=value` pairs as the user gave them; keys may repeat."""

    def __init__(self, pairs):
        self.pairs = [(k, v) for k, v in pairs]

    def get(self, key, default=None):
        """The last value given for `key`."""
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return default

    def get_all(self, key):
        """Every value given for `key`, in order."""
        return [v for k, v in self.pairs if k == key]

    def require(self, key):
        """The last value given for `key`; ConfigError naming the key when it is missing."""
        value = self.get(key)
        if value is None:
            raise ConfigError(f"missing required key `{key}`")
        return value

    def __iter__(self):
        return iter(self.pairs)

    def reject_unknown(self, known, prefixes=()):
        """Raises ConfigError for the first key neither in `known` nor
        starting with one of `prefixes`, naming it and the accepted keys."""
        for k, _ in self.pairs:
            if k not in known and not any(k.startswith(p) for p in prefixes):
                expected = list(known) + [p + "<name>" for p in prefixes]
                raise ConfigError(
                    f"unknown key `{k}` (expected one of: {', '.join(expected)})")


class Setup:
    """What the host tells a fresh instance: config and port names."""

    def __init__(self, config, inputs, outputs):
        self.config = config if isinstance(config, Config) else Config(config)
        self.inputs = list(inputs)
        self.outputs = list(outputs)

    def output(self, name):
        """The port number of output `name` (or of the only output whose
        first label is `name`), or None."""
        if name in self.outputs:
            return self.outputs.index(name)
        hits = [i for i, o in enumerate(self.outputs) if o.split(".")[0] == name]
        return hits[0] if len(hits) == 1 else None

    def require_output(self, key, name):
        """The port of output `name` (the value of configuration `key`); ConfigError naming the key when there is no such output."""
        port = self.output(name)
        if port is None:
            raise ConfigError(
                f"`{key}` names output `{name}`, but the outputs are: {', '.join(self.outputs)}")
        return port


# ---------------------------------------------------------------- reading

class Batch:
    """A packed batch of input events; indexable and iterable as `Event`s."""

    __slots__ = ("bytes", "events", "extensions")

    def __init__(self, data, events, extensions):
        self.bytes = bytes(data)
        self.events = events
        self.extensions = extensions

    def __len__(self):
        return len(self.events) // EVENT_WORDS

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(index)
        return Event(self, index)

    def __iter__(self):
        for i in range(len(self)):
            yield Event(self, i)


class Event:
    """One input event, read from its batch on demand.

    `id`, `source`, `type` are strings; `subject`, `time`, `datacontenttype`,
    `dataschema` are strings or None; `data` is bytes or None; `index` is
    the event's position in the batch (what `Output.forward` and
    `EventError` take)."""

    __slots__ = ("batch", "index", "_base")

    def __init__(self, batch, index):
        self.batch = batch
        self.index = index
        self._base = index * EVENT_WORDS

    def _text(self, word):
        w = self.batch.events
        off, n = w[self._base + word], w[self._base + word + 1]
        return self.batch.bytes[off:off + n].decode()

    def _optional(self, word):
        return self._text(word) or None

    id = property(lambda self: self._text(_ID))
    source = property(lambda self: self._text(_SOURCE))
    type = property(lambda self: self._text(_TYPE))
    subject = property(lambda self: self._optional(_SUBJECT))
    time = property(lambda self: self._optional(_TIME))
    datacontenttype = property(lambda self: self._optional(_DCT))
    dataschema = property(lambda self: self._optional(_SCHEMA))

    @property
    def data(self):
        """The payload's bytes, or None when the event has no data."""
        w = self.batch.events
        off = w[self._base + _DATA]
        if off == NO_DATA:
            return None
        return self.batch.bytes[off:off + w[self._base + _DATA + 1]]

    def json(self):
        """The data parsed as JSON; EventError when absent or not JSON."""
        data = self.data
        if data is None:
            raise EventError(self.index, "event has no data")
        try:
            return _json.loads(data)
        except ValueError as e:
            raise EventError(self.index, f"data is not JSON: {e}") from None

    @property
    def extensions(self):
        """Extension attributes as an ordered dict name -> str/bool/int."""
        w, x, b = self.batch.events, self.batch.extensions, self.batch.bytes
        first, count = w[self._base + _EXT], w[self._base + _EXT + 1]
        out = {}
        for i in range(first, first + count):
            e = x[i * EXTENSION_WORDS:(i + 1) * EXTENSION_WORDS]
            name = b[e[0]:e[0] + e[1]].decode()
            value = b[e[2]:e[2] + e[3]].decode()
            if e[4] == BOOLEAN:
                value = value == "true"
            elif e[4] == INTEGER:
                try:
                    value = int(value)
                except ValueError:
                    pass
            out[name] = value
        return out

    def extension(self, name):
        """The extension attribute `name`, or None."""
        return self.extensions.get(name)

    def attribute(self, name):
        """A core attribute (`id`, `type`, ..., `specversion`) or an extension."""
        if name == "specversion":
            return "1.0"
        if name in ("id", "source", "type", "subject", "time", "datacontenttype", "dataschema"):
            return getattr(self, name)
        return self.extension(name)

    def to_new(self):
        """A `NewEvent` copy of this event to modify and emit."""
        return NewEvent(self.id, self.source, self.type, subject=self.subject,
                        time=self.time, datacontenttype=self.datacontenttype,
                        dataschema=self.dataschema, data=self.data,
                        extensions=self.extensions)


class NewEvent:
    """An event to emit: a new one or a modified copy (`Event.to_new`).

    Attributes as in `Event`; `data` is bytes or None; `extensions` an
    ordered dict of str, bool or int values (bool and int travel as the
    CloudEvents Boolean and Integer types)."""

    def __init__(self, id, source, type, subject=None, time=None,
                 datacontenttype=None, dataschema=None, data=None, extensions=None):
        self.id, self.source, self.type = id, source, type
        self.subject, self.time = subject, time
        self.datacontenttype, self.dataschema = datacontenttype, dataschema
        self.data = data
        self.extensions = dict(extensions or {})

    def set_json(self, value):
        """Sets the data to `value` as compact JSON, content type application/json."""
        self.data = _json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        self.datacontenttype = "application/json"
        return self


# ---------------------------------------------------------------- writing

class _Packer:
    def __init__(self):
        self.bytes = bytearray()
        self.events = []
        self.extensions = []

    def _span(self, value):
        if isinstance(value, str):
            value = value.encode()
        off = len(self.bytes)
        self.bytes += value
        return off, len(value)

    def pack(self, e):
        first = len(self.extensions) // EXTENSION_WORDS
        for name, value in e.extensions.items():
            if isinstance(value, bool):
                kind, text = BOOLEAN, "true" if value else "false"
            elif isinstance(value, int):
                kind, text = INTEGER, str(value)
            else:
                kind, text = STRING, str(value)
            self.extensions.extend((*self._span(name), *self._span(text), kind))
        words = []
        for value in (e.id, e.source, e.type, e.subject or "", e.time or "",
                      e.datacontenttype or "", e.dataschema or ""):
            words.extend(self._span(value))
        words.extend(self._span(e.data) if e.data is not None else (NO_DATA, 0))
        words.extend((first, len(e.extensions)))
        self.events.extend(words)
        return len(self.events) // EVENT_WORDS - 1

    def _to_wit(self, types):
        return types.Batch(bytes(self.bytes), self.events, self.extensions)


def _index(event):
    return event if isinstance(event, int) else event.index


class Output:
    """What a bridge or collector emits, in order, to its one output."""

    def __init__(self):
        self.created = _Packer()
        self.emits = []

    def forward(self, event):
        """Emits input event `event` (an Event or its index) unchanged."""
        self.emits.append(_index(event) & ~CREATED)

    def emit(self, new_event):
        """Emits a `NewEvent`."""
        self.emits.append(self.created.pack(new_event) | CREATED)

    def __len__(self):
        return len(self.emits)

    def _to_wit(self, types):
        return types.Output(self.created._to_wit(types), self.emits)


class RoutedOutput:
    """What a distributor or signal emits, each event to an output port."""

    def __init__(self):
        self.created = _Packer()
        self.emits = []
        self.ports = []

    def forward_to(self, port, event):
        """Emits input event `event` (an Event or its index) unchanged, to output `port`."""
        self.emits.append(_index(event) & ~CREATED)
        self.ports.append(port)

    def emit_to(self, port, new_event):
        """Emits a NewEvent to output `port`."""
        self.emits.append(self.created.pack(new_event) | CREATED)
        self.ports.append(port)

    def __len__(self):
        return len(self.emits)

    def _to_wit(self, types):
        return types.RoutedOutput(self.created._to_wit(types), self.emits, self.ports)


# ---------------------------------------------------------------- JSON helpers

def literal(text):
    """A configuration value: JSON when it parses (`42`, `true`, `"x"`),
    otherwise the bare string."""
    try:
        return _json.loads(text)
    except ValueError:
        return text


def json_get(value, path):
    """The value at dotted `path` (`a.b.0.c`), or None."""
    for seg in path.split(".") if path else ():
        if isinstance(value, dict):
            value = value.get(seg)
        elif isinstance(value, list) and seg.isdigit() and int(seg) < len(value):
            value = value[int(seg)]
        else:
            return None
    return value


def json_set(value, path, new):
    """Sets dotted `path` in dict `value`, creating objects on the way;
    False when a step crosses a scalar or an array index out of range."""
    segs = path.split(".")
    for seg in segs[:-1]:
        if isinstance(value, dict):
            value = value.setdefault(seg, {})
        elif isinstance(value, list) and seg.isdigit() and int(seg) < len(value):
            value = value[int(seg)]
        else:
            return False
    last = segs[-1]
    if isinstance(value, dict):
        value[last] = new
    elif isinstance(value, list) and last.isdigit() and int(last) < len(value):
        value[int(last)] = new
    else:
        return False
    return True


# ---------------------------------------------------------------- host imports

def log(level, message):
    """Writes to the host's log; level is "trace", "debug", "info", "warn" or "error"."""
    _bindings()
    _log.log(_log.Level[level.upper()], message)


def now_ms():
    """The host's wall clock, milliseconds since the Unix epoch."""
    _bindings()
    return _clock.now_ms()


def state_get(key):
    """The value (bytes) stored under `key`, or None. Writes of a call commit when it succeeds and roll back when it fails."""
    _bindings()
    return _state.get(key)


def state_set(key, value):
    """Stores `value` (bytes) under `key`."""
    _bindings()
    _state.set(key, bytes(value))


def state_delete(key):
    """Removes `key`."""
    _bindings()
    _state.delete(key)


def state_keys(prefix=""):
    """The keys that start with `prefix`, in byte order."""
    _bindings()
    return _state.keys(prefix)


# ---------------------------------------------------------------- export glue

def _to_wit_error(types, e):
    if isinstance(e, ConfigError):
        return types.Error_InvalidConfig(e.message)
    if isinstance(e, EventError):
        return types.Error_EventFailed(types.EventFailure(e.index, e.message))
    if isinstance(e, Failed):
        return types.Error_Failed(e.message)
    return types.Error_Failed(f"{type(e).__name__}: {e}")


def _glue(cls, kind):
    _bindings()
    Err, types = _Err, _types

    slot = {}

    def call(f, *args):
        try:
            return f(*args)
        except Err:
            raise
        except Exception as e:  # every error becomes the WIT `error`
            raise Err(_to_wit_error(types, e)) from None

    def processor():
        if "p" not in slot:
            raise Failed("processor called before init")
        return slot["p"]

    class WitWorld:
        def init(self, setup):
            s = Setup(setup.config, setup.inputs, setup.outputs)
            slot["p"] = call(cls, s)
            slot["setup"] = s

        def update(self, config):
            def do():
                p = processor()
                s = Setup(config, slot["setup"].inputs, slot["setup"].outputs)
                if hasattr(p, "update"):
                    p.update(s)
                else:
                    slot["p"] = cls(s)
                slot["setup"] = s
            call(do)

        def teardown(self):
            p = slot.pop("p", None)
            if p is not None and hasattr(p, "teardown"):
                try:
                    p.teardown()
                except Exception:
                    pass

    def batch(raw):
        return Batch(raw.bytes, raw.events, raw.extensions)

    def run(out, method, *args):
        call(lambda: getattr(processor(), method)(*args, out))
        return out._to_wit(types)

    if kind == "bridge":
        class Kind:
            def process(self, events):
                return run(Output(), "process", batch(events))
    elif kind == "collector":
        class Kind:
            def process(self, input, events):
                return run(Output(), "process", input, batch(events))
    elif kind == "distributor":
        class Kind:
            def process(self, events):
                return run(RoutedOutput(), "process", batch(events))
    else:
        class Kind:
            def process(self, input, events):
                return run(RoutedOutput(), "process", input, batch(events))

            def tick(self, now_ms):
                return run(RoutedOutput(), "tick", now_ms)
    return WitWorld, Kind


def bridge(cls):
    """`WitWorld, Bridge = bridge(MyProcessor)` in the app module."""
    return _glue(cls, "bridge")


def collector(cls):
    """`WitWorld, Collector = collector(MyProcessor)` in the app module."""
    return _glue(cls, "collector")


def distributor(cls):
    """`WitWorld, Distributor = distributor(MyProcessor)` in the app module."""
    return _glue(cls, "distributor")


def signal(cls):
    """`WitWorld, Signal = signal(MyProcessor)` in the app module."""
    return _glue(cls, "signal")
