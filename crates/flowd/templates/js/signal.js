/**
 * NAME (signal): counts the events it reads in keyed state and, on every
 * tick, emits the count since the last tick (`{"count": n, "at_ms": t}`) on
 * its first output, then starts again.
 */
import * as flow from '@flowd/flow-sdk';
import { get, set } from 'eson:flow/state@0.1.0';

const decoder = new TextDecoder();
const encoder = new TextEncoder();
const load = (key) => {
  const stored = get(key);
  return stored ? JSON.parse(decoder.decode(stored)) : 0;
};
const store = (key, value) => set(key, encoder.encode(JSON.stringify(value)));

class Processor {
  constructor(setup) {
    setup.config.rejectUnknown([]);
  }

  process(input, batch, out) {
    store('count', load('count') + batch.length);
  }

  tick(nowMs, out) {
    const count = load('count');
    if (count === 0) return;
    const at = Number(nowMs);
    const event = new flow.NewEvent(`count-${at}`, 'urn:NAME', 'NAME.count');
    out.emitTo(0, event.setJson({ count, at_ms: at }));
    store('count', 0);
  }
}

export const { init, update, teardown, signal } = flow.signal(Processor);
