package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"servelab/real/local"
	"servelab/real/router"
	"servelab/serving"
)

// TestUpFollowsEnginesOverZMQ: `servelab up --kv-events-transport zmq`'s cluster (the
// options up builds, started as up starts them) gives each engine PUB and replay sockets
// of its own on 127.0.0.1 and the router each engine's addresses, and the router's prefix
// index fills from those ZeroMQ events alone: the /v1/kv_events source is switched off.
// Each engine's index holds the prompts that engine served and not the other's; after
// engine-1 is killed and restarted (on the same sockets) its index drops what the old
// process cached and follows the new one; and requests routed by the precise prefix scorer
// go where their prefix is cached.
func TestUpFollowsEnginesOverZMQ(t *testing.T) {
	dir := synthTiny(t)
	t.Setenv("SERVELAB_RUN_MAIN", "1")
	f := clusterFlags{engines: 2, model: dir, batch: "vllm", evict: "lru", blockSize: 16, numBlocks: 64,
		maxModelLen: 128, threads: 1, prefixCaching: true, kvEventsTransport: "zmq"}
	f.router = routerFlags{spec: "weighted:precise-prefix=1,queue=0,kv=0,prefix=0", scrape: 10 * time.Millisecond,
		kvEvents: true, logf: t.Logf}
	log := &syncBuffer{}
	opts, err := f.options(log)
	if err != nil {
		t.Fatal(err)
	}
	if !opts.KVEventsZMQ {
		t.Fatal("--kv-events-transport zmq: the engines do not publish over ZeroMQ")
	}
	opts.Router.KVEvents = false // no /v1/kv_events: the index can only fill over ZeroMQ
	opts.Restart = &local.RestartPolicy{Backoff: 50 * time.Millisecond}
	opts.Events = log
	c, err := local.Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	t.Cleanup(func() { c.Stop(10 * time.Second) })
	r := c.Router

	addr := regexp.MustCompile(`^tcp://127\.0\.0\.1:\d+$`)
	var want []string
	seen := map[string]bool{}
	for i, u := range c.Endpoints {
		pub, replay := c.KVEvents(i)
		for _, a := range []string{pub, replay} {
			if !addr.MatchString(a) || seen[a] {
				t.Fatalf("engine-%d's KV-event sockets %q, %q: want loopback addresses of its own", i, pub, replay)
			}
			seen[a] = true
		}
		want = append(want, u+"#kv-events="+pub+"&kv-events-replay="+replay)
	}
	if d := cmp.Diff(want, r.Endpoints()); d != "" {
		t.Fatalf("the router's endpoints (-want +got):\n%s", d)
	}

	// No kept-alive connection may outlive the engine it went to: the restarted engine
	// listens on the same port, and a POST on a dead pooled connection is not retried.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	post := func(base, prompt string) (body []byte, servedBy string) {
		t.Helper()
		body, _ = json.Marshal(map[string]any{"prompt": prompt, "max_tokens": 1})
		resp, err := client.Post(base+"/v1/completions", "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s: %s", base, resp.Status, b)
		}
		return body, resp.Header.Get(serving.ServedEndpointHeader)
	}
	complete := func(i int, prompt string) []uint64 {
		t.Helper()
		body, _ := post(c.Endpoints[i], prompt)
		h := r.BlockHashes(context.Background(), "/v1/completions", body)
		if len(h) < 2 {
			t.Fatalf("prompt of %d blocks", len(h))
		}
		return h
	}
	cached := func(i int, hashes []uint64) int {
		v, ok := r.Views()[c.Endpoints[i]]
		if !ok || v.Cache == nil {
			return -1
		}
		return v.Cache.CachedPrefixBlocks(hashes)
	}
	waitCached := func(what string, i int, hashes []uint64, n int) {
		t.Helper()
		waitFor(t, what, 20*time.Second, func() bool { return cached(i, hashes) == n }, log)
	}

	p0 := complete(0, strings.Repeat("engine zero prompt ", 6))
	p1 := complete(1, strings.Repeat("engine one prompt ", 6))
	waitCached("engine-0's index holds its prompt", 0, p0, len(p0))
	waitCached("engine-1's index holds its prompt", 1, p1, len(p1))
	if n := cached(0, p1) + cached(1, p0); n != 0 {
		t.Errorf("an engine's index holds %d blocks of the other engine's prompt", n)
	}
	for i, p := range []string{strings.Repeat("engine zero prompt ", 6), strings.Repeat("engine one prompt ", 6)} {
		if _, by := post(c.URL, p); by != strings.TrimPrefix(c.Endpoints[i], "http://") {
			t.Errorf("the router sent engine-%d's cached prompt to %q", i, by)
		}
	}

	pub, replay := c.KVEvents(1)
	if err := syscall.Kill(c.PIDs()[1], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "engine-1 is back", 60*time.Second, func() bool {
		return regexp.MustCompile(`engine-1 is back`).MatchString(log.String())
	}, log)
	if p, r := c.KVEvents(1); p != pub || r != replay {
		t.Errorf("the restarted engine-1 publishes on %s (replay %s), not its sockets %s (replay %s)", p, r, pub, replay)
	}
	fresh := complete(1, strings.Repeat("after the restart ", 6))
	waitCached("the restarted engine-1's prompt", 1, fresh, len(fresh))
	waitCached("the old engine-1's prompt dropped", 1, p1, 0)
	if n := cached(0, p0); n != len(p0) {
		t.Errorf("engine-0's index holds %d of its prompt's %d blocks after engine-1's restart", n, len(p0))
	}
}

// kvEventsEPP writes an EndpointPickerConfig with llm-d's precise-prefix-cache-scorer and
// the kvEventsConfig kv (YAML lines, indented as a parameter) and returns its path.
func kvEventsEPP(t *testing.T, kv string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "epp.yaml")
	data := `apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    kvEventsConfig:
` + kv + `
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
`
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRouterKVEventsConfigFromEPP: the --router EndpointPickerConfig's kvEventsConfig
// configures the router's ZeroMQ subscription as --kv-events-socket-port and
// --kv-events-topic-filter do; flags that repeat it are fine, flags that contradict it
// are an error naming both, and a bad field is named with its file.
func TestRouterKVEventsConfigFromEPP(t *testing.T) {
	guide := kvEventsEPP(t, "      topicFilter: \"kv@\"\n      discoverPods: true\n      podDiscoveryConfig:\n        socketPort: 6557")
	defaults := kvEventsEPP(t, "      concurrency: 8")
	bad := kvEventsEPP(t, "      podDiscoveryConfig:\n        socket_port: 6557")
	// A second precise-prefix-cache-scorer with a kvEventsConfig of its own: the router
	// subscribes once per endpoint (the policy loader refuses it with the same message,
	// so servelab sim, experiments, the controller and deploy refuse it as well).
	two := kvEventsEPP(t, "      topicFilter: \"kv@\"\n- name: second\n  type: precise-prefix-cache-scorer\n  parameters:\n    kvEventsConfig:\n      topicFilter: \"kv@x\"")
	field := func(p string) string { return p + ": plugins[0].parameters.kvEventsConfig" }
	for _, tc := range []struct {
		name, spec   string
		port, replay int
		filter       string
		endpoints    []string
		want         *router.ZMQConfig
		err          string
	}{
		{name: "the file", spec: guide, want: &router.ZMQConfig{SocketPort: 6557, TopicFilter: "kv@"}},
		{name: "llm-d's defaults", spec: defaults, want: &router.ZMQConfig{SocketPort: 5557, TopicFilter: "kv@"}},
		{name: "flags repeating the file, and a replay port", spec: guide, port: 6557, replay: 6558, filter: "kv@",
			want: &router.ZMQConfig{SocketPort: 6557, ReplayPort: 6558, TopicFilter: "kv@"}},
		{name: "flags alone", spec: "weighted:precise-prefix=1", port: 5557, filter: "kv@", want: &router.ZMQConfig{SocketPort: 5557, TopicFilter: "kv@"}},
		{name: "neither", spec: "weighted:precise-prefix=1"},
		{name: "a topic filter for endpoints with their own addresses", spec: "least-request", filter: "kv@",
			endpoints: []string{"http://127.0.0.1:1#kv-events=tcp://127.0.0.1:2"}, want: &router.ZMQConfig{TopicFilter: "kv@"}},
		{name: "port conflict", spec: guide, port: 5557, err: "--kv-events-socket-port 5557 and " + field(guide) + ".podDiscoveryConfig.socketPort 6557 disagree"},
		{name: "topic conflict", spec: guide, filter: "kv@pod", err: `--kv-events-topic-filter "kv@pod" and ` + field(guide) + `.topicFilter "kv@" disagree`},
		{name: "bad field", spec: bad, err: bad + `: EndpointPickerConfig: plugins[0].parameters.kvEventsConfig: json: unknown field "socket_port"`},
		{name: "two kvEventsConfigs", spec: two, err: field(two) + " and plugins[1].parameters.kvEventsConfig: two kvEventsConfigs"},
		{name: "replay alone", spec: "least-request", replay: 5558, err: "--kv-events-replay-port 5558 needs --kv-events-socket-port"},
		{name: "a topic filter for nothing", spec: "least-request", filter: "kv@", err: `--kv-events-topic-filter "kv@" needs`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := routerFlags{spec: tc.spec, blockSize: 16, kvEvents: true, endpoints: tc.endpoints}
			f.zmq = router.ZMQConfig{SocketPort: tc.port, ReplayPort: tc.replay, TopicFilter: tc.filter}
			cfg, err := f.config()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, cfg.KVEventsZMQ); d != "" {
				t.Errorf("the router's ZeroMQ subscription (-want +got):\n%s", d)
			}
		})
	}
}

// TestRouterABKVEventsConfig: in an A/B test the subscription is configured by whichever
// arm's EndpointPickerConfig has a kvEventsConfig; two must agree on the socket port and
// topic filter (other fields may differ), else an error names both files' fields; flags
// that contradict a file name it (both, when both have one); and a bad field of arm b's
// file is named with that file, as arm a's is.
func TestRouterABKVEventsConfig(t *testing.T) {
	a := kvEventsEPP(t, "      topicFilter: \"kv@\"\n      podDiscoveryConfig:\n        socketPort: 6557")
	b := kvEventsEPP(t, "      topicFilter: \"kv@\"\n      concurrency: 8\n      podDiscoveryConfig:\n        socketPort: 6557\n        podNamespace: other")
	otherPort := kvEventsEPP(t, "      topicFilter: \"kv@\"\n      podDiscoveryConfig:\n        socketPort: 5557")
	otherTopic := kvEventsEPP(t, "      topicFilter: \"kv@pod\"\n      podDiscoveryConfig:\n        socketPort: 6557")
	bad := kvEventsEPP(t, "      podDiscoveryConfig:\n        socket_port: 6557")
	badPort := kvEventsEPP(t, "      podDiscoveryConfig:\n        socketPort: 70000")
	field := func(p string) string { return p + ": plugins[0].parameters.kvEventsConfig" }
	const plain = "weighted:precise-prefix=1"
	for _, tc := range []struct {
		name, spec, ab string
		port, replay   int
		filter         string
		want           *router.ZMQConfig
		wantFiles      []string // the files whose kvEventsConfig the router read, as fileKV names them
		err            string
	}{
		{name: "arm b's file alone", spec: plain, ab: b,
			want: &router.ZMQConfig{SocketPort: 6557, TopicFilter: "kv@"}, wantFiles: []string{field(b)}},
		{name: "arm a's file alone", spec: a, ab: plain,
			want: &router.ZMQConfig{SocketPort: 6557, TopicFilter: "kv@"}, wantFiles: []string{field(a)}},
		{name: "arm b's port and topic", spec: plain, ab: otherTopic,
			want: &router.ZMQConfig{SocketPort: 6557, TopicFilter: "kv@pod"}, wantFiles: []string{field(otherTopic)}},
		{name: "both agreeing, other fields differing", spec: a, ab: b,
			want: &router.ZMQConfig{SocketPort: 6557, TopicFilter: "kv@"}, wantFiles: []string{field(a), field(b)}},
		{name: "the same file in both arms", spec: a, ab: a,
			want: &router.ZMQConfig{SocketPort: 6557, TopicFilter: "kv@"}, wantFiles: []string{field(a)}},
		{name: "flags repeating arm b's file, and a replay port", spec: plain, ab: b, port: 6557, replay: 6558, filter: "kv@",
			want: &router.ZMQConfig{SocketPort: 6557, ReplayPort: 6558, TopicFilter: "kv@"}, wantFiles: []string{field(b)}},
		{name: "neither arm has one", spec: plain, ab: "least-request"},
		{name: "ports disagree", spec: a, ab: otherPort,
			err: field(a) + ".podDiscoveryConfig.socketPort 6557 and " + field(otherPort) + ".podDiscoveryConfig.socketPort 5557 disagree"},
		{name: "topics disagree", spec: a, ab: otherTopic,
			err: field(a) + `.topicFilter "kv@" and ` + field(otherTopic) + `.topicFilter "kv@pod" disagree`},
		{name: "port flag against arm b's file", spec: plain, ab: b, port: 5557,
			err: "--kv-events-socket-port 5557 and " + field(b) + ".podDiscoveryConfig.socketPort 6557 disagree"},
		{name: "topic flag against both files", spec: a, ab: b, filter: "kv@pod",
			err: `--kv-events-topic-filter "kv@pod" and ` + field(a) + `.topicFilter "kv@" and ` + field(b) + `.topicFilter "kv@" disagree`},
		{name: "unknown field in arm b", spec: plain, ab: bad,
			err: bad + `: EndpointPickerConfig: plugins[0].parameters.kvEventsConfig: json: unknown field "socket_port"`},
		{name: "bad port in arm b", spec: a, ab: badPort,
			err: badPort + ": EndpointPickerConfig: plugins[0].parameters.kvEventsConfig.podDiscoveryConfig.socketPort: 70000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := routerFlags{spec: tc.spec, abSpec: tc.ab, abFraction: 0.5, blockSize: 16, kvEvents: true}
			f.zmq = router.ZMQConfig{SocketPort: tc.port, ReplayPort: tc.replay, TopicFilter: tc.filter}
			cfg, err := f.config()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, cfg.KVEventsZMQ); d != "" {
				t.Errorf("the router's ZeroMQ subscription (-want +got):\n%s", d)
			}
			var files []string
			for _, kc := range f.fileKV {
				files = append(files, kc.Field)
			}
			if d := cmp.Diff(tc.wantFiles, files); d != "" {
				t.Errorf("the kvEventsConfigs read (-want +got):\n%s", d)
			}
		})
	}
}

// TestUpKVEventsTransport: up's engines publish over ZeroMQ with --kv-events-transport zmq,
// or when --router's EndpointPickerConfig has a kvEventsConfig; contradictions are errors
// naming both.
func TestUpKVEventsTransport(t *testing.T) {
	model := synthTiny(t)
	epp := kvEventsEPP(t, "      topicFilter: \"kv@\"")
	armB := kvEventsEPP(t, "      topicFilter: \"kv@\"")
	for _, tc := range []struct {
		name, transport, spec string
		ab                    string // --ab-router
		noKVEvents            bool
		want                  bool
		err                   string
	}{
		{name: "default", spec: "least-request"},
		{name: "http", transport: "http", spec: "least-request"},
		{name: "zmq", transport: "zmq", spec: "least-request", want: true},
		{name: "the file's kvEventsConfig", spec: epp, want: true},
		{name: "zmq and the file", transport: "zmq", spec: epp, want: true},
		{name: "http and the file", transport: "http", spec: epp, err: "--kv-events-transport http and " + epp + ": plugins[0].parameters.kvEventsConfig"},
		{name: "unknown", transport: "nats", spec: "least-request", err: `--kv-events-transport "nats": want http or zmq`},
		{name: "zmq without events", transport: "zmq", spec: "least-request", noKVEvents: true, err: "--kv-events=false and --kv-events-transport zmq"},
		{name: "the file without events", spec: epp, noKVEvents: true, err: "--kv-events=false and " + epp + ": plugins[0]"},
		{name: "arm b's file", spec: "least-request", ab: armB, want: true},
		{name: "http and arm b's file", transport: "http", spec: "least-request", ab: armB,
			err: "--kv-events-transport http and " + armB + ": plugins[0].parameters.kvEventsConfig"},
		{name: "http and both arms' files", transport: "http", spec: epp, ab: armB,
			err: "--kv-events-transport http and " + epp + ": plugins[0].parameters.kvEventsConfig and " + armB + ": plugins[0].parameters.kvEventsConfig: "},
		{name: "arm b's file without events", spec: "least-request", ab: armB, noKVEvents: true, err: "--kv-events=false and " + armB + ": plugins[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := clusterFlags{engines: 2, model: model, batch: "vllm", evict: "lru", blockSize: 16, kvEventsTransport: tc.transport}
			f.router = routerFlags{spec: tc.spec, kvEvents: !tc.noKVEvents, abSpec: tc.ab}
			if tc.ab != "" {
				f.router.abFraction = 0.5
			}
			opts, err := f.options(io.Discard)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if opts.KVEventsZMQ != tc.want {
				t.Errorf("engines publish over ZeroMQ: %v, want %v", opts.KVEventsZMQ, tc.want)
			}
		})
	}
	// The flag is up's, and up reports the error before starting anything.
	out, err := run(t, "up", "--model", model, "--port", "0", "--kv-events-transport", "nats")
	if err == nil || !strings.Contains(err.Error(), "--kv-events-transport") || strings.Contains(out, "starting") {
		t.Errorf("up --kv-events-transport nats: %v, output %q", err, out)
	}
}
