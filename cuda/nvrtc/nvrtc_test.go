package nvrtc

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// requireNVRTC loads NVRTC or skips; under CI=true or SERVELAB_REQUIRE_NVRTC=1 a missing
// NVRTC fails instead (.ci/run installs it with `make tools`).
func requireNVRTC(t *testing.T) *NVRTC {
	t.Helper()
	n, err := Load()
	if err != nil {
		if os.Getenv("CI") == "true" || os.Getenv("SERVELAB_REQUIRE_NVRTC") == "1" {
			t.Fatalf("NVRTC required (CI=true or SERVELAB_REQUIRE_NVRTC=1): %v", err)
		}
		t.Skipf("%v", err)
	}
	return n
}

func TestMissingDirIsErrNotInstalled(t *testing.T) {
	_, err := load(t.TempDir())
	if !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("load(empty dir) = %v, want ErrNotInstalled", err)
	}
	if !strings.Contains(err.Error(), "install-nvrtc.sh") {
		t.Errorf("error %q does not say how to install NVRTC", err)
	}
}

func TestDirFromEnv(t *testing.T) {
	t.Setenv("SERVELAB_NVRTC_DIR", "/some/where")
	if d, err := Dir(); err != nil || d != "/some/where" {
		t.Fatalf("Dir() = %q, %v; want /some/where", d, err)
	}
}

const saxpy = `extern "C" __global__ void saxpy(float *y, const float *x, float a, int n) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n) y[i] += a * x[i];
}`

func TestCompile(t *testing.T) {
	n := requireNVRTC(t)
	major, minor, err := n.Version()
	if err != nil {
		t.Fatal(err)
	}
	if major != 11 || minor < 8 {
		t.Errorf("NVRTC %d.%d, want 11.8 (Debian's libnvrtc11.2 11.8.89)", major, minor)
	}
	out, err := n.Compile(saxpy, "saxpy.cu", []string{"--gpu-architecture=sm_90", "--ptxas-options=-v"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out.PTX), ".visible .entry saxpy(") {
		t.Errorf("PTX has no saxpy entry:\n%s", out.PTX)
	}
	if len(out.CUBIN) < 4 || string(out.CUBIN[1:4]) != "ELF" {
		t.Errorf("cubin is not an ELF file: % x", out.CUBIN[:min(16, len(out.CUBIN))])
	}
	if !strings.Contains(out.Log, "registers") {
		t.Errorf("--ptxas-options=-v log has no register counts:\n%s", out.Log)
	}

	ptx, err := n.Compile(saxpy, "saxpy.cu", []string{"--gpu-architecture=compute_80"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ptx.PTX), ".target sm_80") {
		t.Errorf("compute_80 PTX does not target sm_80:\n%s", ptx.PTX)
	}
}

func TestCompileErrorCarriesLog(t *testing.T) {
	n := requireNVRTC(t)
	_, err := n.Compile("extern \"C\" __global__ void bad() { undeclared = 1; }", "bad.cu", []string{"--gpu-architecture=compute_80"}, false)
	var e *Error
	if !errors.As(err, &e) || e.Code != ErrorCompilation {
		t.Fatalf("Compile(bad) = %v, want NVRTC_ERROR_COMPILATION", err)
	}
	if !strings.Contains(err.Error(), "undeclared") {
		t.Errorf("error does not carry the log naming the identifier: %v", err)
	}
}
