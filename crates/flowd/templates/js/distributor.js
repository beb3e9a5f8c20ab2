/**
 * NAME (distributor): events whose type starts with `prefix=` (default
 * `created.`) go to the first output, the others to the second.
 */
import * as flow from '@flowd/flow-sdk';

class Processor {
  constructor(setup) {
    setup.config.rejectUnknown(['prefix']);
    if (setup.outputs.length !== 2) throw new flow.ConfigError('two outputs: matching, then the others');
    this.prefix = setup.config.get('prefix') ?? 'created.';
  }

  process(batch, out) {
    for (const event of batch) {
      out.forwardTo(event.type.startsWith(this.prefix) ? 0 : 1, event);
    }
  }
}

export const { init, update, teardown, distributor } = flow.distributor(Processor);
