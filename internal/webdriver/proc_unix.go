//go:build unix

package webdriver

import (
	"os/exec"
	"syscall"
)

// setProcessGroup puts chromedriver in a process group of its own, which the browsers it
// starts join, so Close stops them all.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

func killProcessGroup(cmd *exec.Cmd) {
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}
