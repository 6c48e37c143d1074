package kvevents

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// libzmqReader is a consumer written as vLLM's examples/online_serving/kv_events_subscriber.py
// reads events, on libzmq (pyzmq) and msgpack-python: it replays from seq 0 through a
// DEALER ([empty, start] out; [empty, seq, payload] back until seq -1), prints what it got,
// then subscribes to topic prefix "kv@" and prints the first live [topic, seq, payload].
const libzmqReader = `
import json, sys, zmq, msgpack
pub, replay = sys.argv[1], sys.argv[2]
ctx = zmq.Context()
d = ctx.socket(zmq.DEALER)
d.connect(replay)
d.send_multipart([b"", (0).to_bytes(8, "big")])
got = []
while True:
    _, seq, payload = d.recv_multipart()
    n = int.from_bytes(seq, "big", signed=True)
    if n == -1:
        break
    got.append([n, msgpack.unpackb(payload)])
s = ctx.socket(zmq.SUB)
s.setsockopt(zmq.SUBSCRIBE, b"kv@")
s.connect(pub)
print(json.dumps(got), flush=True)
topic, seq, payload = s.recv_multipart()
print(json.dumps([topic.decode(), int.from_bytes(seq, "big"), msgpack.unpackb(payload)]), flush=True)
`

// libzmqPython is a python3 that imports zmq and msgpack (Debian's python3-zmq and
// python3-msgpack). Without one the test skips, or fails under CI, which installs them
// (.ci/run).
func libzmqPython(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"python3", "/usr/bin/python3"} { // Debian's, where another python3 comes first
		if exec.Command(py, "-c", "import zmq, msgpack").Run() == nil {
			return py
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no python3 with zmq and msgpack (Debian: python3-zmq python3-msgpack); .ci/run installs them")
	}
	t.Skip("no python3 with zmq and msgpack (Debian: python3-zmq python3-msgpack)")
	return ""
}

// TestLibzmqReadsOurEvents: a libzmq consumer (pyzmq, msgpack-python; Debian's python3-zmq
// and python3-msgpack) reads our publisher's replay and live messages. go-zeromq speaks
// ZMTP 3 as libzmq does; this checks it against libzmq itself. Skipped without them.
func TestLibzmqReadsOurEvents(t *testing.T) {
	python := libzmqPython(t)
	p := newTestPublisher(t, 100, "kv@127.0.0.1@tiny")
	stored := Batch{TS: 2.5, DataParallelRank: ptr(int64(0)), Events: []Event{{Type: BlockStored,
		BlockHashes: []uint64{15760518052499183552}, TokenIDs: []int32{1, 2}, BlockSize: 2, Medium: ptr(MediumGPU)}}}
	for _, b := range []Batch{{TS: 1, DataParallelRank: ptr(int64(0)), Events: []Event{{Type: AllBlocksCleared}}}, stored} {
		if _, err := p.Publish(b); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(python, "-c", libzmqReader, "tcp://"+p.Addr().String(), "tcp://"+p.ReplayAddr().String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func(publish bool) string {
		t.Helper()
		deadline := time.After(20 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the libzmq reader ended: %s", stderr.String())
				}
				return l
			case <-tick.C:
				if publish { // until the subscription has reached us
					p.Publish(stored)
				}
			case <-deadline:
				t.Fatalf("no line from the libzmq reader: %s", stderr.String())
			}
		}
	}
	storedJSON := `[2.5, [["BlockStored", [15760518052499183552], null, [1, 2], 2, null, "GPU", null]], 0]`
	check := func(what, got, want string) {
		t.Helper()
		var g, w any
		dec := json.NewDecoder(strings.NewReader(got))
		dec.UseNumber()
		if err := dec.Decode(&g); err != nil {
			t.Fatalf("%s: %q: %v", what, got, err)
		}
		dec = json.NewDecoder(strings.NewReader(want))
		dec.UseNumber()
		dec.Decode(&w)
		if diff := cmp.Diff(w, g); diff != "" {
			t.Errorf("%s (-want +got):\n%s", what, diff)
		}
	}
	check("replay", next(false), `[[0, [1.0, [["AllBlocksCleared"]], 0]], [1, `+storedJSON+`]]`)
	live := next(true)
	var l []json.RawMessage
	if err := json.Unmarshal([]byte(live), &l); err != nil || len(l) != 3 {
		t.Fatalf("live message %q", live)
	}
	check("live topic", string(l[0]), `"kv@127.0.0.1@tiny"`)
	check("live batch", string(l[2]), storedJSON)
}

// libzmqPublisher publishes as vLLM's ZmqEventPublisher does, on libzmq: it binds a PUB and a
// ROUTER replay socket on loopback, prints their ports, then publishes [topic, seq, payload]
// every 20 ms, each payload a KVEventBatch as msgspec encodes it with array_like (here with
// msgpack-python): a BlockStored whose hash is 32 bytes (vLLM's sha256 block hashes), and
// serves replays ([id, empty, start] in; [id, empty, seq, payload]... then END_SEQ -1).
const libzmqPublisher = `
import hashlib, sys, time, zmq, msgpack
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pport = pub.bind_to_random_port("tcp://127.0.0.1")
rep = ctx.socket(zmq.ROUTER)
rport = rep.bind_to_random_port("tcp://127.0.0.1")
print(pport, rport, flush=True)
buf = []
for seq in range(1000):
    h = hashlib.sha256(seq.to_bytes(8, "big")).digest()
    payload = msgpack.packb([float(seq), [["BlockStored", [h], None, [seq, seq + 1], 2, None, "GPU", None]], 0])
    pub.send_multipart([b"kv@vllm@m", seq.to_bytes(8, "big"), payload])
    buf.append((seq, payload))
    while rep.poll(0):
        ident, _, start = rep.recv_multipart()
        for s, p in buf:
            if s >= int.from_bytes(start, "big"):
                rep.send_multipart([ident, b"", s.to_bytes(8, "big"), p])
        rep.send_multipart([ident, b"", (-1).to_bytes(8, "big", signed=True), b""])
    time.sleep(0.02)
`

// TestSubscribeReadsLibzmqPublisher: our subscriber reads a libzmq publisher that speaks as
// vLLM's does, replaying from 0 what it joined too late for, with sha256 hashes read as
// llm-d reads them (the last 8 bytes, big-endian).
func TestSubscribeReadsLibzmqPublisher(t *testing.T) {
	python := libzmqPython(t)
	cmd := exec.Command(python, "-c", libzmqPublisher)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var pport, rport int
	if _, err := fmt.Fscan(bufio.NewReader(out), &pport, &rport); err != nil {
		t.Fatalf("ports: %v: %s", err, stderr.String())
	}
	time.Sleep(100 * time.Millisecond) // let it publish a few batches before we join
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var c collector
	go Subscribe(ctx, SubscriberConfig{Endpoint: fmt.Sprintf("tcp://127.0.0.1:%d", pport),
		ReplayEndpoint: fmt.Sprintf("tcp://127.0.0.1:%d", rport), TopicFilter: "kv@"}, c.handle,
		func(seq uint64, err error) { t.Errorf("batch %d: %v", seq, err) })
	waitFor(t, "ten batches", func() bool { return len(c.snapshot()) >= 10 })
	cancel()
	for i, m := range c.snapshot()[:10] {
		sum := sha256.Sum256(binary.BigEndian.AppendUint64(nil, uint64(i)))
		want := Message{Seq: uint64(i), Batch: Batch{TS: float64(i), DataParallelRank: ptr(int64(0)), Events: []Event{{
			Type: BlockStored, BlockHashes: []uint64{binary.BigEndian.Uint64(sum[24:])}, TokenIDs: []int32{int32(i), int32(i + 1)},
			BlockSize: 2, Medium: ptr(MediumGPU)}}}}
		m.Topic, m.Replayed = "", false
		if diff := cmp.Diff(want, m); diff != "" {
			t.Errorf("batch %d (-want +got):\n%s", i, diff)
		}
	}
}
