package gpu

import "testing"

// LoadFake loads o.Dir on a fake device (fake_test.go) of 1 GiB, for the external tests'
// engine runs without a GPU. fail, when set, is called with the device so a test can
// arm a failure later.
func LoadFake(o Options) (*Backend, func(call string, at int), error) {
	d := newFakeDevice(1 << 30)
	closed := 0
	b, err := load(o, fakeOpener(d, &fakeOps{d: d}, &closed))
	arm := func(call string, at int) {
		b.w.do(func() error { d.failCall, d.failAt, d.calls = call, at, 0; return nil })
	}
	return b, arm, err
}

// LoadEmulated loads o.Dir on kernels.cu emulated on the CPU (emu_test.go's emuDevice:
// 1 GiB stated, the real launch functions); it skips t as emuDevice does.
func LoadEmulated(t *testing.T, o Options) (*Backend, error) {
	t.Helper()
	return load(o, emuDevice(t).open)
}
