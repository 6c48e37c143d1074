package gputest

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"servelab/cuda/driver"
)

// TestRequireWithoutGPU (on a machine without a GPU, as CI): Require skips, and under
// SERVELAB_REQUIRE_GPU=1 it fails, saying why; run in a child process so the failure is
// the child's.
func TestRequireWithoutGPU(t *testing.T) {
	if os.Getenv("GPUTEST_CHILD") == "1" {
		Require(t)
		t.Log("ran")
		return
	}
	if driver.DevicePresent() {
		t.Skip("this machine has a GPU")
	}
	for _, tc := range []struct {
		env      string
		wantFail bool
		want     string
	}{
		{"", false, "--- SKIP"},
		{EnvRequire + "=1", true, "/dev/nvidiactl does not exist"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRequireWithoutGPU$", "-test.v")
		cmd.Env = append(os.Environ(), "GPUTEST_CHILD=1", EnvRequire+"=")
		if tc.env != "" {
			cmd.Env = append(cmd.Env, tc.env)
		}
		out, err := cmd.CombinedOutput()
		if (err != nil) != tc.wantFail || !strings.Contains(string(out), tc.want) || strings.Contains(string(out), "ran") {
			t.Errorf("%q: err %v, output:\n%s\nwant failure %v and %q", tc.env, err, out, tc.wantFail, tc.want)
		}
	}
}
