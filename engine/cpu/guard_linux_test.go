package cpu

import (
	"syscall"
	"testing"
	"unsafe"
)

// guarded returns a zeroed slice of n floats that ends where an inaccessible page
// begins, so that a kernel reading past its end faults, and the function that frees it.
func guarded(t testing.TB, n int) ([]float32, func()) {
	t.Helper()
	if n == 0 {
		return nil, func() {}
	}
	page := syscall.Getpagesize()
	size := (4*n + page - 1) / page * page
	mem, err := syscall.Mmap(-1, 0, size+page, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mprotect(mem[size:], syscall.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&mem[size-4*n])), n), func() { syscall.Munmap(mem) }
}
