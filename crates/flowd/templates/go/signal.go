// NAME (signal): counts the events it reads in keyed state and, on every
// tick, emits the count since the last tick (`{"count": n, "at_ms": t}`) on
// its first output, then starts again.
package main

import (
	"fmt"
	"strconv"

	"github.com/flowd-project/flowd/sdk/go/flow"
	"github.com/flowd-project/flowd/sdk/go/flow/signal"
)

type processor struct{}

func newProcessor(setup flow.Setup) (signal.Processor, error) {
	if err := setup.Config.RejectUnknown(); err != nil {
		return nil, err
	}
	return processor{}, nil
}

// count is the count in state, 0 when absent or unreadable.
func count() uint64 {
	stored, _ := flow.State.Get("count")
	n, _ := strconv.ParseUint(string(stored), 10, 64)
	return n
}

func store(n uint64) { flow.State.Set("count", []byte(strconv.FormatUint(n, 10))) }

func (processor) Process(input int, batch flow.Batch, out *flow.RoutedOutput) error {
	n := count()
	store(n + min(uint64(batch.Len()), ^uint64(0)-n)) // saturates at the maximum
	return nil
}

func (processor) Tick(nowMs uint64, out *flow.RoutedOutput) error {
	n := count()
	if n == 0 {
		return nil
	}
	event := flow.NewEvent{ID: fmt.Sprintf("count-%d", nowMs), Source: "urn:NAME", Type: "NAME.count"}
	if err := event.SetJSON(map[string]uint64{"count": n, "at_ms": nowMs}); err != nil {
		return err
	}
	out.EmitTo(0, event)
	store(0)
	return nil
}

func init() { signal.Register(newProcessor) }

func main() {}
