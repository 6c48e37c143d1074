package kvoffload

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func freeBytes(dir string) (uint64, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return st.Bavail * uint64(st.Bsize), true
}

// preallocate reserves the file's blocks, so writes to it never need new space; where the
// file system cannot (EOPNOTSUPP), the file is only extended.
func preallocate(f *os.File, size int64) error {
	err := unix.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return f.Truncate(size)
	}
	return err
}

// reopenDirect opens f's file again with O_DIRECT through /proc/self/fd (its name is gone);
// false where the file system refuses it (tmpfs).
func reopenDirect(f *os.File) (*os.File, bool) {
	d, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return nil, false
	}
	// Some file systems accept the flag at open and fail the first I/O: probe one block.
	buf := NewBuffer(align)
	if _, err := d.ReadAt(buf[:align], 0); err != nil {
		d.Close()
		return nil, false
	}
	return d, true
}

// availableMemory is MemAvailable from /proc/meminfo: what the host tier may take without
// swapping or the OOM killer.
func availableMemory() (uint64, bool) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			var kb uint64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err == nil {
				return kb << 10, true
			}
		}
	}
	return 0, false
}
