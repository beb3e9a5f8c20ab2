// Package signal exports a signal processor: N input flows to N output
// flows, and events on a timer tick (world eson:flow/signal-processor).
package signal

import (
	"github.com/flowd-project/flowd/sdk/go/flow"
	"github.com/flowd-project/flowd/sdk/go/flow/internal/glue"
)

// Processor handles each batch of input port `input` and each tick of the
// host's timer (nowMs: the host's time), writing each event to an output
// port. Returning an error fails the batch or the tick. It may also have
// `Update(flow.Config) error` and `Teardown()`.
type Processor interface {
	Process(input int, batch flow.Batch, out *flow.RoutedOutput) error
	Tick(nowMs uint64, out *flow.RoutedOutput) error
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

//go:wasmexport eson:flow/signal@0.1.0#process
func exportProcess(input, bp, bn, ep, en, xp, xn uint32) uint32 {
	glue.Begin()
	p, ok := instance.Get()
	if !ok {
		return glue.Done(glue.Unit(glue.NotReady))
	}
	var out flow.RoutedOutput
	err := p.Process(int(input), glue.Batch(bp, bn, ep, en, xp, xn), &out)
	return glue.Done(glue.Routed(&out, err))
}

//go:wasmexport cabi_post_eson:flow/signal@0.1.0#process
func postProcess(uint32) { glue.Release() }

//go:wasmexport eson:flow/signal@0.1.0#tick
func exportTick(nowMs uint64) uint32 {
	glue.Begin()
	p, ok := instance.Get()
	if !ok {
		return glue.Done(glue.Unit(glue.NotReady))
	}
	var out flow.RoutedOutput
	err := p.Tick(nowMs, &out)
	return glue.Done(glue.Routed(&out, err))
}

//go:wasmexport cabi_post_eson:flow/signal@0.1.0#tick
func postTick(uint32) { glue.Release() }
