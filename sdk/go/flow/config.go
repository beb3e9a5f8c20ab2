package flow

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Pair is one `key=value` of a configuration.
type Pair struct{ Key, Value string }

// Config is the configuration in the order the user gave it; a key may
// repeat.
type Config []Pair

// Get is the last value of key.
func (c Config) Get(key string) (string, bool) {
	for i := len(c) - 1; i >= 0; i-- {
		if c[i].Key == key {
			return c[i].Value, true
		}
	}
	return "", false
}

// GetOr is the last value of key, or def when the key is absent.
func (c Config) GetOr(key, def string) string {
	if v, ok := c.Get(key); ok {
		return v
	}
	return def
}

// GetAll is every value of key, in order.
func (c Config) GetAll(key string) []string {
	var out []string
	for _, p := range c {
		if p.Key == key {
			out = append(out, p.Value)
		}
	}
	return out
}

// RejectUnknown refuses a key that is not in known, naming it.
func (c Config) RejectUnknown(known ...string) error {
	for _, p := range c {
		if !slices.Contains(known, p.Key) {
			if len(known) == 0 {
				return InvalidConfig("unknown key `%s`: this processor takes no configuration", p.Key)
			}
			return InvalidConfig("unknown key `%s` (known: %s)", p.Key, strings.Join(known, ", "))
		}
	}
	return nil
}

// Setup is what a fresh instance is told: its configuration and the names
// of its ports (port i is Inputs[i], Outputs[i]).
type Setup struct {
	Config  Config
	Inputs  []string
	Outputs []string
}

// ConfigError refuses a configuration; the host reports it as
// invalid-config and keeps the old configuration on update.
type ConfigError struct{ Message string }

// Error is the message with its kind, as the host reports it.
func (e *ConfigError) Error() string { return "invalid configuration: " + e.Message }

// InvalidConfig is a ConfigError; the message should name the key.
func InvalidConfig(format string, args ...any) error {
	return &ConfigError{Message: fmt.Sprintf(format, args...)}
}

// EventError fails one event of a batch by its index; the host retries the
// events before it and dead-letters this one.
type EventError struct {
	Index   int
	Message string
}

// Error names the event by its index in the batch.
func (e *EventError) Error() string { return fmt.Sprintf("event %d: %s", e.Index, e.Message) }

// EventFailed is an EventError for the event at index.
func EventFailed(index int, format string, args ...any) error {
	return &EventError{Index: index, Message: fmt.Sprintf(format, args...)}
}

var errNoData = errors.New("the event has no data")
