// NAME (distributor): events whose type starts with `prefix=` (default
// `created.`) go to the first output, the others to the second.
package main

import (
	"strings"

	"github.com/flowd-project/flowd/sdk/go/flow"
	"github.com/flowd-project/flowd/sdk/go/flow/distributor"
)

type processor struct{ prefix string }

func newProcessor(setup flow.Setup) (distributor.Processor, error) {
	if err := setup.Config.RejectUnknown("prefix"); err != nil {
		return nil, err
	}
	if len(setup.Outputs) != 2 {
		return nil, flow.InvalidConfig("two outputs: matching, then the others")
	}
	return &processor{prefix: setup.Config.GetOr("prefix", "created.")}, nil
}

func (p *processor) Process(batch flow.Batch, out *flow.RoutedOutput) error {
	for _, e := range batch.All() {
		port := 1
		if strings.HasPrefix(e.Type(), p.prefix) {
			port = 0
		}
		out.ForwardTo(port, e)
	}
	return nil
}

func init() { distributor.Register(newProcessor) }

func main() {}
