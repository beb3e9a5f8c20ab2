/**
 * NAME (collector): merges its inputs into one output, each event tagged
 * with the input it came from in the extension `input`.
 */
import * as flow from '@flowd/flow-sdk';

class Processor {
  constructor(setup) {
    setup.config.rejectUnknown([]);
    this.inputs = setup.inputs;
  }

  process(input, batch, out) {
    const name = this.inputs[input] ?? '';
    for (const event of batch) {
      const next = event.toNew();
      next.extensions.input = name;
      out.emit(next);
    }
  }
}

export const { init, update, teardown, collector } = flow.collector(Processor);
