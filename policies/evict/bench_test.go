package evict

import (
	"math/rand/v2"
	"testing"
)

const benchBlocks = 1 << 14

// benchInfo is a plausible mix of frees: a quarter uncached, hit counts mostly small,
// distinct hashes (S3-FIFO's ghost sees them), and three in four cached blocks extending
// the block freed just before (radix-lru's tree).
func benchInfo(i int) BlockInfo {
	info := BlockInfo{Cached: i%4 != 0, Hits: uint32(i % 7 * (i % 3)), Filled: uint64(i)}
	if info.Cached {
		info.Hash = uint64(i) + 1
		info.Parent, info.HasParent = int32((i*7919+1)%benchBlocks), i%4 != 1
	}
	return info
}

// allocated returns a policy with every block taken, and the blocks in a shuffled order.
func allocated(b *testing.B, name string) (Policy, []int32) {
	p := build(b, name)
	p.Reset(benchBlocks)
	blocks := popAll(p)
	rand.New(rand.NewPCG(1, 1)).Shuffle(len(blocks), func(i, j int) { blocks[i], blocks[j] = blocks[j], blocks[i] })
	return p, blocks
}

func BenchmarkFree(b *testing.B) {
	for _, name := range Registry.Names() {
		b.Run(name, func(b *testing.B) {
			p, blocks := allocated(b, name)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				k := i % len(blocks)
				if k == 0 && i > 0 {
					b.StopTimer()
					popAll(p)
					b.StartTimer()
				}
				p.Free(blocks[k], benchInfo(i))
			}
		})
	}
}

func BenchmarkPop(b *testing.B) {
	for _, name := range Registry.Names() {
		b.Run(name, func(b *testing.B) {
			p, blocks := allocated(b, name)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if p.Len() == 0 {
					b.StopTimer()
					for k, blk := range blocks {
						p.Free(blk, benchInfo(i+k))
					}
					b.StartTimer()
				}
				p.Pop()
			}
		})
	}
}

func BenchmarkTouch(b *testing.B) {
	for _, name := range Registry.Names() {
		b.Run(name, func(b *testing.B) {
			p, blocks := allocated(b, name)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				k := i % len(blocks)
				if k == 0 {
					b.StopTimer()
					for j, blk := range blocks {
						p.Free(blk, benchInfo(i+j))
					}
					b.StartTimer()
				}
				// Shuffled order: hits land anywhere in the free set.
				p.Touch(blocks[len(blocks)-1-k])
			}
		})
	}
}

// BenchmarkFreePop frees a held block and reuses one, as a busy cache does; every other
// iteration the freed block is hit (touched) instead.
func BenchmarkFreePop(b *testing.B) {
	for _, name := range Registry.Names() {
		b.Run(name, func(b *testing.B) {
			p, held := allocated(b, name)
			for i, blk := range held[:len(held)/2] {
				p.Free(blk, benchInfo(i))
			}
			held = held[len(held)/2:]
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				k := i % len(held)
				p.Free(held[k], benchInfo(i))
				if i%2 == 1 {
					p.Touch(held[k])
					continue
				}
				held[k], _ = p.Pop()
			}
		})
	}
}
