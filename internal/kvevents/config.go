// Package kvevents speaks vLLM's KV-event protocol: KVEventBatch payloads encoded with
// msgpack as vLLM's msgspec structs are (array_like, tagged), published over ZeroMQ as vLLM's
// ZmqEventPublisher does (a PUB socket sending [topic, sequence number, payload] multipart
// messages, and a ROUTER socket replaying buffered batches from a sequence number), and read
// back as llm-d-kv-cache's subscriber reads them. References: vllm/distributed/kv_events.py
// and vllm/config/kv_events.py (vLLM commits b4e69e0af33f and 0181ea3173e5), and
// llm-d-kv-cache's pkg/kvcache/kvevents (events.go, pool.go, zmq_subscriber.go).
//
// Pure Go: github.com/go-zeromq/zmq4 for ZeroMQ (ZMTP 3 over TCP, interoperable with libzmq)
// and github.com/vmihailenco/msgpack/v5 for msgpack.
package kvevents

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Config is vLLM's KVEventsConfig (vllm/config/kv_events.py), which vLLM takes as JSON in
// --kv-events-config; the engine takes the same JSON under the same flag.
type Config struct {
	// EnableKVCacheEvents turns the events on.
	EnableKVCacheEvents bool `json:"enable_kv_cache_events"`
	// Publisher is "zmq" or "null"; empty means "zmq" when events are enabled, as in vLLM.
	Publisher string `json:"publisher"`
	// Endpoint is the PUB socket's address. As in vLLM, an address with "*" or "::" (or an
	// ipc:// or inproc:// one) is bound and any other is connected to (a subscriber that
	// binds, as llm-d's KV-cache indexer does). Unlike vLLM, whose default tcp://*:5557
	// binds every interface, an omitted endpoint binds loopback: DefaultEndpoint.
	Endpoint string `json:"endpoint"`
	// ReplayEndpoint, if set, is the ROUTER socket's address (always bound) that serves
	// replays of buffered batches.
	ReplayEndpoint string `json:"replay_endpoint"`
	// BufferSteps is how many past batches are kept for replay.
	BufferSteps int `json:"buffer_steps"`
	// HWM is the PUB socket's high-water mark.
	HWM int `json:"hwm"`
	// MaxQueueSize bounds the batches waiting to be published.
	MaxQueueSize int `json:"max_queue_size"`
	// Topic is the first frame of every published message.
	Topic string `json:"topic"`
	// Bind is whether Endpoint is bound: the JSON's "bind" (servelab's extension, for a
	// loopback or host address that should be bound), else BindEndpoint's answer, or true
	// for the default endpoint.
	Bind bool `json:"-"`
}

// configJSON is Config as --kv-events-config reads it.
type configJSON struct {
	Config
	Bind *bool `json:"bind"`
}

// DefaultEndpoint is the endpoint of a configuration that names none: vLLM's port 5557 on
// loopback, bound.
const DefaultEndpoint = "tcp://127.0.0.1:5557"

// ParseConfig reads --kv-events-config's JSON, with vLLM's defaults for what it omits.
// Unknown fields are refused, naming them, so a typo does not silently disable a setting.
func ParseConfig(data string) (Config, error) {
	j := configJSON{Config: Config{BufferSteps: 10_000, HWM: 100_000, MaxQueueSize: 100_000}}
	dec := json.NewDecoder(bytes.NewReader([]byte(data)))
	dec.DisallowUnknownFields()
	err := dec.Decode(&j)
	c := j.Config
	if err != nil {
		return Config{}, fmt.Errorf("--kv-events-config: %v", err)
	}
	if dec.More() {
		return Config{}, errors.New("--kv-events-config: trailing data after the JSON object")
	}
	if c.Publisher == "" {
		c.Publisher = "null"
		if c.EnableKVCacheEvents {
			c.Publisher = "zmq"
		}
	}
	switch {
	case c.Publisher != "zmq" && c.Publisher != "null":
		return Config{}, fmt.Errorf("--kv-events-config: publisher %q: want \"zmq\" or \"null\"", c.Publisher)
	case c.BufferSteps < 1:
		return Config{}, fmt.Errorf("--kv-events-config: buffer_steps %d: want at least 1", c.BufferSteps)
	case c.HWM < 0:
		return Config{}, fmt.Errorf("--kv-events-config: hwm %d: want 0 (no limit) or more", c.HWM)
	case c.MaxQueueSize < 1:
		return Config{}, fmt.Errorf("--kv-events-config: max_queue_size %d: want at least 1", c.MaxQueueSize)
	}
	switch {
	case c.Endpoint == "":
		c.Endpoint, c.Bind = DefaultEndpoint, true
	case j.Bind != nil:
		c.Bind = *j.Bind
	default:
		c.Bind = BindEndpoint(c.Endpoint)
	}
	for _, ep := range []struct{ field, v string }{{"endpoint", c.Endpoint}, {"replay_endpoint", c.ReplayEndpoint}} {
		if ep.v != "" && !strings.HasPrefix(ep.v, "tcp://") && !strings.HasPrefix(ep.v, "ipc://") && !strings.HasPrefix(ep.v, "inproc://") {
			return Config{}, fmt.Errorf("--kv-events-config: %s %q: want tcp://HOST:PORT, ipc://PATH or inproc://NAME", ep.field, ep.v)
		}
	}
	return c, nil
}

// Enabled reports whether the configuration publishes over ZeroMQ.
func (c Config) Enabled() bool { return c.EnableKVCacheEvents && c.Publisher == "zmq" }

// BindEndpoint is vLLM's rule for its PUB socket (ZmqEventPublisher._socket_setup): bind an
// address with a wildcard ("*", "::") or an ipc:// or inproc:// one, connect to any other.
func BindEndpoint(ep string) bool {
	return strings.Contains(ep, "*") || strings.Contains(ep, "::") ||
		strings.HasPrefix(ep, "ipc://") || strings.HasPrefix(ep, "inproc://")
}

// listenAddr is ep as go-zeromq binds it: its "*" wildcard is every interface.
func listenAddr(ep string) string {
	return strings.Replace(ep, "://*:", "://0.0.0.0:", 1)
}
