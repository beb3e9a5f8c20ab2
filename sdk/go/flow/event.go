package flow

import (
	"encoding/json"
	"iter"
	"strconv"
)

// Words per event and per extension in a packed batch (docs/wit.md).
const (
	eventWords     = 18
	extensionWords = 5
	noData         = 0xffffffff
)

// ExtensionKind is the CloudEvents type of an extension attribute's value.
type ExtensionKind uint32

const (
	KindString  ExtensionKind = 0
	KindBoolean ExtensionKind = 1
	KindInteger ExtensionKind = 2
)

// Extension is a CloudEvents extension attribute; Value is in canonical
// string form (`true`, `42`) whatever its kind.
type Extension struct {
	Name  string
	Value string
	Kind  ExtensionKind
}

// StringExtension is an extension attribute of CloudEvents type String.
func StringExtension(name, value string) Extension {
	return Extension{Name: name, Value: value, Kind: KindString}
}

// BoolExtension is an extension attribute of CloudEvents type Boolean.
func BoolExtension(name string, value bool) Extension {
	return Extension{Name: name, Value: strconv.FormatBool(value), Kind: KindBoolean}
}

// IntExtension is an extension attribute of CloudEvents type Integer.
func IntExtension(name string, value int64) Extension {
	return Extension{Name: name, Value: strconv.FormatInt(value, 10), Kind: KindInteger}
}

// Batch is the events of one call, in order, in the packed form the host
// sent. It is only valid during the call that received it.
type Batch struct {
	bytes      []byte
	events     []uint32
	extensions []uint32
}

// NewBatch wraps packed tables; the host does this for every call, tests
// may too.
func NewBatch(bytes []byte, events, extensions []uint32) Batch {
	return Batch{bytes: bytes, events: events, extensions: extensions}
}

// Len is the number of events.
func (b Batch) Len() int { return len(b.events) / eventWords }

// At is the event at index i (0 <= i < Len()).
func (b Batch) At(i int) Event { return Event{batch: b, index: i} }

// All yields every event with its index.
func (b Batch) All() iter.Seq2[int, Event] {
	return func(yield func(int, Event) bool) {
		for i := 0; i < b.Len(); i++ {
			if !yield(i, b.At(i)) {
				return
			}
		}
	}
}

// Event is one input event, a view into its batch.
type Event struct {
	batch Batch
	index int
}

func (e Event) word(w int) uint32 { return e.batch.events[e.index*eventWords+w] }

// span returns the bytes at (offset, length); a span outside the batch
// (never sent by a correct host) reads as empty rather than panicking.
func (b Batch) span(offset, length uint32) []byte {
	end := uint64(offset) + uint64(length)
	if end > uint64(len(b.bytes)) {
		return nil
	}
	return b.bytes[offset:end:end]
}

func (e Event) text(w int) string { return string(e.batch.span(e.word(w), e.word(w+1))) }

func (e Event) optional(w int) (string, bool) {
	s := e.text(w)
	return s, s != ""
}

// Index is the event's position in its batch (what a forward refers to).
func (e Event) Index() int { return e.index }

// ID is the `id` attribute.
func (e Event) ID() string { return e.text(0) }

// Source is the `source` attribute.
func (e Event) Source() string { return e.text(2) }

// Type is the `type` attribute.
func (e Event) Type() string { return e.text(4) }

// Subject is the `subject` attribute; false when the event has none.
func (e Event) Subject() (string, bool) { return e.optional(6) }

// Time is the `time` attribute (RFC 3339); false when the event has none.
func (e Event) Time() (string, bool) { return e.optional(8) }

// DataContentType is the `datacontenttype` attribute; false when the event
// has none.
func (e Event) DataContentType() (string, bool) { return e.optional(10) }

// DataSchema is the `dataschema` attribute; false when the event has none.
func (e Event) DataSchema() (string, bool) { return e.optional(12) }

// Data is the event's payload; false when it has none. The bytes belong to
// the batch: copy them to keep them past the call.
func (e Event) Data() ([]byte, bool) {
	if e.word(14) == noData {
		return nil, false
	}
	return e.batch.span(e.word(14), e.word(15)), true
}

// JSON decodes the data into v; an event without data is an error.
func (e Event) JSON(v any) error {
	data, ok := e.Data()
	if !ok {
		return errNoData
	}
	return json.Unmarshal(data, v)
}

// Extensions lists the event's extension attributes in order.
func (e Event) Extensions() []Extension {
	first, count := int(e.word(16)), int(e.word(17))
	var out []Extension
	for x := first; x < first+count && (x+1)*extensionWords <= len(e.batch.extensions); x++ {
		w := e.batch.extensions[x*extensionWords : (x+1)*extensionWords]
		out = append(out, Extension{
			Name:  string(e.batch.span(w[0], w[1])),
			Value: string(e.batch.span(w[2], w[3])),
			Kind:  ExtensionKind(w[4]),
		})
	}
	return out
}

// Extension is the extension attribute called name, if the event has it.
func (e Event) Extension(name string) (Extension, bool) {
	for _, x := range e.Extensions() {
		if x.Name == name {
			return x, true
		}
	}
	return Extension{}, false
}

// Attribute is the value of a core or extension attribute by its
// CloudEvents name (`id`, `type`, `subject`, `region`...).
func (e Event) Attribute(name string) (string, bool) {
	switch name {
	case "id":
		return e.ID(), true
	case "source":
		return e.Source(), true
	case "type":
		return e.Type(), true
	case "specversion":
		return "1.0", true
	case "subject":
		return e.Subject()
	case "time":
		return e.Time()
	case "datacontenttype":
		return e.DataContentType()
	case "dataschema":
		return e.DataSchema()
	}
	x, ok := e.Extension(name)
	return x.Value, ok
}

// Copy is a new event with every attribute and the data of e: change what
// differs, then emit it.
func (e Event) Copy() NewEvent {
	n := NewEvent{ID: e.ID(), Source: e.Source(), Type: e.Type(), Extensions: e.Extensions()}
	n.Subject, _ = e.Subject()
	n.Time, _ = e.Time()
	n.DataContentType, _ = e.DataContentType()
	n.DataSchema, _ = e.DataSchema()
	if data, ok := e.Data(); ok {
		n.Data = append([]byte{}, data...)
		n.HasData = true
	}
	return n
}

// NewEvent is an event a processor creates. ID, Source and Type are
// required; an empty optional attribute is absent; the event has data when
// HasData is set (SetData and SetJSON set it).
type NewEvent struct {
	ID, Source, Type string
	Subject          string
	Time             string
	DataContentType  string
	DataSchema       string
	Data             []byte
	HasData          bool
	Extensions       []Extension
}

// SetData sets the payload and its content type.
func (n *NewEvent) SetData(contentType string, data []byte) {
	n.DataContentType, n.Data, n.HasData = contentType, data, true
}

// SetJSON encodes v as the payload, with content type application/json.
func (n *NewEvent) SetJSON(v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	n.SetData("application/json", data)
	return nil
}

// SetExtension adds an extension attribute or replaces the one of that name.
func (n *NewEvent) SetExtension(x Extension) {
	for i := range n.Extensions {
		if n.Extensions[i].Name == x.Name {
			n.Extensions[i] = x
			return
		}
	}
	n.Extensions = append(n.Extensions, x)
}
