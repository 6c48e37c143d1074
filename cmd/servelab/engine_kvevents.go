package main

import (
	"context"
	"fmt"
	"os"
	"sync"

	"servelab/engine"
	"servelab/engine/server"
	"servelab/internal/kvevents"
)

// kvEventsHelp is --kv-events-config's help.
const kvEventsHelp = `publish KV events over ZeroMQ as vLLM does: vLLM's KVEventsConfig JSON, e.g. '{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://127.0.0.1:5557", "replay_endpoint": "tcp://127.0.0.1:5558", "topic": "kv@HOST@MODEL", "buffer_steps": 10000, "hwm": 100000}'; the endpoint binds when it has * or :: (vLLM's rule) and connects otherwise, and defaults to tcp://127.0.0.1:5557, bound (vLLM's default tcp://*:5557 binds every interface); "bind": true (servelab's extension) binds a host address`

// kvEventsPublisher is a running --kv-events-config publisher.
type kvEventsPublisher struct {
	pub  *kvevents.Publisher
	stop context.CancelFunc
	done sync.WaitGroup
}

// startKVEvents starts publishing eng's KV events as cfg says; nil when cfg publishes none.
func startKVEvents(cfg kvevents.Config, eng *engine.Engine, blockSize int) (*kvEventsPublisher, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	pub, err := kvevents.NewPublisher(cfg)
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	k := &kvEventsPublisher{pub: pub, stop: stop}
	k.done.Add(1)
	go func() {
		defer k.done.Done()
		server.PublishKVEvents(ctx, eng, pub, blockSize, cfg.MaxQueueSize, func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "servelab engine: "+format+"\n", args...)
		})
	}()
	return k, nil
}

// describe is the startup line naming the publisher's sockets.
func (k *kvEventsPublisher) describe(cfg kvevents.Config) string {
	if k == nil {
		return ""
	}
	pub := cfg.Endpoint + " (connecting)"
	if a := k.pub.Addr(); a != nil {
		pub = "tcp://" + a.String()
	}
	s := fmt.Sprintf("KV events (ZeroMQ, vLLM's format): publishing on %s, topic %q", pub, cfg.Topic)
	if a := k.pub.ReplayAddr(); a != nil {
		s += fmt.Sprintf(", replay on tcp://%s", a)
	}
	return s
}

func (k *kvEventsPublisher) close() error {
	if k == nil {
		return nil
	}
	k.stop()
	k.done.Wait()
	return k.pub.Close()
}
