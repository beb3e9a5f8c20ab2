// dedupe-go (bridge): forwards the first event of each key and drops the
// repeats seen within a time window, remembering keys in the processor's
// state under `seen/<key>` (the first sighting's time in decimal
// milliseconds), so the window survives restarts. Expired sightings are
// swept from the state once per quarter window (the next sweep's time is
// kept under `sweep/at`), so the state holds the keys of at most the last
// 1.25 windows.
//
// Configuration (`-C key=value`):
//   - `key=<selector>`: what makes two events the same: an attribute name
//     (`id`, `subject`, an extension such as `orderid`) or `data.<path>`, a
//     dotted path into JSON data. Default `id`.
//   - `window-ms=<n>`: how long a key is remembered after its first event,
//     1 to 30 days in milliseconds; default 3600000 (one hour).
//
// An event without the key (no such attribute, no or empty data, no field)
// is forwarded: it cannot be a repeat. JSON numbers are keys by their text
// (`7` and `7.0` differ; large integers never collide). An event whose data is not JSON while
// the key is in the data fails on its own (it is dead-lettered).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/flowd-project/flowd/sdk/go/flow"
	"github.com/flowd-project/flowd/sdk/go/flow/bridge"
)

const maxWindowMs = 30 * 24 * 3600 * 1000

type dedupe struct {
	attribute string   // the attribute, when the key is not in the data
	path      []string // the data path, when it is
	windowMs  uint64
}

func newDedupe(setup flow.Setup) (bridge.Processor, error) {
	c := setup.Config
	if err := c.RejectUnknown("key", "window-ms"); err != nil {
		return nil, err
	}
	d := &dedupe{windowMs: 3600000}
	key := c.GetOr("key", "id")
	switch {
	case key == "data":
		d.path = []string{}
	case strings.HasPrefix(key, "data."):
		d.path = strings.Split(strings.TrimPrefix(key, "data."), ".")
		for _, s := range d.path {
			if s == "" {
				return nil, flow.InvalidConfig("`key=%s`: empty segment in the data path", key)
			}
		}
	case key == "":
		return nil, flow.InvalidConfig("`key`: empty selector")
	default:
		d.attribute = key
	}
	if w, ok := c.Get("window-ms"); ok {
		n, err := strconv.ParseUint(w, 10, 64)
		if err != nil || n == 0 || n > maxWindowMs {
			return nil, flow.InvalidConfig("`window-ms=%s`: expected milliseconds from 1 to %d", w, uint64(maxWindowMs))
		}
		d.windowMs = n
	}
	return d, nil
}

// keyOf is the event's key in canonical text; ok is false when it has none.
func (d *dedupe) keyOf(e flow.Event) (string, bool, error) {
	if d.path == nil {
		v, ok := e.Attribute(d.attribute)
		return v, ok, nil
	}
	data, has := e.Data()
	if !has || len(bytes.TrimSpace(data)) == 0 {
		return "", false, nil
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return "", false, err
	}
	if dec.More() {
		return "", false, errors.New("more than one JSON value")
	}
	for _, s := range d.path {
		obj, ok := v.(map[string]any)
		if !ok {
			return "", false, nil
		}
		if v, ok = obj[s]; !ok {
			return "", false, nil
		}
	}
	text, err := json.Marshal(v)
	return string(text), err == nil, nil
}

// within reports whether a sighting at first is inside the window at now;
// a time ahead of the clock (another host's) counts as within.
func (d *dedupe) within(first, now uint64) bool {
	return first > now || now-first < d.windowMs
}

const sweepAt = "sweep/at"

// sweep deletes the expired sightings when the time for it has come.
func (d *dedupe) sweep(now uint64) {
	if at, ok := flow.State.Get(sweepAt); ok {
		if next, err := strconv.ParseUint(string(at), 10, 64); err == nil && now < next {
			return
		}
	}
	for _, slot := range flow.State.Keys("seen/") {
		at, ok := flow.State.Get(slot)
		if !ok {
			continue
		}
		if first, err := strconv.ParseUint(string(at), 10, 64); err != nil || !d.within(first, now) {
			flow.State.Delete(slot)
		}
	}
	flow.State.Set(sweepAt, []byte(strconv.FormatUint(now+max(d.windowMs/4, 1), 10)))
}

func (d *dedupe) Process(batch flow.Batch, out *flow.Output) error {
	now := flow.NowMs()
	d.sweep(now)
	for i, e := range batch.All() {
		key, ok, err := d.keyOf(e)
		if err != nil {
			return flow.EventFailed(i, "data is not JSON: %v", err)
		}
		if !ok {
			out.Forward(e)
			continue
		}
		slot := "seen/" + key
		// The first sighting's time, in decimal milliseconds.
		if at, found := flow.State.Get(slot); found {
			if first, err := strconv.ParseUint(string(at), 10, 64); err == nil && d.within(first, now) {
				continue
			}
		}
		flow.State.Set(slot, []byte(strconv.FormatUint(now, 10)))
		out.Forward(e)
	}
	return nil
}

func init() { bridge.Register(newDedupe) }

func main() {}
