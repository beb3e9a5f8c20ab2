/**
 * filter-js (bridge): keeps the events whose `type`, and optionally JSON
 * data fields, match the configuration; drops the others. Kept events are
 * forwarded unchanged (only their index crosses back to the host).
 *
 * Configuration (`-C key=value`):
 * - `type=<type>`: keep events of this type; repeatable (any of them). A
 *   trailing `*` matches a prefix: `type=created.*`.
 * - `where=<path>=<value>`: keep events whose JSON data field at dotted
 *   `<path>` equals `<value>` (a JSON literal such as `5`, `true`, `"x"`, or
 *   else a bare string); repeatable (all of them). An event without JSON
 *   data, or without the field, does not match.
 *
 * With both, an event must match a `type` and every `where`. At least one
 * key is required; any other key is refused with invalid-config naming it.
 */
import * as flow from '../../sdk/js/flow-sdk/flow-sdk.js';

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

class Filter {
  constructor(setup) {
    const config = setup.config;
    config.rejectUnknown(['type', 'where']);
    this.types = config.getAll('type').map((t) => {
      if (!t) throw new flow.ConfigError('`type`: empty type');
      return t.endsWith('*') ? { prefix: t.slice(0, -1) } : { exact: t };
    });
    this.wheres = config.getAll('where').map((w) => {
      const at = w.indexOf('=');
      if (at <= 0) throw new flow.ConfigError(`\`where=${w}\`: expected \`where=<path>=<value>\``);
      const path = w.slice(0, at);
      if (path.split('.').some((s) => !s)) throw new flow.ConfigError(`\`where=${w}\`: empty segment in \`${path}\``);
      return { path, value: flow.literal(w.slice(at + 1)) };
    });
    if (!this.types.length && !this.wheres.length) {
      throw new flow.ConfigError('no condition: give `type=` or `where=`');
    }
  }

  typeMatches(type) {
    if (!this.types.length) return true;
    return this.types.some((t) => (t.exact !== undefined ? type === t.exact : type.startsWith(t.prefix)));
  }

  process(batch, out) {
    for (const event of batch) {
      if (!this.typeMatches(event.type)) continue;
      if (this.wheres.length) {
        let data;
        try { data = event.json(); } catch { continue; }
        if (!this.wheres.every((w) => same(flow.jsonGet(data, w.path), w.value))) continue;
      }
      out.forward(event);
    }
  }
}

export const { init, update, teardown, bridge } = flow.bridge(Filter);
