"""NAME (collector): merges its inputs into one output, each event tagged
with the input it came from in the extension `input`."""

import flow_sdk


class Processor:
    def __init__(self, setup):
        setup.config.reject_unknown([])
        self.inputs = list(setup.inputs)

    def process(self, input, batch, out):
        name = self.inputs[input] if input < len(self.inputs) else ""
        for event in batch:
            new = event.to_new()
            new.extensions["input"] = name
            out.emit(new)


WitWorld, Collector = flow_sdk.collector(Processor)
