// Package nvrtc binds NVIDIA's runtime compiler (libnvrtc) at run time through
// github.com/ebitengine/purego, without cgo, for cuda/kernels' generator: it compiles
// CUDA C to PTX and cubins on a machine without a GPU, driver or CUDA toolkit.
//
// The library is Debian's libnvrtc11.2 (NVRTC 11.8, non-free) unpacked by
// scripts/install-nvrtc.sh into ${XDG_CACHE_HOME:-~/.cache}/servelab/nvrtc, or the
// directory $SERVELAB_NVRTC_DIR names; Load looks there (and in its usr/lib/<triplet>
// subdirectories) only, never on the system's library path, so a generated file depends
// on exactly that compiler. libnvrtc.so.11.2 dlopens libnvrtc-builtins.so.11.8 by soname:
// Load opens the builtins first by full path with RTLD_GLOBAL, which that lookup then
// finds without LD_LIBRARY_PATH.
//
// The signatures are nvrtc.h's (CUDA 11.8): nvrtcProgram is an opaque pointer and every
// call returns an nvrtcResult.
package nvrtc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// The library files Load looks for, as Debian's packages name them.
const (
	LibName      = "libnvrtc.so.11.2"
	BuiltinsName = "libnvrtc-builtins.so.11.8"
)

// ErrNotInstalled is returned (wrapped, naming the directory searched) when the NVRTC
// libraries are not found.
var ErrNotInstalled = errors.New("NVRTC not installed (run scripts/install-nvrtc.sh, which `make tools` runs, or set SERVELAB_NVRTC_DIR)")

// Result is an nvrtcResult.
type Result int32

// Success is NVRTC_SUCCESS; NVRTC_ERROR_COMPILATION is the failure of a program that
// does not compile (its log says why).
const (
	Success          Result = 0
	ErrorCompilation Result = 6
)

// Error is a failed NVRTC call: the symbol and nvrtcGetErrorString's text.
type Error struct {
	Call string
	Code Result
	Text string
}

func (e *Error) Error() string {
	return fmt.Sprintf("nvrtc: %s: %s (%d)", e.Call, e.Text, int32(e.Code))
}

type program uintptr // nvrtcProgram

// NVRTC is the loaded library's entry points.
type NVRTC struct {
	// Lib and Builtins are the paths of the libraries loaded.
	Lib, Builtins string

	nvrtcVersion           func(major, minor *int32) Result
	nvrtcCreateProgram     func(p *program, src, name *byte, numHeaders int32, headers, includeNames unsafe.Pointer) Result
	nvrtcCompileProgram    func(p program, numOptions int32, options unsafe.Pointer) Result
	nvrtcGetProgramLogSize func(p program, size *uintptr) Result
	nvrtcGetProgramLog     func(p program, log *byte) Result
	nvrtcGetPTXSize        func(p program, size *uintptr) Result
	nvrtcGetPTX            func(p program, ptx *byte) Result
	nvrtcGetCUBINSize      func(p program, size *uintptr) Result
	nvrtcGetCUBIN          func(p program, cubin *byte) Result
	nvrtcDestroyProgram    func(p *program) Result
	nvrtcGetErrorString    func(r Result) string // purego copies the C string
}

func (n *NVRTC) symbols() []struct {
	name string
	fptr any
} {
	return []struct {
		name string
		fptr any
	}{
		{"nvrtcVersion", &n.nvrtcVersion},
		{"nvrtcCreateProgram", &n.nvrtcCreateProgram},
		{"nvrtcCompileProgram", &n.nvrtcCompileProgram},
		{"nvrtcGetProgramLogSize", &n.nvrtcGetProgramLogSize},
		{"nvrtcGetProgramLog", &n.nvrtcGetProgramLog},
		{"nvrtcGetPTXSize", &n.nvrtcGetPTXSize},
		{"nvrtcGetPTX", &n.nvrtcGetPTX},
		{"nvrtcGetCUBINSize", &n.nvrtcGetCUBINSize},
		{"nvrtcGetCUBIN", &n.nvrtcGetCUBIN},
		{"nvrtcDestroyProgram", &n.nvrtcDestroyProgram},
		{"nvrtcGetErrorString", &n.nvrtcGetErrorString},
	}
}

// Dir is the directory Load searches: $SERVELAB_NVRTC_DIR, else servelab/nvrtc in the
// user's cache directory ($XDG_CACHE_HOME or ~/.cache), where scripts/install-nvrtc.sh
// unpacks the packages.
func Dir() (string, error) {
	if d := os.Getenv("SERVELAB_NVRTC_DIR"); d != "" {
		return d, nil
	}
	c, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("nvrtc: no cache directory for NVRTC (set SERVELAB_NVRTC_DIR): %w", err)
	}
	return filepath.Join(c, "servelab", "nvrtc"), nil
}

// find returns the paths of name in dir or dir/usr/lib/*, "" when absent.
func find(dir, name string) string {
	cands := []string{filepath.Join(dir, name)}
	more, _ := filepath.Glob(filepath.Join(dir, "usr", "lib", "*", name))
	sort.Strings(more)
	cands = append(cands, more...)
	for _, c := range cands {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c
		}
	}
	return ""
}

var (
	loadOnce sync.Once
	loaded   *NVRTC
	loadErr  error
)

// Load finds and opens NVRTC once per process (see the package comment). Without the
// libraries it returns an error wrapping ErrNotInstalled.
func Load() (*NVRTC, error) {
	loadOnce.Do(func() {
		dir, err := Dir()
		if err != nil {
			loadErr = err
			return
		}
		loaded, loadErr = load(dir)
	})
	return loaded, loadErr
}

func load(dir string) (*NVRTC, error) {
	lib, builtins := find(dir, LibName), find(dir, BuiltinsName)
	if lib == "" || builtins == "" {
		return nil, fmt.Errorf("nvrtc: %s and %s not found in %s or its usr/lib/*: %w", LibName, BuiltinsName, dir, ErrNotInstalled)
	}
	if _, err := purego.Dlopen(builtins, purego.RTLD_NOW|purego.RTLD_GLOBAL); err != nil {
		return nil, fmt.Errorf("nvrtc: loading %s: %v", builtins, err)
	}
	h, err := purego.Dlopen(lib, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, fmt.Errorf("nvrtc: loading %s: %v", lib, err)
	}
	n := &NVRTC{Lib: lib, Builtins: builtins}
	for _, s := range n.symbols() {
		addr, err := purego.Dlsym(h, s.name)
		if err != nil {
			purego.Dlclose(h)
			return nil, fmt.Errorf("nvrtc: %s has no symbol %s: %v", lib, s.name, err)
		}
		purego.RegisterFunc(s.fptr, addr)
	}
	return n, nil
}

func (n *NVRTC) check(call string, r Result) error {
	if r == Success {
		return nil
	}
	e := &Error{Call: call, Code: r, Text: fmt.Sprintf("nvrtcResult %d", int32(r))}
	if t := n.nvrtcGetErrorString(r); t != "" {
		e.Text = t
	}
	return e
}

func cBytes(s string) []byte { return append([]byte(s), 0) }

// Version is nvrtcVersion: the NVRTC release, e.g. 11.8.
func (n *NVRTC) Version() (major, minor int, err error) {
	var ma, mi int32
	if err := n.check("nvrtcVersion", n.nvrtcVersion(&ma, &mi)); err != nil {
		return 0, 0, err
	}
	return int(ma), int(mi), nil
}

// Output is one compilation's results.
type Output struct {
	PTX   []byte // the PTX text, without the trailing NUL
	CUBIN []byte // the cubin, when the compilation targeted a real architecture (sm_XX)
	Log   string // the compiler's log (warnings, and ptxas's -v report)
}

// Compile compiles the CUDA C program src (named name in messages) with options, and
// returns its PTX, its log and, when cubin is set (options name a real architecture,
// --gpu-architecture=sm_XX), its cubin. A program that does not compile is an error
// carrying the log.
func (n *NVRTC) Compile(src, name string, options []string, cubin bool) (*Output, error) {
	srcB, nameB := cBytes(src), cBytes(name)
	var p program
	if err := n.check("nvrtcCreateProgram", n.nvrtcCreateProgram(&p, &srcB[0], &nameB[0], 0, nil, nil)); err != nil {
		return nil, err
	}
	runtime.KeepAlive(srcB)
	defer n.nvrtcDestroyProgram(&p)

	var pin runtime.Pinner
	defer pin.Unpin()
	opts := make([]*byte, len(options))
	for i, o := range options {
		b := cBytes(o)
		opts[i] = &b[0]
		pin.Pin(opts[i])
	}
	var optPtr unsafe.Pointer
	if len(opts) > 0 {
		pin.Pin(&opts[0])
		optPtr = unsafe.Pointer(&opts[0])
	}
	compileRes := n.nvrtcCompileProgram(p, int32(len(opts)), optPtr)

	out := &Output{}
	var size uintptr
	if err := n.check("nvrtcGetProgramLogSize", n.nvrtcGetProgramLogSize(p, &size)); err != nil {
		return nil, err
	}
	if size > 1 {
		buf := make([]byte, size)
		if err := n.check("nvrtcGetProgramLog", n.nvrtcGetProgramLog(p, &buf[0])); err != nil {
			return nil, err
		}
		out.Log = strings.TrimRight(string(buf), "\x00")
	}
	if err := n.check("nvrtcCompileProgram", compileRes); err != nil {
		return nil, fmt.Errorf("%w; %s:\n%s", err, name, out.Log)
	}
	if err := n.check("nvrtcGetPTXSize", n.nvrtcGetPTXSize(p, &size)); err != nil {
		return nil, err
	}
	if size > 0 {
		buf := make([]byte, size)
		if err := n.check("nvrtcGetPTX", n.nvrtcGetPTX(p, &buf[0])); err != nil {
			return nil, err
		}
		out.PTX = bytes.TrimRight(buf, "\x00")
	}
	if cubin {
		if err := n.check("nvrtcGetCUBINSize", n.nvrtcGetCUBINSize(p, &size)); err != nil {
			return nil, err
		}
		if size == 0 {
			return nil, fmt.Errorf("nvrtc: %s: empty cubin", name)
		}
		buf := make([]byte, size)
		if err := n.check("nvrtcGetCUBIN", n.nvrtcGetCUBIN(p, &buf[0])); err != nil {
			return nil, err
		}
		out.CUBIN = buf
	}
	return out, nil
}
