"""NAME (distributor): events whose type starts with `prefix=` (default
`created.`) go to the first output, the others to the second."""

import flow_sdk


class Processor:
    def __init__(self, setup):
        setup.config.reject_unknown(["prefix"])
        if len(setup.outputs) != 2:
            raise flow_sdk.ConfigError("two outputs: matching, then the others")
        self.prefix = setup.config.get("prefix", "created.")

    def process(self, batch, out):
        for event in batch:
            out.forward_to(0 if event.type.startswith(self.prefix) else 1, event)


WitWorld, Distributor = flow_sdk.distributor(Processor)
