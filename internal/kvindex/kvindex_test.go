package kvindex

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// llmdWeight is llm-d-kv-cache's default BackendConfigs (pkg/kvcache/backend.go): gpu 1.0,
// cpu 0.8, any other medium 1.0 (getMaxWeight's default).
func llmdWeight(m string) float64 {
	if strings.EqualFold(m, "cpu") {
		return 0.8
	}
	return 1
}

type event struct {
	kind   string // "stored", "removed", "cleared"
	medium string
	hashes []uint64
}

func apply(t *testing.T, x *Index, evs []event) {
	t.Helper()
	for _, ev := range evs {
		switch ev.kind {
		case "stored":
			if err := x.Stored(ev.medium, ev.hashes); err != nil {
				t.Fatal(err)
			}
		case "removed":
			x.Removed(ev.medium, ev.hashes)
		case "cleared":
			x.Clear()
		default:
			t.Fatalf("event kind %q", ev.kind)
		}
	}
}

func TestIndexWeighsByMedium(t *testing.T) {
	prompt := []uint64{1, 2, 3}
	for _, tc := range []struct {
		name   string
		events []event
		// blocks and weight are what the index answers for prompt; media, the media of
		// each of its hashes.
		blocks int
		weight float64
		media  [][]string
	}{
		{name: "stored without medium is the GPU",
			events: []event{{"stored", "", []uint64{1, 2, 3}}},
			blocks: 3, weight: 3, media: [][]string{{"GPU"}, {"GPU"}, {"GPU"}}},
		{name: "stored on GPU",
			events: []event{{"stored", "GPU", []uint64{1, 2}}},
			blocks: 2, weight: 2, media: [][]string{{"GPU"}, {"GPU"}, nil}},
		{name: "offloaded: removed from GPU, stored on CPU",
			events: []event{
				{"stored", "GPU", []uint64{1, 2, 3}},
				{"removed", "GPU", []uint64{2, 3}},
				{"stored", "CPU", []uint64{2, 3}}},
			blocks: 3, weight: 1 + 0.8 + 0.8, media: [][]string{{"GPU"}, {"CPU"}, {"CPU"}}},
		{name: "evicted from the last tier",
			events: []event{
				{"stored", "GPU", []uint64{1, 2, 3}},
				{"removed", "GPU", []uint64{2, 3}},
				{"stored", "CPU", []uint64{2, 3}},
				{"removed", "CPU", []uint64{2}}},
			blocks: 1, weight: 1, media: [][]string{{"GPU"}, nil, {"CPU"}}},
		{name: "loaded back: removed from CPU, stored on GPU",
			events: []event{
				{"stored", "CPU", []uint64{1, 2}},
				{"removed", "CPU", []uint64{1}},
				{"stored", "GPU", []uint64{1}}},
			blocks: 2, weight: 1.8, media: [][]string{{"GPU"}, {"CPU"}, nil}},
		{name: "on both counts at the greater weight; removing one medium keeps the other",
			events: []event{
				{"stored", "GPU", []uint64{1, 2}},
				{"stored", "CPU", []uint64{1, 2, 3}},
				{"removed", "GPU", []uint64{2}}},
			blocks: 3, weight: 1 + 0.8 + 0.8, media: [][]string{{"GPU", "CPU"}, {"CPU"}, {"CPU"}}},
		{name: "removed from a medium that does not hold it",
			events: []event{
				{"stored", "CPU", []uint64{1}},
				{"removed", "GPU", []uint64{1}},
				{"removed", "DISK", []uint64{1}}},
			blocks: 1, weight: 0.8, media: [][]string{{"CPU"}, nil, nil}},
		{name: "disk weighs 1 as llm-d's unlisted media; medium case does not matter",
			events: []event{
				{"stored", "disk", []uint64{1}},
				{"stored", "cpu", []uint64{2}},
				{"removed", "Cpu", []uint64{2}},
				{"stored", "CPU", []uint64{2}}},
			blocks: 2, weight: 1.8, media: [][]string{{"DISK"}, {"CPU"}, nil}},
		{name: "AllBlocksCleared forgets every medium",
			events: []event{
				{"stored", "GPU", []uint64{1}},
				{"stored", "CPU", []uint64{2, 3}},
				{"cleared", "", nil},
				{"stored", "CPU", []uint64{3}}},
			blocks: 0, weight: 0, media: [][]string{nil, nil, {"CPU"}}},
		{name: "a prefix stops at the first hash held nowhere",
			events: []event{{"stored", "CPU", []uint64{1, 3}}},
			blocks: 1, weight: 0.8, media: [][]string{{"CPU"}, nil, {"CPU"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := New(4)
			apply(t, x, tc.events)
			if got := x.CachedPrefixBlocks(prompt); got != tc.blocks {
				t.Errorf("CachedPrefixBlocks = %d, want %d", got, tc.blocks)
			}
			if got := x.CachedPrefixWeight(prompt, llmdWeight); !near(got, tc.weight) {
				t.Errorf("CachedPrefixWeight = %g, want %g", got, tc.weight)
			}
			var media [][]string
			for _, h := range prompt {
				media = append(media, x.Media(h))
			}
			if d := cmp.Diff(tc.media, media); d != "" {
				t.Errorf("media of %v (-want +got):\n%s", prompt, d)
			}
		})
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// TestIndexTooManyMedia: the 32nd medium is refused with an error naming it, and the
// index keeps what it had.
func TestIndexTooManyMedia(t *testing.T) {
	x := New(4)
	for i := range MaxMedia {
		if err := x.Stored(string(rune('A'+i%26))+strings.Repeat("X", i/26), []uint64{uint64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	err := x.Stored("ONEMORE", []uint64{99})
	if err == nil || !strings.Contains(err.Error(), `"ONEMORE"`) {
		t.Fatalf("error %v, want one naming the medium", err)
	}
	if x.Len() != MaxMedia || x.CachedPrefixBlocks([]uint64{99}) != 0 {
		t.Errorf("index holds %d hashes (want %d), 99 cached: %v", x.Len(), MaxMedia, x.CachedPrefixBlocks([]uint64{99}) == 1)
	}
}
