package bench

import (
	"servelab/traces"
)

// Prompt synthesises request id's prompt: row.InputTokens token ids in
// [FirstTokenID, vocab). The tokens of hash block i are a function of the seed, the hash
// id and i alone, so requests with equal hash-id prefixes have equal token prefixes (and
// the engines' chained block hashes match exactly where the trace says blocks repeat);
// every other token is unique to the request.
func Prompt(row traces.Row, id, seed uint64, vocab int) []int32 {
	ids := make([]int32, row.InputTokens)
	span := uint64(vocab - FirstTokenID)
	pos := 0
	if bs := row.HashBlockSize; bs > 0 {
		for i, h := range row.HashIDs {
			state := mix(seed ^ mix(uint64(h)) ^ mix(uint64(i)+0x9e3779b97f4a7c15))
			for j := 0; j < bs && pos < len(ids); j++ {
				state = mix(state)
				ids[pos] = FirstTokenID + int32(state%span)
				pos++
			}
		}
	}
	state := mix(seed ^ mix(id^0xa0761d6478bd642f) ^ 0xe7037ed1a0b428db)
	for ; pos < len(ids); pos++ {
		state = mix(state)
		ids[pos] = FirstTokenID + int32(state%span)
	}
	return ids
}

// mix is splitmix64's finaliser: a bijective scramble of a 64-bit state.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
