package flow

import (
	"fmt"
	"strings"
	"unsafe"

	"github.com/flowd-project/flowd/sdk/go/flow/internal/alloc"
)

// The host's imports (wit/host.wit), lowered by hand: strings and byte
// lists pass as (address, length); a result that does not fit in one value
// is written by the host to a return area the caller passes.

//go:wasmimport eson:flow/log@0.1.0 log
func hostLog(level uint32, ptr unsafe.Pointer, length uint32)

//go:wasmimport eson:flow/state@0.1.0 get
func hostGet(ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport eson:flow/state@0.1.0 set
func hostSet(kptr unsafe.Pointer, klen uint32, vptr unsafe.Pointer, vlen uint32)

//go:wasmimport eson:flow/state@0.1.0 delete
func hostDelete(ptr unsafe.Pointer, length uint32)

//go:wasmimport eson:flow/state@0.1.0 keys
func hostKeys(ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport eson:flow/clock@0.1.0 now-ms
func hostNowMs() uint64

func str(s string) (unsafe.Pointer, uint32) {
	return unsafe.Pointer(unsafe.StringData(s)), uint32(len(s))
}

func bytesOf(b []byte) (unsafe.Pointer, uint32) {
	return unsafe.Pointer(unsafe.SliceData(b)), uint32(len(b))
}

// at turns an address the host wrote into a Go pointer. The memory was
// allocated by the canonical ABI allocator (package alloc) as a Go object,
// so the pointer keeps it alive.
func at(addr uint32) unsafe.Pointer { return unsafe.Pointer(uintptr(addr)) }

// Level is a log level.
type Level uint32

const (
	Trace Level = iota
	Debug
	Info
	Warn
	Error
)

// Log writes a line into the host's log, tagged with the processor (the
// host bounds and rate-limits it).
func Log(level Level, message string) {
	p, n := str(strings.ToValidUTF8(message, "\uFFFD"))
	hostLog(uint32(level), p, n)
}

// Logf is Log with a format.
func Logf(level Level, format string, args ...any) { Log(level, fmt.Sprintf(format, args...)) }

// NowMs is the host's wall-clock time, in milliseconds since the Unix epoch.
func NowMs() uint64 { return hostNowMs() }

// State is the processor's keyed state. Writes made during a call are
// committed when it returns without error and rolled back otherwise, so a
// retried batch sees the state it saw the first time.
var State stateStore

type stateStore struct{}

// Get is the value of key, if set.
func (stateStore) Get(key string) ([]byte, bool) {
	var ret [3]uint32 // option<list<u8>>: tag, address, length
	p, n := str(key)
	alloc.Ensure(64 << 10) // the host allocates the value while Go may not collect
	alloc.Hold()
	hostGet(p, n, unsafe.Pointer(&ret))
	alloc.Resume()
	if ret[0]&0xff == 0 {
		return nil, false
	}
	if ret[2] == 0 {
		return []byte{}, true
	}
	return unsafe.Slice((*byte)(at(ret[1])), ret[2]), true
}

// Set stores value under key.
func (stateStore) Set(key string, value []byte) {
	kp, kn := str(key)
	vp, vn := bytesOf(value)
	hostSet(kp, kn, vp, vn)
}

// Delete removes key.
func (stateStore) Delete(key string) {
	p, n := str(key)
	hostDelete(p, n)
}

// Keys lists the keys that start with prefix, in byte order.
func (stateStore) Keys(prefix string) []string {
	var ret [2]uint32 // list<string>: address, length
	p, n := str(prefix)
	alloc.Ensure(64 << 10)
	alloc.Hold()
	hostKeys(p, n, unsafe.Pointer(&ret))
	alloc.Resume()
	if ret[1] == 0 {
		return nil
	}
	words := unsafe.Slice((*uint32)(at(ret[0])), 2*ret[1])
	keys := make([]string, ret[1])
	for i := range keys {
		if l := words[2*i+1]; l > 0 {
			keys[i] = string(unsafe.Slice((*byte)(at(words[2*i])), l))
		}
	}
	return keys
}
