package main

import "fmt"

// deviceHelp is --device's help: cuda detects the driver and no more yet (issue 15).
const deviceHelp = "where the model runs: cpu, or cuda (in progress, issue 15: loads the CUDA driver, libcuda.so.1, " +
	"and fails with \"no CUDA driver\" without one; there is no CUDA backend yet, so with a driver it stops " +
	"with an error saying so; nothing has run on a GPU)"

// checkDevice validates --device and, for cuda, loads the driver (loadCUDADriver, which
// never calls cuInit). No CUDA backend exists yet, so a loaded driver is an error too.
func (f *engineFlags) checkDevice() error {
	switch f.device {
	case "", "cpu":
		return nil
	case "cuda":
		if err := loadCUDADriver(); err != nil {
			return fmt.Errorf("--device cuda: %w", err)
		}
		return fmt.Errorf("--device cuda: the CUDA driver loaded, but the CUDA backend is not built yet (issue 15); use --device cpu")
	default:
		return fmt.Errorf("--device %q: want cpu or cuda", f.device)
	}
}
