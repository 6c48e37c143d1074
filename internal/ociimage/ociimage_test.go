package ociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// staticBinary builds a small static Go program, standing in for servelab (whose static
// build takes minutes on a cold cache; 'make image' builds the real one).
func staticBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() { println(\"servelab stand-in\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "servelab")
	cmd := exec.Command("go", "build", "-o", bin, src)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the stand-in: %v\n%s", err, out)
	}
	return bin
}

func TestImageTarball(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the image holds a linux binary built here")
	}
	bin := staticBinary(t)
	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "image.tar")
	digest, err := Write(out, Options{Binary: bin, Tag: "registry.example/servelab:v1"})
	if err != nil {
		t.Fatal(err)
	}
	// Read back as an OCI image layout, the tag in index.json.
	dir := untar(t, out)
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		t.Fatalf("index.json: %+v, %v", im, err)
	}
	desc := im.Manifests[0]
	if desc.Annotations["org.opencontainers.image.ref.name"] != "v1" || desc.Annotations["io.containerd.image.name"] != "registry.example/servelab:v1" {
		t.Errorf("index.json annotations %v", desc.Annotations)
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	// docker load's manifest.json names the same blobs.
	var dm []dockerManifest
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &dm); err != nil || len(dm) != 1 || len(dm[0].Layers) != 1 {
		t.Fatalf("manifest.json %s: %v", raw, err)
	}
	for _, p := range append([]string{dm[0].Config}, dm[0].Layers...) {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("manifest.json names %s: %v", p, err)
		}
	}
	if diff := cmp.Diff([]string{"registry.example/servelab:v1"}, dm[0].RepoTags); diff != "" {
		t.Errorf("RepoTags (-want +got):\n%s", diff)
	}
	if got, err := img.Digest(); err != nil || got != digest {
		t.Errorf("digest read back %v (%v), written %v", got, err, digest)
	}
	mt, err := img.MediaType()
	if err != nil || mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %v %v", mt, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"servelab"}, cf.Config.Entrypoint); diff != "" {
		t.Errorf("entrypoint (-want +got):\n%s", diff)
	}
	if cf.Config.User != "65532:65532" || cf.OS != "linux" || cf.Architecture != runtime.GOARCH || len(cf.Config.Cmd) != 0 {
		t.Errorf("config: user %q, %s/%s, cmd %q", cf.Config.User, cf.OS, cf.Architecture, cf.Config.Cmd)
	}
	if diff := cmp.Diff([]string{"PATH=" + Path}, cf.Config.Env); diff != "" || !strings.Contains(Path, "/usr/local/bin") {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := map[string]int64{}
	var got []byte
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = h.Mode
		if h.Name == BinaryPath {
			if got, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
			if h.Uid != 0 || h.Gid != 0 {
				t.Errorf("binary owned by %d:%d", h.Uid, h.Gid)
			}
		}
	}
	if diff := cmp.Diff(map[string]int64{"tmp/": 0o1777, "usr/": 0o755, "usr/local/": 0o755, "usr/local/bin/": 0o755, BinaryPath: 0o755}, files); diff != "" {
		t.Errorf("layer files and modes (-want +got):\n%s", diff)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the layer's binary (%d bytes) is not the one given (%d bytes)", len(got), len(want))
	}
	// The same binary gives the same image, and the same file.
	second := filepath.Join(t.TempDir(), "again.tar")
	again, err := Write(second, Options{Binary: bin, Tag: "registry.example/servelab:v1"})
	if err != nil || again != digest {
		t.Errorf("rebuilt digest %v (%v), first %v", again, err, digest)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(second)
	if !bytes.Equal(a, b) {
		t.Errorf("the same image wrote different archives (%d and %d bytes)", len(a), len(b))
	}
}

// untar extracts an archive of regular files and directories into a new directory.
func untar(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("archive entry %q leaves the directory", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, data, 0o644)
			}
		default:
			t.Fatalf("archive entry %q of type %c", h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestImageRefusesWhatWouldNotRun(t *testing.T) {
	text := filepath.Join(t.TempDir(), "servelab")
	os.WriteFile(text, []byte("#!/bin/sh\necho hi\n"), 0o755)
	for _, tc := range []struct{ bin, want string }{
		{filepath.Join(t.TempDir(), "missing"), "binary: open"},
		{text, "not a statically linked ELF executable"},
		{"/bin/sh", "not a statically linked ELF executable"}, // dynamically linked on Linux distributions
	} {
		if _, err := os.Stat(tc.bin); tc.bin == "/bin/sh" && err != nil {
			continue
		}
		_, err := Build(Options{Binary: tc.bin, Tag: "servelab:latest"})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.bin, err, tc.want)
		}
	}
	if _, err := Write(filepath.Join(t.TempDir(), "x.tar"), Options{Binary: staticBinary(t), Tag: "Bad Tag"}); err == nil || !strings.Contains(err.Error(), `tag "Bad Tag"`) {
		t.Errorf("bad tag: %v", err)
	}
}
