package main

import (
	"errors"
	"io"

	"servelab/traces"
)

// sliceScales resolves the prompts' and outputs' token scales of the compared slice, whose
// shape is scan, for an engine with context maxLen, and reads the slice once through them
// to count what they do to it: the rows clipped to the context and the outputs raised to
// 2 tokens, which the report prints.
func (f *fidelityFlags) sliceScales(scan traces.Shape, maxLen, blockSize int) (tokenScales, sliceShape, error) {
	in, err := resolveTokenScale(f.tokenScale, scan, maxLen, blockSize)
	if err != nil {
		return tokenScales{}, sliceShape{}, err
	}
	out, err := resolveOutputTokenScale(f.outputScale, scan, in, maxLen)
	if err != nil {
		return tokenScales{}, sliceShape{}, err
	}
	scales := tokenScales{Input: in, Output: out, Clip: maxLen}
	r, closer, err := traces.Open(f.trace, traces.Format(f.format))
	if err != nil {
		return tokenScales{}, sliceShape{}, err
	}
	defer closer.Close()
	r, shaped := scales.apply(traces.Limit(r, f.maxRequests))
	for {
		if _, err := r.Next(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return tokenScales{}, sliceShape{}, err
		}
	}
	return scales, shaped(), nil
}
