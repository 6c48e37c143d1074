//go:build !linux

package local

import (
	"errors"
	"os/exec"
	"time"
)

// errNoAffinity: pinning and the /proc readers are Linux's.
var errNoAffinity = errors.New("local: CPU pinning (sched_setaffinity) and CPU accounting through /proc need Linux")

// AllowedCPUs needs Linux.
func AllowedCPUs() ([]int, error) { return nil, errNoAffinity }

func startPinned(*exec.Cmd, []int) error { return errNoAffinity }

// PinProcess needs Linux.
func PinProcess([]int) (func() error, error) { return nil, errNoAffinity }

// ProcessCPUTime needs Linux.
func ProcessCPUTime(int) (time.Duration, error) { return 0, errNoAffinity }

// ProcessCPUWait needs Linux.
func ProcessCPUWait(int) (time.Duration, error) { return 0, errNoAffinity }

// SelfCPUTime needs Linux.
func SelfCPUTime() (time.Duration, error) { return 0, errNoAffinity }

// HostBusyTime needs Linux.
func HostBusyTime([]int) (time.Duration, error) { return 0, errNoAffinity }

// LoadAverage needs Linux.
func LoadAverage() (float64, error) { return 0, errNoAffinity }
