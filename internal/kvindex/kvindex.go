// Package kvindex is a KV-event subscriber's index of one engine's prefix cache: which
// block hashes the engine holds, and on which media (tiers), as its BlockStored,
// BlockRemoved and AllBlocksCleared events tell. The real router keeps one per endpoint
// from /v1/kv_events; it implements serving.TieredPrefixCache, so the precise prefix
// scorer weighs its hits by tier with the same code as the simulator's.
//
// It follows llm-d-kv-cache's index (pkg/kvcache/kvevents/pool.go digestEvents and
// pkg/kvcache/kvblock/in_memory.go): an event's medium (vLLM's BlockStored/BlockRemoved
// medium, lowercased there) names the device tier of the entry it adds or evicts, an event
// without one means the GPU (DefaultDeviceTier), a block stored on several media has an
// entry per medium, BlockRemoved evicts only the entry of its own medium, and the block is
// forgotten when its last entry goes. A block on several media counts at the greatest of
// their weights (kvblock_scorer.go getMaxWeight).
package kvindex

import (
	"fmt"
	"math/bits"
	"strings"

	"servelab/internal/blockmap"
)

// DefaultMedium is the medium of an event that names none: vLLM's KV events leave medium
// None for the GPU's own blocks, and llm-d-kv-cache reads that as its DefaultDeviceTier.
const DefaultMedium = "GPU"

// MaxMedia is how many distinct media one index tells apart.
const MaxMedia = 31

// Index is one engine's prefix cache as its KV events describe it. Not safe for
// concurrent use.
type Index struct {
	// blocks maps a hash to the media holding it: bit i stands for media[i].
	blocks *blockmap.Map
	media  []string
	// sink keeps Prefetch's reads from being optimised away.
	sink uint64
	// weights is CachedPrefixWeight's scratch: the weight of each medium.
	weights []float64
}

// New returns an empty index sized for about blocks hashes.
func New(blocks int) *Index { return &Index{blocks: blockmap.New(blocks)} }

// Medium is medium as the index names it: upper case (vLLM's spelling; llm-d compares
// lowercased), DefaultMedium when empty.
func Medium(medium string) string {
	if medium == "" {
		return DefaultMedium
	}
	return strings.ToUpper(medium)
}

// bit returns medium's bit, adding the medium when add is set; 0 when it is unknown and
// not added.
func (x *Index) bit(medium string, add bool) (int32, error) {
	medium = Medium(medium)
	for i, m := range x.media {
		if m == medium {
			return 1 << i, nil
		}
	}
	if !add {
		return 0, nil
	}
	if len(x.media) == MaxMedia {
		return 0, fmt.Errorf("KV event medium %q: more than %d media (%s)", medium, MaxMedia, strings.Join(x.media, ", "))
	}
	x.media = append(x.media, medium)
	return 1 << (len(x.media) - 1), nil
}

// Stored records hashes as held on medium (BlockStored).
func (x *Index) Stored(medium string, hashes []uint64) error {
	b, err := x.bit(medium, true)
	if err != nil {
		return err
	}
	for _, h := range hashes {
		v, _ := x.blocks.Get(h)
		if v&b == 0 {
			x.blocks.Put(h, v|b)
		}
	}
	return nil
}

// Removed records hashes as gone from medium (BlockRemoved); a hash left on no medium is
// forgotten. Hashes not on medium are ignored, as llm-d's Evict ignores absent entries.
func (x *Index) Removed(medium string, hashes []uint64) {
	b, _ := x.bit(medium, false)
	if b == 0 {
		return
	}
	for _, h := range hashes {
		v, ok := x.blocks.Get(h)
		switch {
		case !ok || v&b == 0:
		case v == b:
			x.blocks.Delete(h)
		default:
			x.blocks.Put(h, v&^b)
		}
	}
}

// Clear forgets every hash (AllBlocksCleared).
func (x *Index) Clear() { x.blocks = blockmap.New(x.blocks.Len()) }

// Len is the number of hashes held on some medium.
func (x *Index) Len() int { return x.blocks.Len() }

// Has reports whether some medium holds h.
func (x *Index) Has(h uint64) bool { return x.blocks.Has(h) }

// Media returns the media holding h, in the order the index first saw them; nil when no
// medium does.
func (x *Index) Media(h uint64) []string {
	v, _ := x.blocks.Get(h)
	var out []string
	for ; v != 0; v &= v - 1 {
		out = append(out, x.media[bits.TrailingZeros32(uint32(v))])
	}
	return out
}

// CachedPrefixBlocks returns how many leading blocks of hashes are held on some medium
// (serving.PrefixCache).
func (x *Index) CachedPrefixBlocks(hashes []uint64) int {
	// A few slots are read ahead together (blockmap.Map.Prefetch), as
	// kv.Manager.CachedPrefixBlocks reads them: the misses overlap.
	const chunk = 8
	for i := 0; i < len(hashes); i += chunk {
		c := hashes[i:min(i+chunk, len(hashes))]
		if len(c) > 1 {
			x.sink += x.blocks.Prefetch(c)
		}
		for j, h := range c {
			if !x.blocks.Has(h) {
				return i + j
			}
		}
	}
	return len(hashes)
}

// Prefetch reads the slots of hashes ahead of updates to them (blockmap.Map.Prefetch); it
// changes nothing.
func (x *Index) Prefetch(hashes []uint64) uint64 { return x.blocks.Prefetch(hashes) }

// CachedPrefixWeight returns CachedPrefixBlocks's blocks, each weighted by the greatest
// weight of the media holding it (serving.TieredPrefixCache).
func (x *Index) CachedPrefixWeight(hashes []uint64, weight func(medium string) float64) float64 {
	x.weights = x.weights[:0]
	for _, m := range x.media {
		x.weights = append(x.weights, weight(m))
	}
	w := 0.0
	for _, h := range hashes {
		v, ok := x.blocks.Get(h)
		if !ok {
			break
		}
		best := x.weights[bits.TrailingZeros32(uint32(v))]
		for v &= v - 1; v != 0; v &= v - 1 {
			best = max(best, x.weights[bits.TrailingZeros32(uint32(v))])
		}
		w += best
	}
	return w
}
