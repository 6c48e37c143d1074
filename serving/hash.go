package serving

// Block hashes chain like vLLM's: a block's hash covers its parent's hash and its own
// content, so equal hashes mean equal prefixes. Contents are reduced to a 64-bit key
// first: token ids in the real engine, trace hash ids in the simulator.

const rootHash uint64 = 0x9e3779b97f4a7c15

// mix64 is the splitmix64 finaliser: a fast bijection with good avalanche, enough for
// 64-bit content keys where collisions are negligible at cache sizes of millions.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// ChainHash returns the hash of a block whose parent has hash parent (0 for the first
// block) and whose content reduces to key.
func ChainHash(parent, key uint64) uint64 {
	if parent == 0 {
		parent = rootHash
	}
	return mix64(parent ^ mix64(key+0x632be59bd9b4e019))
}

// TokenBlockKey reduces one block's token ids to a content key.
func TokenBlockKey(tokens []int32) uint64 {
	h := uint64(len(tokens))
	for _, t := range tokens {
		h = mix64(h ^ uint64(uint32(t)))
	}
	return h
}

// TokenBlockHashes returns the chained hashes of the full blocks of a token sequence.
func TokenBlockHashes(tokens []int32, blockSize int) []uint64 {
	n := len(tokens) / blockSize
	if n == 0 {
		return nil
	}
	out := make([]uint64, n)
	var parent uint64
	for i := range n {
		parent = ChainHash(parent, TokenBlockKey(tokens[i*blockSize:(i+1)*blockSize]))
		out[i] = parent
	}
	return out
}

// TraceBlockHashes maps a trace's prefix hash ids, given per traceBlock tokens, onto the
// chained hashes of the full blocks of a prompt of promptTokens at the engine's blockSize.
// Engine blocks that no hash id covers get keys unique to salt (normally the request id),
// so they never match another request's blocks.
func TraceBlockHashes(hashIDs []int64, traceBlock, promptTokens, blockSize int, salt uint64) []uint64 {
	n := promptTokens / blockSize
	if n == 0 {
		return nil
	}
	out := make([]uint64, n)
	var parent uint64
	for i := range n {
		start := i * blockSize
		var key uint64
		if t := start / max(traceBlock, 1); traceBlock > 0 && t < len(hashIDs) && start+blockSize <= (t+1)*traceBlock {
			// The engine block lies inside trace block t: its content is that block's id
			// plus its offset within it.
			key = mix64(uint64(hashIDs[t])) ^ uint64(start-t*traceBlock)
		} else {
			key = mix64(salt^0xa0761d6478bd642f) + uint64(i)
		}
		parent = ChainHash(parent, key)
		out[i] = parent
	}
	return out
}
