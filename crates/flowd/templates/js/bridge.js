/**
 * NAME (bridge): counts the events of each type in keyed state and stamps
 * every event with its type's count so far, in the extension `seen`
 * (configurable with `extension=<name>`).
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
    setup.config.rejectUnknown(['extension']);
    this.extension = setup.config.get('extension') ?? 'seen';
  }

  process(batch, out) {
    for (const event of batch) {
      const key = `count/${event.type}`;
      const count = load(key) + 1;
      store(key, count);
      const next = event.toNew();
      next.extensions[this.extension] = count;
      out.emit(next);
    }
  }
}

export const { init, update, teardown, bridge } = flow.bridge(Processor);
