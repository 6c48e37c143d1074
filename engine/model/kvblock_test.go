package model

import (
	"math/rand/v2"
	"testing"
)

func TestKVBlockRoundTrip(t *testing.T) {
	c := &KVCache{numBlocks: 6, blockSize: 4, kvDim: 3, layers: 2}
	rng := rand.New(rand.NewPCG(1, 2))
	per := c.numBlocks * c.blockSize * c.kvDim
	for l := 0; l < c.layers; l++ {
		c.k = append(c.k, make([]float32, per))
		c.v = append(c.v, make([]float32, per))
		for i := range per {
			c.k[l][i], c.v[l][i] = rng.Float32(), -rng.Float32()
		}
	}
	if got, want := c.BlockBytes(), 2*2*4*3*4; got != want {
		t.Fatalf("BlockBytes = %d, want %d", got, want)
	}
	buf := make([]byte, c.BlockBytes())
	c.ReadBlock(2, buf)
	c.WriteBlock(5, buf)
	n := c.blockSize * c.kvDim
	for l := 0; l < c.layers; l++ {
		for i := range n {
			if c.k[l][5*n+i] != c.k[l][2*n+i] || c.v[l][5*n+i] != c.v[l][2*n+i] {
				t.Fatalf("layer %d element %d: block 5 differs from block 2 after the copy", l, i)
			}
		}
		if c.k[l][4*n] == c.k[l][2*n] {
			t.Fatalf("layer %d: block 4 changed", l)
		}
	}
}

func TestKVBlockRejectsBadArguments(t *testing.T) {
	c := &KVCache{numBlocks: 2, blockSize: 1, kvDim: 1, layers: 1, k: [][]float32{{0, 0}}, v: [][]float32{{0, 0}}}
	for name, f := range map[string]func(){
		"block out of range": func() { c.ReadBlock(2, make([]byte, c.BlockBytes())) },
		"negative block":     func() { c.WriteBlock(-1, make([]byte, c.BlockBytes())) },
		"short buffer":       func() { c.ReadBlock(0, make([]byte, 3)) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}
