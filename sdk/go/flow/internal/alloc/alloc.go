// Package alloc is the memory the host writes into: arguments of exports
// and results of imports (cabi_export_realloc, cabi_import_realloc).
//
// The host calls the allocator at a point where the component may not
// call out (the canonical ABI forbids leaving the instance while it
// lowers values). Go's allocator may start a collection, and the
// collector calls WASI imports, which traps there. So the allocator hands
// out memory from a reserve made beforehand, in Go code that may collect:
// at start-up, at the end of every export call, and before every import
// that returns a list. The reserve grows to twice what the busiest
// call needed.
//
// When a call needs more than the reserve, the allocator takes Go heap
// memory, and that must not start a collection either: the collector is
// held off (debug.SetGCPercent(-1)) from the end of each export until the
// next export's body starts, and while an import returns its values.
package alloc

import (
	"runtime/debug"
	"unsafe"
)

const minReserve = 256 << 10 // bytes

var (
	block   []uint64 // the reserve's memory, kept alive until the next Refill
	free    []uint64 // the unused tail of block
	used    uint64   // bytes handed out since the last Refill
	biggest uint64   // the most any interval between refills needed
	spill   [][]uint64
)

var (
	// held counts the Hold calls not yet resumed: windows nest (an import
	// made while the collector is held, e.g. from a package init).
	held int
	// percent is the collector's setting to go back to: the processor's own
	// (GOGC, debug.SetGCPercent), as it was when the outermost Hold began.
	percent int
)

func init() {
	grow(minReserve)
	// Keeps the adapter's arena linked in (see adapter.go): a read, so that
	// nothing is written into memory the adapter owns.
	keep = adapterArena[len(adapterArena)-1]
	// The first export's arguments are lowered after initialisation.
	Hold()
}

var keep byte

// Hold stops the collector from starting, for a window in which the host
// calls the allocator.
func Hold() {
	if held == 0 {
		percent = debug.SetGCPercent(-1)
	}
	held++
}

// Resume ends the window of the matching Hold; the outermost one lets the
// collector run again, with the setting it had before.
func Resume() {
	if held == 0 {
		return
	}
	held--
	if held == 0 {
		debug.SetGCPercent(percent)
	}
}

// Realloc is the canonical ABI allocator: never collects while the reserve
// suffices; beyond it, it allocates from the Go heap (which may collect).
func Realloc(old, oldSize, align, size uint32) uint32 {
	if size == 0 {
		return align
	}
	words := (uint64(size) + 7) / 8 // 8-byte words: every alignment the contract uses
	used += words * 8
	var chunk []uint64
	if words <= uint64(len(free)) {
		chunk, free = free[:words:words], free[words:]
	} else {
		chunk = make([]uint64, words)
		spill = append(spill, chunk)
	}
	p := unsafe.Pointer(unsafe.SliceData(chunk))
	if old != 0 && oldSize != 0 {
		copy(unsafe.Slice((*byte)(p), size), unsafe.Slice((*byte)(unsafe.Pointer(uintptr(old))), min(oldSize, size)))
	}
	return uint32(uintptr(p))
}

// Ensure makes at least n bytes available to the allocator; call it from
// Go code that may collect, before an import that returns a list. The
// reserve grows by four times that, so that a run of imports shares one
// block.
func Ensure(n uint64) {
	if uint64(len(free))*8 < n {
		grow(max(4*n, minReserve))
	}
}

// Refill restores the reserve after a call. Memory handed out before stays
// valid for as long as Go values point into it.
func Refill() {
	biggest = max(biggest, used)
	used = 0
	spill = nil
	want := max(minReserve, 2*biggest)
	if uint64(len(free))*8 < want {
		grow(want)
	}
}

func grow(n uint64) {
	block = make([]uint64, (n+7)/8)
	free = block
}
