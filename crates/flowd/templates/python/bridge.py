"""NAME (bridge): counts the events of each type in keyed state and stamps
every event with its type's count so far, in the extension `seen`
(configurable with `extension=<name>`)."""

import json

import flow_sdk


class Processor:
    def __init__(self, setup):
        setup.config.reject_unknown(["extension"])
        self.extension = setup.config.get("extension", "seen")

    def process(self, batch, out):
        for event in batch:
            key = f"count/{event.type}"
            stored = flow_sdk.state_get(key)
            count = (json.loads(stored) if stored else 0) + 1
            flow_sdk.state_set(key, json.dumps(count).encode())
            new = event.to_new()
            new.extensions[self.extension] = count
            out.emit(new)


WitWorld, Bridge = flow_sdk.bridge(Processor)
