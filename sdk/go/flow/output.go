package flow

// packer builds the created-events batch of an output (docs/wit.md).
type packer struct {
	bytes      []byte
	events     []uint32
	extensions []uint32
}

func (p *packer) text(s string) (uint32, uint32) {
	at := uint32(len(p.bytes))
	p.bytes = append(p.bytes, s...)
	return at, uint32(len(s))
}

func (p *packer) pack(n *NewEvent) uint32 {
	first := uint32(len(p.extensions) / extensionWords)
	for _, x := range n.Extensions {
		no, nl := p.text(x.Name)
		vo, vl := p.text(x.Value)
		p.extensions = append(p.extensions, no, nl, vo, vl, uint32(x.Kind))
	}
	at := uint32(len(p.events) / eventWords)
	for _, s := range []string{n.ID, n.Source, n.Type, n.Subject, n.Time, n.DataContentType, n.DataSchema} {
		o, l := p.text(s)
		p.events = append(p.events, o, l)
	}
	if n.HasData {
		o := uint32(len(p.bytes))
		p.bytes = append(p.bytes, n.Data...)
		p.events = append(p.events, o, uint32(len(n.Data)))
	} else {
		p.events = append(p.events, noData, 0)
	}
	p.events = append(p.events, first, uint32(len(n.Extensions)))
	return at
}

// Bit 31 of an emit word marks a created event; clear, it forwards an input.
const created = 1 << 31

// Output collects what a bridge or collector call writes, in order.
type Output struct {
	created packer
	emits   []uint32
}

// Forward writes the input event unchanged (only its index crosses back).
func (o *Output) Forward(e Event) { o.emits = append(o.emits, uint32(e.Index())) }

// Emit writes a new event.
func (o *Output) Emit(n NewEvent) { o.emits = append(o.emits, created|o.created.pack(&n)) }

// Len is the number of events written so far.
func (o *Output) Len() int { return len(o.emits) }

// Raw is the packed form the host receives.
func (o *Output) Raw() (created Batch, emits []uint32) {
	return NewBatch(o.created.bytes, o.created.events, o.created.extensions), o.emits
}

// RoutedOutput collects what a distributor or signal call writes: each
// event goes to an output port (an index into Setup.Outputs).
type RoutedOutput struct {
	created packer
	emits   []uint32
	ports   []uint32
}

// ForwardTo writes the input event unchanged to port.
func (o *RoutedOutput) ForwardTo(port int, e Event) {
	o.emits = append(o.emits, uint32(e.Index()))
	o.ports = append(o.ports, uint32(port))
}

// EmitTo writes a new event to port.
func (o *RoutedOutput) EmitTo(port int, n NewEvent) {
	o.emits = append(o.emits, created|o.created.pack(&n))
	o.ports = append(o.ports, uint32(port))
}

// Len is the number of events written so far.
func (o *RoutedOutput) Len() int { return len(o.emits) }

// Raw is the packed form the host receives.
func (o *RoutedOutput) Raw() (created Batch, emits, ports []uint32) {
	return NewBatch(o.created.bytes, o.created.events, o.created.extensions), o.emits, o.ports
}

// Tables returns the three packed tables of a batch (for the host glue).
func (b Batch) Tables() (bytes []byte, events, extensions []uint32) {
	return b.bytes, b.events, b.extensions
}
