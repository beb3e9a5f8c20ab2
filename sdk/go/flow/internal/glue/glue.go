// Package glue is the canonical ABI of the eson:flow exports, by hand: the
// allocator the host lowers arguments with, lifting of batches and setups,
// and lowering of results into a return area. The kind packages use it;
// processors never do.
package glue

import (
	"errors"
	"unsafe"

	"github.com/flowd-project/flowd/sdk/go/flow"
	"github.com/flowd-project/flowd/sdk/go/flow/internal/alloc"
)

// live holds every buffer a result points at, so that Go's collector
// keeps them until the call's post-return (Go does not move heap objects,
// so an address stays valid).
var live []any

// The allocator is exported as cabi_export_realloc (arguments of exports)
// and cabi_import_realloc (results of imports), not cabi_realloc: a module
// exporting cabi_realloc gets the WASI adapter's state allocated through it
// while `_initialize` runs, before the Go runtime can take a call.
//
//go:wasmexport cabi_export_realloc
func exportRealloc(old, oldSize, align, size uint32) uint32 {
	return alloc.Realloc(old, oldSize, align, size)
}

//go:wasmexport cabi_import_realloc
func importRealloc(old, oldSize, align, size uint32) uint32 {
	return alloc.Realloc(old, oldSize, align, size)
}

// Release forgets the last call's results (its post-return, which must not
// allocate).
func Release() {
	clear(live)
	live = live[:0]
}

// Begin starts an export's body: its arguments are lowered, Go may
// collect again.
func Begin() { alloc.Resume() }

// Done ends an export call: the allocator's reserve is refilled for the
// next call's arguments, while the runtime may still collect, and then
// the collector is held until the next Begin.
func Done(ret uint32) uint32 {
	alloc.Refill()
	alloc.Hold()
	return ret
}

func ptr(addr uint32) unsafe.Pointer { return unsafe.Pointer(uintptr(addr)) }

// Bytes lifts a list<u8>.
func Bytes(addr, n uint32) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(ptr(addr)), n)
}

// Words lifts a list<u32>.
func Words(addr, n uint32) []uint32 {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*uint32)(ptr(addr)), n)
}

// String lifts a string (copied: Go strings are immutable).
func String(addr, n uint32) string { return string(Bytes(addr, n)) }

func strings(addr, n uint32) []string {
	w := Words(addr, 2*n)
	out := make([]string, n)
	for i := range out {
		out[i] = String(w[2*i], w[2*i+1])
	}
	return out
}

// Batch lifts a batch record.
func Batch(bp, bn, ep, en, xp, xn uint32) flow.Batch {
	return flow.NewBatch(Bytes(bp, bn), Words(ep, en), Words(xp, xn))
}

// Config lifts a list<tuple<string, string>>.
func Config(addr, n uint32) flow.Config {
	w := Words(addr, 4*n)
	out := make(flow.Config, n)
	for i := range out {
		out[i] = flow.Pair{Key: String(w[4*i], w[4*i+1]), Value: String(w[4*i+2], w[4*i+3])}
	}
	return out
}

// Setup lifts a setup record.
func Setup(cp, cn, ip, in, op, on uint32) flow.Setup {
	return flow.Setup{Config: Config(cp, cn), Inputs: strings(ip, in), Outputs: strings(op, on)}
}

// ret is the return area of every export: a result's tag at byte 0 and its
// payload from byte 4 (the largest, routed-output, is 10 words).
var ret [11]uint32

// empty is where an empty list points: any aligned address inside memory.
var empty uint64

func list[T any](s []T) (uint32, uint32) {
	if len(s) == 0 {
		return uint32(uintptr(unsafe.Pointer(&empty))), 0
	}
	live = append(live, s)
	return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(s)))), uint32(len(s))
}

func text(s string) (uint32, uint32) {
	if len(s) == 0 {
		return uint32(uintptr(unsafe.Pointer(&empty))), 0
	}
	live = append(live, s)
	return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s)))), uint32(len(s))
}

func area() uint32 { return uint32(uintptr(unsafe.Pointer(&ret))) }

func batchWords(b flow.Batch) {
	bytes, events, extensions := b.Tables()
	ret[1], ret[2] = list(bytes)
	ret[3], ret[4] = list(events)
	ret[5], ret[6] = list(extensions)
}

// Unit lowers a result<_, error>.
func Unit(err error) uint32 {
	if err != nil {
		return failure(err)
	}
	ret[0] = 0
	return area()
}

// Output lowers a result<output, error>.
func Output(out *flow.Output, err error) uint32 {
	if err != nil {
		return failure(err)
	}
	created, emits := out.Raw()
	ret[0] = 0
	batchWords(created)
	ret[7], ret[8] = list(emits)
	return area()
}

// Routed lowers a result<routed-output, error>.
func Routed(out *flow.RoutedOutput, err error) uint32 {
	if err != nil {
		return failure(err)
	}
	created, emits, ports := out.Raw()
	ret[0] = 0
	batchWords(created)
	ret[7], ret[8] = list(emits)
	ret[9], ret[10] = list(ports)
	return area()
}

// failure lowers the error case: the variant's tag at byte 4, its payload
// from byte 8.
func failure(err error) uint32 {
	ret[0] = 1
	var config *flow.ConfigError
	var event *flow.EventError
	switch {
	case errors.As(err, &config):
		ret[1] = 0
		ret[2], ret[3] = text(config.Message)
	case errors.As(err, &event):
		ret[1] = 1
		ret[2] = uint32(max(event.Index, 0))
		ret[3], ret[4] = text(event.Message)
	default:
		ret[1] = 2
		ret[2], ret[3] = text(err.Error())
	}
	return area()
}

// Instance is the one processor of a component instance, made by init.
type Instance[P any] struct {
	factory func(flow.Setup) (P, error)
	current P
	setup   flow.Setup
	ready   bool
}

// Register sets the factory; a component registers exactly one.
func (i *Instance[P]) Register(factory func(flow.Setup) (P, error)) {
	if i.factory != nil {
		panic("flow: a component registers one processor")
	}
	i.factory = factory
}

// Init makes the processor from the setup.
func (i *Instance[P]) Init(setup flow.Setup) error {
	if i.factory == nil {
		return &flow.ConfigError{Message: "no processor registered: call Register from an init function"}
	}
	p, err := i.factory(setup)
	if err != nil {
		return err
	}
	i.current, i.setup, i.ready = p, setup, true
	return nil
}

// Update replaces the configuration: through the processor's own Update
// when it has one, else by making a new processor from the new
// configuration (the old one stays on error).
func (i *Instance[P]) Update(config flow.Config) error {
	if !i.ready {
		return &flow.ConfigError{Message: "update before init"}
	}
	if u, ok := any(i.current).(interface{ Update(flow.Config) error }); ok {
		if err := u.Update(config); err != nil {
			return err
		}
		i.setup.Config = config
		return nil
	}
	setup := i.setup
	setup.Config = config
	p, err := i.factory(setup)
	if err != nil {
		return err
	}
	i.current, i.setup = p, setup
	return nil
}

// Get is the processor; ok is false before a successful init.
func (i *Instance[P]) Get() (P, bool) { return i.current, i.ready }

// Teardown calls the processor's Teardown, if it has one.
func (i *Instance[P]) Teardown() {
	if t, ok := any(i.current).(interface{ Teardown() }); ok && i.ready {
		t.Teardown()
	}
}

// NotReady is the error of a call before init.
var NotReady = &flow.ConfigError{Message: "called before init"}
