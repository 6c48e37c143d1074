//go:build !linux

package local

import "syscall"

// engineSysProcAttr has no parent-death signal outside Linux: stop the cluster with Stop.
func engineSysProcAttr() *syscall.SysProcAttr { return nil }
