package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// KVCache is the paged key/value storage of every layer. Block b holds positions
// [b*BlockSize, (b+1)*BlockSize) of whichever sequence's block table names it; within a
// layer, keys (and values) are laid out [numBlocks][blockSize][KVHeads][HeadDim] float32,
// so one token's keys for all heads are contiguous. Keys are stored after rotary
// embedding.
type KVCache struct {
	numBlocks, blockSize int
	kvDim                int
	layers               int
	k, v                 [][]float32 // per layer
}

// NewKVCache allocates numBlocks blocks of blockSize tokens for the model.
func (m *Model) NewKVCache(numBlocks, blockSize int) *KVCache {
	if numBlocks <= 0 || blockSize <= 0 {
		panic(fmt.Sprintf("model: NewKVCache(%d, %d): want positive sizes", numBlocks, blockSize))
	}
	c := &KVCache{numBlocks: numBlocks, blockSize: blockSize, kvDim: m.Config.KVDim(), layers: m.Config.Layers}
	per := numBlocks * blockSize * c.kvDim
	c.k = make([][]float32, c.layers)
	c.v = make([][]float32, c.layers)
	for l := range c.k {
		c.k[l] = make([]float32, per)
		c.v[l] = make([]float32, per)
	}
	return c
}

// NumBlocks is the number of blocks.
func (c *KVCache) NumBlocks() int { return c.numBlocks }

// BlockSize is tokens per block.
func (c *KVCache) BlockSize() int { return c.blockSize }

// slot returns the offset of position p of a sequence with block table blocks in a
// layer's key or value storage.
func (c *KVCache) slot(blocks []int32, p int) int {
	return (int(blocks[p/c.blockSize])*c.blockSize + p%c.blockSize) * c.kvDim
}

// BlockBytes is the size of one block's contents as ReadBlock writes them: every layer's
// keys then values for the block's positions, float32 little-endian.
func (c *KVCache) BlockBytes() int { return 2 * c.layers * c.blockSize * c.kvDim * 4 }

// ReadBlock copies block b's keys and values, every layer, into dst (BlockBytes long):
// what leaves the cache when a block is offloaded to a lower tier or sent to another
// engine.
func (c *KVCache) ReadBlock(b int32, dst []byte) {
	c.checkBlock(b, len(dst))
	n := c.blockSize * c.kvDim
	off := int(b) * n
	o := 0
	for l := 0; l < c.layers; l++ {
		for _, src := range [2][]float32{c.k[l][off : off+n], c.v[l][off : off+n]} {
			if littleEndian {
				o += copy(dst[o:], floatBytes(src))
				continue
			}
			for _, f := range src {
				binary.LittleEndian.PutUint32(dst[o:], math.Float32bits(f))
				o += 4
			}
		}
	}
}

// WriteBlock fills block b from src, as ReadBlock wrote it.
func (c *KVCache) WriteBlock(b int32, src []byte) {
	c.checkBlock(b, len(src))
	n := c.blockSize * c.kvDim
	off := int(b) * n
	o := 0
	for l := 0; l < c.layers; l++ {
		for _, dst := range [2][]float32{c.k[l][off : off+n], c.v[l][off : off+n]} {
			if littleEndian {
				o += copy(floatBytes(dst), src[o:])
				continue
			}
			for i := range dst {
				dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[o:]))
				o += 4
			}
		}
	}
}

// littleEndian: the machine stores float32 as the block format does, so a block moves as a
// plain memory copy (a tier load is a copy, not a float-by-float decode).
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// floatBytes is f's memory as bytes.
func floatBytes(f []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), len(f)*4)
}

func (c *KVCache) checkBlock(b int32, size int) {
	if b < 0 || int(b) >= c.numBlocks {
		panic(fmt.Sprintf("model: KV block %d out of range [0, %d)", b, c.numBlocks))
	}
	if size != c.BlockBytes() {
		panic(fmt.Sprintf("model: KV block buffer of %d bytes, want %d", size, c.BlockBytes()))
	}
}
