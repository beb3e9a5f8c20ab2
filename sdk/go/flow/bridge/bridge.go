// Package bridge exports a bridge processor: one input flow to one output
// flow (world eson:flow/bridge-processor).
package bridge

import (
	"github.com/flowd-project/flowd/sdk/go/flow"
	"github.com/flowd-project/flowd/sdk/go/flow/internal/glue"
)

// Processor handles each batch of the input, writing to out. Returning an
// error fails the whole batch (flow.EventFailed names one event). It may
// also have `Update(flow.Config) error` and `Teardown()`.
type Processor interface {
	Process(batch flow.Batch, out *flow.Output) error
}

var instance glue.Instance[Processor]

// Register sets the function that makes the processor from its setup; call
// it from an init function.
func Register(factory func(flow.Setup) (Processor, error)) { instance.Register(factory) }

//go:wasmexport init
func exportInit(cp, cn, ip, in, op, on uint32) uint32 {
	glue.Begin()
	return glue.Done(glue.Unit(instance.Init(glue.Setup(cp, cn, ip, in, op, on))))
}

//go:wasmexport cabi_post_init
func postInit(uint32) { glue.Release() }

//go:wasmexport update
func exportUpdate(cp, cn uint32) uint32 {
	glue.Begin()
	return glue.Done(glue.Unit(instance.Update(glue.Config(cp, cn))))
}

//go:wasmexport cabi_post_update
func postUpdate(uint32) { glue.Release() }

//go:wasmexport teardown
func exportTeardown() {
	glue.Begin()
	instance.Teardown()
	glue.Done(0)
}

//go:wasmexport eson:flow/bridge@0.1.0#process
func exportProcess(bp, bn, ep, en, xp, xn uint32) uint32 {
	glue.Begin()
	p, ok := instance.Get()
	if !ok {
		return glue.Done(glue.Unit(glue.NotReady))
	}
	var out flow.Output
	err := p.Process(glue.Batch(bp, bn, ep, en, xp, xn), &out)
	return glue.Done(glue.Output(&out, err))
}

//go:wasmexport cabi_post_eson:flow/bridge@0.1.0#process
func postProcess(uint32) { glue.Release() }
