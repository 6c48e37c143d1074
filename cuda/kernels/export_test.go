package kernels

import (
	"testing"

	"servelab/cuda/driver"
)

// Memory is device memory with *driver.Driver's memory calls (cuda/kernels/emu's
// Device), for MatchCPUEmulated.
type Memory interface {
	MemAlloc(bytes uintptr) (driver.DevicePtr, error)
	MemFree(p driver.DevicePtr) error
	MemcpyHtoD(dst driver.DevicePtr, src []byte) error
	MemcpyDtoH(dst []byte, src driver.DevicePtr) error
	CtxSynchronize() error
}

type extMemory struct{ m Memory }

func (e extMemory) alloc(n int) (driver.DevicePtr, error)   { return e.m.MemAlloc(uintptr(n)) }
func (e extMemory) htod(p driver.DevicePtr, b []byte) error { return e.m.MemcpyHtoD(p, b) }
func (e extMemory) dtoh(b []byte, p driver.DevicePtr) error { return e.m.MemcpyDtoH(b, p) }
func (e extMemory) sync() error                             { return e.m.CtxSynchronize() }

// MatchCPUEmulated runs TestKernelsMatchCPU's comparisons, the emulation's smaller
// shapes, through m over mem (for emu_test.go, an external test: cuda/kernels/emu
// imports this package), and frees what it allocated.
func MatchCPUEmulated(t *testing.T, mem Memory, m *Module) {
	g := &gpu{t: t, mem: extMemory{mem}, m: m, emulated: true}
	t.Cleanup(func() {
		for _, p := range g.alloc {
			if err := mem.MemFree(p); err != nil {
				t.Error(err)
			}
		}
	})
	matchCPU(t, g)
}
