package local

import "syscall"

// engineSysProcAttr puts an engine in its own process group and has the kernel send it
// SIGTERM if this process dies first.
func engineSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
