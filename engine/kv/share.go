package kv

import (
	"fmt"

	"servelab/serving"
)

// Share appends blocks to dst's block table and references each once more, so they stay
// allocated (neither evicted nor reused) until Free(dst), whatever happens to the sequence
// that computed them. Every block must be referenced already. The real engine's prefill
// side holds a finished request's prompt blocks this way until a decode engine has pulled
// them (vLLM's delayed free of a do_remote_decode request's blocks).
func (m *Manager) Share(dst *serving.Seq, blocks []int32) {
	for _, b := range blocks {
		if b < 0 || int(b) >= len(m.blocks) || m.blocks[b].ref <= 0 {
			panic(fmt.Sprintf("kv: Share of block %d, which is not referenced", b))
		}
	}
	for _, b := range blocks {
		m.blocks[b].ref++
	}
	dst.Blocks = append(dst.Blocks, blocks...)
}
