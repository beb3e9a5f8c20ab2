"""enrich-py (bridge): adds fields to the JSON data and extension attributes.

Configuration (`-C key=value`, applied in the order given, repeatable):

- `set=<path>=<value>`: sets the JSON data field at dotted `<path>`
  (parents are created); `<value>` is a JSON literal (`42`, `true`, `"x"`,
  `{"a":1}`) or else a bare string. `set=region=eu` adds `"region":"eu"`.
- `extension=<name>=<value>`: sets the extension attribute `<name>`
  (lower-case letters and digits); `true`/`false` become a Boolean, an
  integer an Integer, anything else a String.
- `stamp=<path>`: sets the data field `<path>` to the host's clock in
  milliseconds since the Unix epoch.

Any other key is refused with `invalid-config` naming it. An event whose data
is present but not a JSON object fails with an event error when a data rule
applies; an event without data gets an object with just the new fields.
"""

import flow_sdk


def _split(key, value):
    name, eq, rest = value.partition("=")
    if not eq or not name:
        raise flow_sdk.ConfigError(f"`{key}={value}`: expected `{key}=<name>=<value>`")
    return name, rest


def _extension_value(text):
    if text in ("true", "false"):
        return text == "true"
    try:
        number = int(text)
        if str(number) == text:
            return number
    except ValueError:
        pass
    return text


class Enrich:
    def __init__(self, setup):
        config = setup.config
        config.reject_unknown(["set", "extension", "stamp"])
        self.data_rules = []   # (path, value or None for the clock)
        self.extensions = {}
        for key, value in config:
            if key == "set":
                path, text = _split(key, value)
                self.data_rules.append((path, flow_sdk.literal(text)))
            elif key == "stamp":
                if not value:
                    raise flow_sdk.ConfigError("`stamp`: give the data field to set")
                self.data_rules.append((value, None))
            else:
                name, text = _split(key, value)
                if not all(c.islower() or c.isdigit() for c in name) or not name.isascii():
                    raise flow_sdk.ConfigError(
                        f"`extension={value}`: `{name}` is not a valid extension name "
                        "(lower-case letters and digits)")
                self.extensions[name] = _extension_value(text)
        for path, _ in self.data_rules:
            if any(not seg for seg in path.split(".")):
                raise flow_sdk.ConfigError(f"empty segment in data path `{path}`")
        if not self.data_rules and not self.extensions:
            raise flow_sdk.ConfigError("no rules: give `set=`, `extension=` or `stamp=`")

    def process(self, batch, out):
        now = flow_sdk.now_ms() if any(v is None for _, v in self.data_rules) else None
        for event in batch:
            new = event.to_new()
            if self.data_rules:
                data = {} if event.data is None else event.json()
                if not isinstance(data, dict):
                    raise flow_sdk.EventError(event.index, "data is not a JSON object")
                for path, value in self.data_rules:
                    if not flow_sdk.json_set(data, path, now if value is None else value):
                        raise flow_sdk.EventError(
                            event.index, f"cannot set `{path}`: it crosses a non-object value")
                new.set_json(data)
            new.extensions.update(self.extensions)
            out.emit(new)


WitWorld, Bridge = flow_sdk.bridge(Enrich)
