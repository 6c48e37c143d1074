package batch

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"servelab/policies"
	"servelab/serving"
)

// fakeInstance is a minimal engine: blocks are a counter, queues are slices.
type fakeInstance struct {
	blockSize  int
	freeBlocks int
	waiting    []*serving.Seq
	running    []*serving.Seq
	scheduled  []chunk
	preempted  []uint64
}

type chunk struct {
	ID     uint64
	Tokens int
}

func (f *fakeInstance) Waiting() []*serving.Seq         { return f.waiting }
func (f *fakeInstance) Running() []*serving.Seq         { return f.running }
func (f *fakeInstance) CachedTokens(s *serving.Seq) int { return 0 }

func (f *fakeInstance) Allocate(s *serving.Seq, n int) bool {
	need := (s.NumComputed+n+f.blockSize-1)/f.blockSize - len(s.Blocks)
	if need > f.freeBlocks {
		return false
	}
	if need > 0 {
		f.freeBlocks -= need
		s.Blocks = append(s.Blocks, make([]int32, need)...)
	}
	return true
}

func (f *fakeInstance) Schedule(s *serving.Seq, n int) {
	if s.Status == serving.SeqWaiting {
		i := slices.Index(f.waiting, s)
		f.waiting = slices.Delete(f.waiting, i, i+1)
		s.Status = serving.SeqRunning
		f.running = append(f.running, s)
	}
	f.scheduled = append(f.scheduled, chunk{s.Req.ID, n})
}

func (f *fakeInstance) Preempt(s *serving.Seq) int {
	withdrawn := 0
	if i := slices.IndexFunc(f.scheduled, func(c chunk) bool { return c.ID == s.Req.ID }); i >= 0 {
		withdrawn = f.scheduled[i].Tokens
		f.scheduled = slices.Delete(f.scheduled, i, i+1)
	}
	i := slices.Index(f.running, s)
	f.running = slices.Delete(f.running, i, i+1)
	f.freeBlocks += len(s.Blocks)
	s.Blocks = nil
	s.NumComputed = 0
	s.Status = serving.SeqWaiting
	f.waiting = append([]*serving.Seq{s}, f.waiting...)
	f.preempted = append(f.preempted, s.Req.ID)
	return withdrawn
}

func seq(id uint64, prompt, output, computed int, prio int) *serving.Seq {
	return &serving.Seq{
		Req:         &serving.Request{ID: id, Arrival: float64(id), PromptTokens: prompt, MaxTokens: 100, Priority: prio},
		NumOutput:   output,
		NumComputed: computed,
	}
}

// running returns a sequence already admitted, holding the blocks its context needs.
func running(f *fakeInstance, s *serving.Seq) *serving.Seq {
	s.Status = serving.SeqRunning
	n := (s.NumComputed + f.blockSize - 1) / f.blockSize
	s.Blocks = make([]int32, n)
	f.freeBlocks -= n
	f.running = append(f.running, s)
	return s
}

func waiting(f *fakeInstance, s *serving.Seq) *serving.Seq {
	f.waiting = append(f.waiting, s)
	return s
}

func build(t *testing.T, spec string) Policy {
	t.Helper()
	p, _, err := Registry.Parse(spec, policies.Env{Seed: 1, BlockSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name          string
		spec          string
		freeBlocks    int
		setup         func(f *fakeInstance)
		wantScheduled []chunk
		wantPreempted []uint64
	}{
		{
			name: "running first then waiting FCFS, chunked at the budget",
			spec: "vllm:max_num_batched_tokens=100", freeBlocks: 100,
			setup: func(f *fakeInstance) {
				running(f, seq(1, 50, 3, 52, 0)) // decoding
				waiting(f, seq(2, 60, 0, 0, 0))
				waiting(f, seq(3, 70, 0, 0, 0))
			},
			wantScheduled: []chunk{{1, 1}, {2, 60}, {3, 39}},
		},
		{
			name: "max_num_seqs stops admission",
			spec: "vllm:max_num_seqs=2", freeBlocks: 100,
			setup: func(f *fakeInstance) {
				running(f, seq(1, 50, 3, 52, 0))
				waiting(f, seq(2, 60, 0, 0, 0))
				waiting(f, seq(3, 70, 0, 0, 0))
			},
			wantScheduled: []chunk{{1, 1}, {2, 60}},
		},
		{
			name: "long prefill threshold caps each chunk",
			spec: "vllm:long_prefill_token_threshold=32", freeBlocks: 100,
			setup: func(f *fakeInstance) {
				running(f, seq(1, 100, 0, 32, 0)) // mid-prefill
				waiting(f, seq(2, 60, 0, 0, 0))
			},
			wantScheduled: []chunk{{1, 32}, {2, 32}},
		},
		{
			name: "without chunked prefill a prompt over the budget waits",
			spec: "vllm:max_num_batched_tokens=64,chunked_prefill=false", freeBlocks: 100,
			setup: func(f *fakeInstance) {
				waiting(f, seq(1, 30, 0, 0, 0))
				waiting(f, seq(2, 40, 0, 0, 0))
			},
			wantScheduled: []chunk{{1, 30}},
		},
		{
			name: "out of blocks the newest running is preempted and nothing is admitted",
			spec: "vllm", freeBlocks: 3,
			setup: func(f *fakeInstance) {
				running(f, seq(1, 32, 1, 32, 0)) // needs a new block for token 33
				running(f, seq(2, 16, 1, 16, 0)) // needs a new block too
				waiting(f, seq(3, 8, 0, 0, 0))
				f.freeBlocks = 0
			},
			wantScheduled: []chunk{{1, 1}},
			wantPreempted: []uint64{2},
		},
		{
			name: "a sequence that is itself the newest is preempted and scheduling stops",
			spec: "vllm", freeBlocks: 2,
			setup: func(f *fakeInstance) {
				running(f, seq(1, 32, 1, 32, 0))
				f.freeBlocks = 0
			},
			wantPreempted: []uint64{1},
		},
		{
			name: "priority admits the most urgent first",
			spec: "priority", freeBlocks: 100,
			setup: func(f *fakeInstance) {
				waiting(f, seq(1, 10, 0, 0, 5))
				waiting(f, seq(2, 10, 0, 0, 1))
				waiting(f, seq(3, 10, 0, 0, 1))
			},
			wantScheduled: []chunk{{2, 10}, {3, 10}, {1, 10}},
		},
		{
			name: "priority preempts the least urgent even if already scheduled",
			spec: "priority", freeBlocks: 10,
			setup: func(f *fakeInstance) {
				running(f, seq(1, 20, 1, 20, 9)) // least urgent, scheduled first
				running(f, seq(2, 16, 1, 16, 0)) // needs a block that is not there
				f.freeBlocks = 0
			},
			wantScheduled: []chunk{{2, 1}},
			wantPreempted: []uint64{1},
		},
		{
			name: "static admits nothing while a batch runs",
			spec: "static", freeBlocks: 100,
			setup: func(f *fakeInstance) {
				running(f, seq(1, 50, 3, 52, 0))
				waiting(f, seq(2, 60, 0, 0, 0))
			},
			wantScheduled: []chunk{{1, 1}},
		},
		{
			name: "static admits a new batch when idle",
			spec: "static:max_num_seqs=2", freeBlocks: 100,
			setup: func(f *fakeInstance) {
				waiting(f, seq(1, 10, 0, 0, 0))
				waiting(f, seq(2, 10, 0, 0, 0))
				waiting(f, seq(3, 10, 0, 0, 0))
			},
			wantScheduled: []chunk{{1, 10}, {2, 10}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeInstance{blockSize: 16, freeBlocks: tc.freeBlocks}
			tc.setup(f)
			build(t, tc.spec).Plan(f)
			if diff := cmp.Diff(tc.wantScheduled, f.scheduled); diff != "" {
				t.Errorf("scheduled (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantPreempted, f.preempted); diff != "" {
				t.Errorf("preempted (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDefaultsFollowGPUClass(t *testing.T) {
	for _, tc := range []struct {
		class string
		want  Limits
	}{
		{"h100", Limits{MaxNumBatchedTokens: 8192, MaxNumSeqs: 1024, ChunkedPrefill: true}},
		{"", Limits{MaxNumBatchedTokens: 2048, MaxNumSeqs: 256, ChunkedPrefill: true}},
	} {
		p, err := Registry.Build(policies.Spec{Name: "vllm"}, policies.Env{GPUClass: tc.class})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, p.Limits()); diff != "" {
			t.Errorf("class %q limits (-want +got):\n%s", tc.class, diff)
		}
	}
}

func TestBadParams(t *testing.T) {
	for _, spec := range []string{
		"vllm:max_num_seqs=0",
		"vllm:max_num_batched_tokens=many",
		"vllm:max_num_sequences=4",
		"priority:chunked_prefill=maybe",
		"fcfs",
	} {
		_, _, err := Registry.Parse(spec, policies.Env{})
		if err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", spec)
			continue
		}
		if !strings.Contains(err.Error(), "\"") {
			t.Errorf("Parse(%q) error %q does not name the offending part", spec, err)
		}
	}
}

// TestSpecIsResolved: every batch policy reports its spec with every documented parameter
// at the value it runs with, and building that spec again under any GPU class gives the
// same limits: the resolved spec, not the Env, decides the schedule.
func TestSpecIsResolved(t *testing.T) {
	envs := []policies.Env{{}, {GPUClass: "h100"}, {BlockSize: 32, Seed: 5}}
	for _, e := range Registry.Entries() {
		for _, text := range []string{e.Name, e.Name + ":max_num_seqs=7,chunked_prefill=false"} {
			for _, env := range envs {
				t.Run(text+"/"+env.GPUClass, func(t *testing.T) {
					spec, err := policies.ParseSpec(text)
					if err != nil {
						t.Fatal(err)
					}
					pol, resolved, err := Registry.Resolve(spec, env)
					if err != nil {
						t.Fatal(err)
					}
					if diff := cmp.Diff(resolved, pol.Spec()); diff != "" {
						t.Errorf("Spec() differs from the parameters read (-read +Spec):\n%s", diff)
					}
					var names []string
					for _, p := range e.Params {
						names = append(names, p.Name)
					}
					got := slices.Sorted(maps.Keys(pol.Spec().Params))
					slices.Sort(names)
					if diff := cmp.Diff(names, got); diff != "" {
						t.Errorf("Spec() parameters (-documented +reported):\n%s", diff)
					}
					for _, other := range envs {
						again, err := Registry.Build(pol.Spec(), other)
						if err != nil {
							t.Fatal(err)
						}
						if diff := cmp.Diff(pol.Limits(), again.Limits()); diff != "" {
							t.Errorf("rebuilt under %+v: limits (-first +rebuilt):\n%s", other, diff)
						}
						if diff := cmp.Diff(pol.Spec(), again.Spec()); diff != "" {
							t.Errorf("rebuilt under %+v: spec (-first +rebuilt):\n%s", other, diff)
						}
					}
				})
			}
		}
	}
	// The bug of issue 11: the same spec text means different limits on different GPU
	// classes, which the resolved specs show.
	h100, _, _ := Registry.Resolve(policies.Spec{Name: "vllm"}, policies.Env{GPUClass: "h100"})
	cpu, _, _ := Registry.Resolve(policies.Spec{Name: "vllm"}, policies.Env{})
	if h100.Spec().String() == cpu.Spec().String() {
		t.Errorf("vllm resolves to %s both with and without an h100 GPU class", cpu.Spec())
	}
	if want := "vllm:chunked_prefill=true,long_prefill_token_threshold=0,max_num_batched_tokens=2048,max_num_seqs=256"; cpu.Spec().String() != want {
		t.Errorf("vllm without a GPU class resolves to %s, want %s", cpu.Spec(), want)
	}
}
