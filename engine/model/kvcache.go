package model

import "fmt"

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
