// NAME (bridge): counts the events of each type in keyed state and stamps
// every event with its type's count so far, in the integer extension
// `seen` (configurable with `extension=<name>`).
package main

import (
	"fmt"
	"strconv"

	"github.com/flowd-project/flowd/sdk/go/flow"
	"github.com/flowd-project/flowd/sdk/go/flow/bridge"
)

type processor struct{ extension string }

func newProcessor(setup flow.Setup) (bridge.Processor, error) {
	if err := setup.Config.RejectUnknown("extension"); err != nil {
		return nil, err
	}
	extension := setup.Config.GetOr("extension", "seen")
	valid := len(extension) > 0 && len(extension) <= 20
	for _, c := range extension {
		valid = valid && (c >= 'a' && c <= 'z' || c >= '0' && c <= '9')
	}
	if !valid {
		return nil, flow.InvalidConfig("`extension=%s`: 1 to 20 lower-case letters or digits", extension)
	}
	return &processor{extension: extension}, nil
}

func (p *processor) Process(batch flow.Batch, out *flow.Output) error {
	for _, e := range batch.All() {
		// The count so far, in decimal under `count/<type>`.
		key := "count/" + e.Type()
		var count int64
		if stored, ok := flow.State.Get(key); ok {
			n, err := strconv.ParseInt(string(stored), 10, 64)
			if err != nil || n < 0 || n == 1<<63-1 {
				return fmt.Errorf("state `%s` is not a count", key)
			}
			count = n
		}
		count++
		flow.State.Set(key, []byte(strconv.FormatInt(count, 10)))
		next := e.Copy()
		next.SetExtension(flow.IntExtension(p.extension, count))
		out.Emit(next)
	}
	return nil
}

func init() { bridge.Register(newProcessor) }

func main() {}
