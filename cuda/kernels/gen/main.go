// Command gen compiles cuda/kernels/kernels.cu with NVRTC (cuda/nvrtc; install it with
// scripts/install-nvrtc.sh) into the files cuda/kernels embeds: kernels_sm90.cubin,
// kernels.ptx and kernels_sm90.resources.txt. Run it through go generate ./cuda/kernels.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"servelab/cuda/kernels/internal/build"
	"servelab/cuda/nvrtc"
)

func main() {
	dir := flag.String("dir", ".", "the cuda/kernels directory: reads kernels.cu, writes the generated files")
	flag.Parse()
	if err := run(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	src, err := os.ReadFile(filepath.Join(dir, build.Source))
	if err != nil {
		return err
	}
	n, err := nvrtc.Load()
	if err != nil {
		return err
	}
	files, err := build.Files(n, string(src))
	if err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := os.WriteFile(filepath.Join(dir, name), files[name], 0o644); err != nil {
			return err
		}
		fmt.Printf("wrote %s (%d bytes)\n", filepath.Join(dir, name), len(files[name]))
	}
	return nil
}
