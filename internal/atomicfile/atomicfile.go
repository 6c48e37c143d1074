// Package atomicfile writes a file whole or not at all: through a temporary file in the
// same directory and a rename, so a reader (another process following an experiment, a
// resumed run) never sees half of it.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write writes data to path with permissions perm, replacing any file there.
func Write(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		// CreateTemp makes the file private; outputs are as readable as any other file.
		err = tmp.Chmod(perm)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
