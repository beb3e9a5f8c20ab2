"""NAME (signal): counts the events it reads in keyed state and, on every
tick, emits the count since the last tick (`{"count": n, "at_ms": t}`) on its
first output, then starts again."""

import json

import flow_sdk


def _count():
    stored = flow_sdk.state_get("count")
    return json.loads(stored) if stored else 0


class Processor:
    def __init__(self, setup):
        setup.config.reject_unknown([])

    def process(self, input, batch, out):
        flow_sdk.state_set("count", json.dumps(_count() + len(batch)).encode())

    def tick(self, now_ms, out):
        count = _count()
        if count == 0:
            return
        event = flow_sdk.NewEvent(f"count-{now_ms}", "urn:NAME", "NAME.count")
        out.emit_to(0, event.set_json({"count": count, "at_ms": now_ms}))
        flow_sdk.state_set("count", b"0")


WitWorld, Signal = flow_sdk.signal(Processor)
