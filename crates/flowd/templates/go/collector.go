// NAME (collector): merges its inputs into one output, each event tagged
// with the input it came from in the extension `input`.
package main

import (
	"github.com/flowd-project/flowd/sdk/go/flow"
	"github.com/flowd-project/flowd/sdk/go/flow/collector"
)

type processor struct{ inputs []string }

func newProcessor(setup flow.Setup) (collector.Processor, error) {
	if err := setup.Config.RejectUnknown(); err != nil {
		return nil, err
	}
	return &processor{inputs: setup.Inputs}, nil
}

func (p *processor) Process(input int, batch flow.Batch, out *flow.Output) error {
	name := ""
	if input < len(p.inputs) {
		name = p.inputs[input]
	}
	for _, e := range batch.All() {
		next := e.Copy()
		next.SetExtension(flow.StringExtension("input", name))
		out.Emit(next)
	}
	return nil
}

func init() { collector.Register(newProcessor) }

func main() {}
