//go:build !linux

package kvoffload

import "os"

func freeBytes(string) (uint64, bool) { return 0, false }

func preallocate(f *os.File, size int64) error { return f.Truncate(size) }

func reopenDirect(*os.File) (*os.File, bool) { return nil, false }

func availableMemory() (uint64, bool) { return 0, false }
