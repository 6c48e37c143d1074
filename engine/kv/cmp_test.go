package kv

import (
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func cmpSorted(less func(a, b uint64) bool) cmp.Option { return cmpopts.SortSlices(less) }
