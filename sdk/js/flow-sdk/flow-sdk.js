/**
 * flow-sdk.js: write flowd processors in JavaScript (componentize-js).
 *
 * A processor is a class constructed from its `Setup` that handles batches
 * of CloudEvents; `bridge(Class)` (or `collector`, `distributor`, `signal`)
 * returns the exports componentize-js expects, which the entry module
 * re-exports:
 *
 *     import * as flow from '@flowd/flow-sdk';   // in this repository: '../../sdk/js/flow-sdk/flow-sdk.js'
 *
 *     class KeepInvoices {
 *       constructor(setup) { setup.config.rejectUnknown([]); }  // init(setup)
 *       process(batch, out) {                                    // bridge process
 *         for (const event of batch) {
 *           if (event.type.endsWith('.invoice')) out.forward(event);
 *         }
 *       }
 *     }
 *
 *     export const { init, update, teardown, bridge } = flow.bridge(KeepInvoices);
 *
 * Build with sdk/js/build-component, which bundles the entry module and this
 * one (rolldown, from jco's dependencies) and runs componentize-js against
 * wit/ (see docs/javascript.md).
 *
 * Method signatures per kind (`input` and `port` are port numbers):
 * - bridge:      process(batch, out)           out is an Output
 * - collector:   process(input, batch, out)    out is an Output
 * - distributor: process(batch, out)           out is a RoutedOutput
 * - signal:      process(input, batch, out) and tick(nowMs, out), RoutedOutput
 *   (nowMs is a BigInt: WIT u64)
 * Optional: update(setup) (default: construct a new instance with the new
 * configuration; on error the old one stays) and teardown().
 *
 * Errors: throw ConfigError (configuration refused, from the constructor or
 * update), EventError(index, message) (one input event cannot be processed)
 * or Failed (the call as a whole). Any other exception becomes a `failed`
 * error with its message; the instance stays alive.
 *
 * The batch layout is the packed form of wit/types.wit (docs/wit.md):
 * `bytes`, 18 u32 words per event (nine offset/length spans: id, source,
 * type, subject, time, datacontenttype, dataschema, data, then first
 * extension and extension count), 5 words per extension (name span, value
 * span, kind 0 string, 1 boolean, 2 integer). Emit words forward input event
 * `i` (bit 31 clear) or emit event `i` of the created batch (bit 31 set).
 *
 * Host imports (log, state, clock) are WIT imports: import them in the entry
 * module from 'eson:flow/log@0.1.0', 'eson:flow/state@0.1.0',
 * 'eson:flow/clock@0.1.0' (e.g. `import { nowMs } from
 * 'eson:flow/clock@0.1.0'`). This module imports nothing, so it also runs
 * under plain Node.
 */

/** Words per event in a batch's `events` table (docs/wit.md). */
export const EVENT_WORDS = 18;
/** Words per extension in a batch's `extensions` table. */
export const EXTENSION_WORDS = 5;
/** The data offset of an event without data. */
export const NO_DATA = 0xffffffff;
/** Bit 31 of an emit: the index is into the created batch, not the input. */
export const CREATED = 0x80000000;
/** The CloudEvents type of an extension value. */
export const STRING = 0, BOOLEAN = 1, INTEGER = 2;

const ID = 0, SOURCE = 2, TYPE = 4, SUBJECT = 6, TIME = 8, DCT = 10, SCHEMA = 12,
  DATA = 14, EXT = 16;

const decoder = new TextDecoder();
const encoder = new TextEncoder();

// ------------------------------------------------------------------ errors

/** What a processor throws to fail in a way the host understands (the three below). */
export class FlowError extends Error {}
/** The configuration is not acceptable; the message names the key. */
export class ConfigError extends FlowError {}
/** Input event `index` of the batch cannot be processed. */
export class EventError extends FlowError {
  /** `index` is the event's position in the batch (Event.index). */
  constructor(index, message) { super(message); this.index = index; }
}
/** The call failed as a whole. */
export class Failed extends FlowError {}

function toWitError(e) {
  if (e instanceof ConfigError) return { tag: 'invalid-config', val: e.message };
  if (e instanceof EventError) return { tag: 'event-failed', val: { index: e.index, message: e.message } };
  if (e instanceof Failed) return { tag: 'failed', val: e.message };
  const text = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return { tag: 'failed', val: text };
}

// ------------------------------------------------------------------ config

/** Ordered `key=value` pairs as the user gave them; keys may repeat. */
export class Config {
  /** From `[key, value]` pairs (the SDK makes one from the setup). */
  constructor(pairs) { this.pairs = pairs.map(([k, v]) => [k, v]); }
  /** The last value given for `key`, or undefined. */
  get(key) {
    for (let i = this.pairs.length - 1; i >= 0; i--) if (this.pairs[i][0] === key) return this.pairs[i][1];
    return undefined;
  }
  /** Every value given for `key`, in order. */
  getAll(key) { return this.pairs.filter(([k]) => k === key).map(([, v]) => v); }
  /** The last value given for `key`; ConfigError naming the key when it is missing. */
  require(key) {
    const v = this.get(key);
    if (v === undefined) throw new ConfigError(`missing required key \`${key}\``);
    return v;
  }
  [Symbol.iterator]() { return this.pairs[Symbol.iterator](); }
  /** Throws ConfigError for the first key neither in `known` nor starting
   * with one of `prefixes`, naming it and the accepted keys. */
  rejectUnknown(known, prefixes = []) {
    for (const [k] of this.pairs) {
      if (!known.includes(k) && !prefixes.some((p) => k.startsWith(p))) {
        const expected = [...known, ...prefixes.map((p) => `${p}<name>`)];
        throw new ConfigError(`unknown key \`${k}\` (expected one of: ${expected.join(', ')})`);
      }
    }
  }
}

/** What the host tells a fresh instance: config and port names. */
export class Setup {
  /** From a Config (or its pairs) and the input and output port names. */
  constructor(config, inputs, outputs) {
    this.config = config instanceof Config ? config : new Config(config);
    this.inputs = [...inputs];
    this.outputs = [...outputs];
  }
  /** Port number of output `name` (or of the only output whose first label
   * is `name`), or undefined. */
  output(name) {
    const at = this.outputs.indexOf(name);
    if (at >= 0) return at;
    const hits = [];
    this.outputs.forEach((o, i) => { if (o.split('.')[0] === name) hits.push(i); });
    return hits.length === 1 ? hits[0] : undefined;
  }
  /** The port of output `name`, the value of configuration `key`; ConfigError naming the key when there is no such output. */
  requireOutput(key, name) {
    const port = this.output(name);
    if (port === undefined) {
      throw new ConfigError(`\`${key}\` names output \`${name}\`, but the outputs are: ${this.outputs.join(', ')}`);
    }
    return port;
  }
}

// ------------------------------------------------------------------ reading

/** A packed batch of input events; iterable, `get(i)` for one Event. */
export class Batch {
  /** From the WIT batch record (`bytes`, `events`, `extensions`), as the host passes it. */
  constructor(raw) {
    this.bytes = raw.bytes;
    this.events = raw.events;
    this.extensions = raw.extensions;
  }
  /** The number of events. */
  get length() { return Math.floor(this.events.length / EVENT_WORDS); }
  /** Event `index`; RangeError outside the batch. */
  get(index) {
    if (!(index >= 0 && index < this.length)) throw new RangeError(`no event ${index}`);
    return new Event(this, index);
  }
  *[Symbol.iterator]() { for (let i = 0; i < this.length; i++) yield new Event(this, i); }
}

/**
 * One input event, read from its batch on demand. `id`, `source`, `type`
 * are strings; `subject`, `time`, `datacontenttype`, `dataschema` strings or
 * undefined; `data` a Uint8Array or undefined; `index` the position in the
 * batch (what Output.forward and EventError take).
 */
export class Event {
  /** Event `index` of `batch` (Batch.get and iteration make them). */
  constructor(batch, index) { this.batch = batch; this.index = index; this.base = index * EVENT_WORDS; }
  /** @internal */
  text(word) {
    const w = this.batch.events, off = w[this.base + word];
    return decoder.decode(this.batch.bytes.subarray(off, off + w[this.base + word + 1]));
  }
  /** @internal */
  optional(word) { return this.text(word) || undefined; }
  /** The `id` attribute. */
  get id() { return this.text(ID); }
  /** The `source` attribute. */
  get source() { return this.text(SOURCE); }
  /** The `type` attribute. */
  get type() { return this.text(TYPE); }
  /** The `subject` attribute, or undefined. */
  get subject() { return this.optional(SUBJECT); }
  /** The `time` attribute, or undefined. */
  get time() { return this.optional(TIME); }
  /** The `datacontenttype` attribute, or undefined. */
  get datacontenttype() { return this.optional(DCT); }
  /** The `dataschema` attribute, or undefined. */
  get dataschema() { return this.optional(SCHEMA); }
  /** The payload as a Uint8Array view into the batch, or undefined. */
  get data() {
    const w = this.batch.events, off = w[this.base + DATA];
    if (off === NO_DATA) return undefined;
    return this.batch.bytes.subarray(off, off + w[this.base + DATA + 1]);
  }
  /** The data parsed as JSON; EventError when absent or not JSON. */
  json() {
    const data = this.data;
    if (data === undefined) throw new EventError(this.index, 'event has no data');
    try { return JSON.parse(decoder.decode(data)); } catch (e) {
      throw new EventError(this.index, `data is not JSON: ${e.message}`);
    }
  }
  /** Extension attributes as an object name -> string, boolean or number
   * (an Integer beyond 2^53 stays a string), in the host's order. */
  get extensions() {
    const w = this.batch.events, x = this.batch.extensions, b = this.batch.bytes;
    const first = w[this.base + EXT], count = w[this.base + EXT + 1];
    const out = {};
    for (let i = first; i < first + count; i++) {
      const e = i * EXTENSION_WORDS;
      const name = decoder.decode(b.subarray(x[e], x[e] + x[e + 1]));
      let value = decoder.decode(b.subarray(x[e + 2], x[e + 2] + x[e + 3]));
      if (x[e + 4] === BOOLEAN) value = value === 'true';
      else if (x[e + 4] === INTEGER && Number.isSafeInteger(Number(value))) value = Number(value);
      out[name] = value;
    }
    return out;
  }
  /** The extension attribute `name`, or undefined. */
  extension(name) { return this.extensions[name]; }
  /** A core attribute (`id`, `type`, ..., `specversion`) or an extension. */
  attribute(name) {
    if (name === 'specversion') return '1.0';
    if (['id', 'source', 'type', 'subject', 'time', 'datacontenttype', 'dataschema'].includes(name)) return this[name];
    return this.extension(name);
  }
  /** A NewEvent copy of this event to modify and emit. */
  toNew() {
    return new NewEvent(this.id, this.source, this.type, {
      subject: this.subject, time: this.time, datacontenttype: this.datacontenttype,
      dataschema: this.dataschema, data: this.data, extensions: this.extensions,
    });
  }
}

/**
 * An event to emit: a new one or a modified copy (Event.toNew). `data` is a
 * Uint8Array, a string or undefined; `extensions` an object of string,
 * boolean or integer values (booleans and integers travel as the CloudEvents
 * Boolean and Integer types).
 */
export class NewEvent {
  /** `optional` may set subject, time, datacontenttype, dataschema, data and extensions. */
  constructor(id, source, type, optional = {}) {
    this.id = id; this.source = source; this.type = type;
    this.subject = optional.subject; this.time = optional.time;
    this.datacontenttype = optional.datacontenttype; this.dataschema = optional.dataschema;
    this.data = optional.data;
    this.extensions = { ...(optional.extensions || {}) };
  }
  /** Sets the data to `value` as JSON, content type application/json. */
  setJson(value) {
    this.data = JSON.stringify(value);
    this.datacontenttype = 'application/json';
    return this;
  }
}

// ------------------------------------------------------------------ writing

class Packer {
  constructor() { this.chunks = []; this.size = 0; this.events = []; this.extensions = []; }
  span(value) {
    const bytes = typeof value === 'string' ? encoder.encode(value) : value;
    const off = this.size;
    this.chunks.push(bytes);
    this.size += bytes.length;
    return [off, bytes.length];
  }
  pack(e) {
    const first = this.extensions.length / EXTENSION_WORDS;
    const names = Object.keys(e.extensions);
    for (const name of names) {
      const v = e.extensions[name];
      let kind = STRING, text = String(v);
      if (typeof v === 'boolean') kind = BOOLEAN;
      else if ((typeof v === 'number' && Number.isInteger(v)) || typeof v === 'bigint') kind = INTEGER;
      this.extensions.push(...this.span(name), ...this.span(text), kind);
    }
    for (const v of [e.id, e.source, e.type, e.subject, e.time, e.datacontenttype, e.dataschema]) {
      this.events.push(...this.span(v ?? ''));
    }
    if (e.data === undefined || e.data === null) this.events.push(NO_DATA, 0);
    else this.events.push(...this.span(e.data));
    this.events.push(first, names.length);
    return this.events.length / EVENT_WORDS - 1;
  }
  toWit() {
    const bytes = new Uint8Array(this.size);
    let at = 0;
    for (const c of this.chunks) { bytes.set(c, at); at += c.length; }
    return { bytes, events: new Uint32Array(this.events), extensions: new Uint32Array(this.extensions) };
  }
}

const indexOf = (event) => (typeof event === 'number' ? event : event.index);

/** What a bridge or collector emits, in order, to its one output. */
export class Output {
  /** An empty output (the SDK makes one per call). */
  constructor() { this.created = new Packer(); this.emits = []; }
  /** Emits input event `event` (an Event or its index) unchanged. */
  forward(event) { this.emits.push(indexOf(event) & 0x7fffffff); }
  /** Emits a NewEvent. */
  emit(newEvent) { this.emits.push((this.created.pack(newEvent) | CREATED) >>> 0); }
  /** How many events have been emitted so far. */
  get length() { return this.emits.length; }
  /** @internal */
  toWit() { return { created: this.created.toWit(), emits: new Uint32Array(this.emits) }; }
}

/** What a distributor or signal emits, each event to an output port. */
export class RoutedOutput {
  /** An empty output (the SDK makes one per call). */
  constructor() { this.created = new Packer(); this.emits = []; this.ports = []; }
  /** Emits input event `event` (an Event or its index) unchanged, to output `port`. */
  forwardTo(port, event) { this.emits.push(indexOf(event) & 0x7fffffff); this.ports.push(port); }
  /** Emits a NewEvent to output `port`. */
  emitTo(port, newEvent) { this.emits.push((this.created.pack(newEvent) | CREATED) >>> 0); this.ports.push(port); }
  /** How many events have been emitted so far. */
  get length() { return this.emits.length; }
  /** @internal */
  toWit() {
    return { created: this.created.toWit(), emits: new Uint32Array(this.emits), ports: new Uint32Array(this.ports) };
  }
}

// ------------------------------------------------------------------ JSON helpers

/** A configuration value: JSON when it parses (`42`, `true`, `"x"`),
 * otherwise the bare string. */
export function literal(text) {
  try { return JSON.parse(text); } catch { return text; }
}

/** The value at dotted `path` (`a.b.0.c`), or undefined. */
export function jsonGet(value, path) {
  if (!path) return value;
  for (const seg of path.split('.')) {
    if (Array.isArray(value)) value = /^\d+$/.test(seg) ? value[Number(seg)] : undefined;
    else if (value !== null && typeof value === 'object') value = Object.hasOwn(value, seg) ? value[seg] : undefined;
    else return undefined;
  }
  return value;
}

// ------------------------------------------------------------------ export glue

function glue(Class, kind) {
  const slot = {};
  const call = (f) => {
    try { return f(); } catch (e) { throw toWitError(e); }
  };
  const processor = () => {
    if (!slot.p) throw new Failed('processor called before init');
    return slot.p;
  };
  const run = (out, f) => call(() => { f(processor(), out); return out.toWit(); });
  const exports = {
    init(setup) {
      call(() => {
        const s = new Setup(setup.config, setup.inputs, setup.outputs);
        slot.p = new Class(s);
        slot.setup = s;
      });
    },
    update(config) {
      call(() => {
        const p = processor();
        const s = new Setup(config, slot.setup.inputs, slot.setup.outputs);
        if (typeof p.update === 'function') p.update(s); else slot.p = new Class(s);
        slot.setup = s;
      });
    },
    teardown() {
      const p = slot.p;
      slot.p = undefined;
      try { if (p && typeof p.teardown === 'function') p.teardown(); } catch { /* ignored */ }
    },
  };
  const batch = (raw) => new Batch(raw);
  if (kind === 'bridge') {
    exports.bridge = { process: (events) => run(new Output(), (p, out) => p.process(batch(events), out)) };
  } else if (kind === 'collector') {
    exports.collector = { process: (input, events) => run(new Output(), (p, out) => p.process(input, batch(events), out)) };
  } else if (kind === 'distributor') {
    exports.distributor = { process: (events) => run(new RoutedOutput(), (p, out) => p.process(batch(events), out)) };
  } else {
    exports.signal = {
      process: (input, events) => run(new RoutedOutput(), (p, out) => p.process(input, batch(events), out)),
      tick: (nowMs) => run(new RoutedOutput(), (p, out) => p.tick(nowMs, out)),
    };
  }
  return exports;
}

/** `{ init, update, teardown, bridge }` for the entry module to export. */
export const bridge = (Class) => glue(Class, 'bridge');
/** `{ init, update, teardown, collector }` for the entry module to export. */
export const collector = (Class) => glue(Class, 'collector');
/** `{ init, update, teardown, distributor }` for the entry module to export. */
export const distributor = (Class) => glue(Class, 'distributor');
/** `{ init, update, teardown, signal }` for the entry module to export. */
export const signal = (Class) => glue(Class, 'signal');
