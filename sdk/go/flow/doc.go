// Package flow writes ESON flow processors in Go, compiled to WebAssembly
// components that a flowd host runs.
//
// A processor is a type with a Process method, registered from an init
// function with the package of its kind: [bridge] (1 input, 1 output),
// [collector] (N inputs, 1 output), [distributor] (1 input, N outputs) or
// [signal] (N inputs, N outputs and a timer tick). One Go module makes one
// component; import exactly one kind package.
//
//	package main
//
//	import (
//		"github.com/flowd-project/flowd/sdk/go/flow"
//		"github.com/flowd-project/flowd/sdk/go/flow/bridge"
//	)
//
//	type passthrough struct{}
//
//	func (passthrough) Process(batch flow.Batch, out *flow.Output) error {
//		for _, event := range batch.All() {
//			out.Forward(event)
//		}
//		return nil
//	}
//
//	func init() {
//		bridge.Register(func(setup flow.Setup) (bridge.Processor, error) {
//			return passthrough{}, setup.Config.RejectUnknown()
//		})
//	}
//
//	func main() {}
//
// Build with `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared`, then
// make the core module a component with wasm-tools and the WASI preview-1
// reactor adapter: sdk/go/build-component does both (docs/go.md).
//
// Events arrive packed (see docs/wit.md): an [Event] is a view into its
// batch, and forwarding one sends back only its index. Keyed state, the
// host's log and its clock are [State], [Log] and [NowMs].
package flow
