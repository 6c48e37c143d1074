// Package ociimage builds servelab's container image without Docker: one layer holding
// the static servelab binary (CGO_ENABLED=0) at /usr/local/bin/servelab and an empty /tmp,
// a config that runs it as the non-root user 65532 (distroless's "nonroot") with
// ENTRYPOINT ["servelab"], written as an OCI image archive that 'docker load', 'podman
// load', 'ctr images import' and 'kind load image-archive' take. The Dockerfile at the repository
// root builds the same image where Docker is available (on distroless/static:nonroot).
package ociimage

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Where the binary lies in the image, and who runs it.
const (
	BinaryPath = "usr/local/bin/servelab"
	// User is distroless's nonroot user and group.
	User = "65532:65532"
	Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Options describe the image.
type Options struct {
	// Binary is the static servelab binary to put in the image.
	Binary string
	// Tag names the image in the tarball, e.g. "servelab:latest".
	Tag string
	// Arch is the binary's architecture (GOARCH); empty means this machine's.
	Arch string
	// Created stamps the image and its files; zero means the Unix epoch, so the same
	// binary gives the same image digest.
	Created time.Time
}

// Build makes the image.
func Build(o Options) (v1.Image, error) {
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("binary: %w", err)
	}
	if !isStaticELF(bin) {
		return nil, fmt.Errorf("binary %s: not a statically linked ELF executable (build it with CGO_ENABLED=0 GOOS=linux go build -tags nocuda: cuda/driver's purego links libc)", o.Binary)
	}
	created := o.created()
	arch := o.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	layerTar, err := layerFiles(bin, created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: created}, CreatedBy: "servelab internal/ociimage: COPY servelab /usr/local/bin/servelab",
	}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", arch, v1.Time{Time: created}
	cf.Config.Entrypoint = []string{"servelab"}
	cf.Config.Cmd = nil
	cf.Config.User = User
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=" + Path}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":       "servelab",
		"org.opencontainers.image.description": "servelab: engine, router and controller (servelab engine | router | controller)",
	}
	return mutate.ConfigFile(img, cf)
}

// Write builds the image and writes it to path as an OCI image archive: a tar of an OCI
// image layout (oci-layout, index.json naming the tag, blobs/sha256/...) that also holds
// docker's manifest.json, as 'docker save' writes since Docker 25, so that docker load,
// podman load, ctr images import, kind load image-archive and skopeo (oci-archive:) all
// take it. It returns the image manifest's digest.
func Write(path string, o Options) (v1.Hash, error) {
	tag, err := name.NewTag(o.Tag)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("tag %q: %w", o.Tag, err)
	}
	img, err := Build(o)
	if err != nil {
		return v1.Hash{}, err
	}
	dir, err := os.MkdirTemp("", "servelab-image")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{
		// The OCI ref name is the tag; containerd reads the full name.
		"org.opencontainers.image.ref.name": tag.TagStr(),
		"io.containerd.image.name":          tag.Name(),
	})); err != nil {
		return v1.Hash{}, err
	}
	cfg, err := img.ConfigName()
	if err != nil {
		return v1.Hash{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return v1.Hash{}, err
	}
	entry := dockerManifest{Config: blobPath(cfg), RepoTags: []string{tag.Name()}}
	if tag.RegistryStr() == name.DefaultRegistry {
		entry.RepoTags = []string{tag.RepositoryStr() + ":" + tag.TagStr()}
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return v1.Hash{}, err
		}
		entry.Layers = append(entry.Layers, blobPath(d))
	}
	js, err := json.Marshal([]dockerManifest{entry})
	if err != nil {
		return v1.Hash{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), js, 0o644); err != nil {
		return v1.Hash{}, err
	}
	if err := tarDir(path, dir, o.created()); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}

// dockerManifest is an entry of docker's manifest.json ('docker save').
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func blobPath(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }

func (o Options) created() time.Time {
	if o.Created.IsZero() {
		return time.Unix(0, 0).UTC()
	}
	return o.Created
}

// tarDir writes the files under dir into a tar at path, in name order, with fixed times
// and owners, so that the same image gives the same file.
func tarDir(path, dir string, mtime time.Time) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		names = append(names, p)
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(names)
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	for _, p := range names {
		rel, _ := filepath.Rel(dir, p)
		st, err := os.Stat(p)
		if err != nil {
			f.Close()
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: mtime, Mode: 0o644, Format: tar.FormatPAX}
		if st.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
		} else {
			h.Typeflag, h.Size = tar.TypeReg, st.Size()
		}
		if err := tw.WriteHeader(h); err != nil {
			f.Close()
			return err
		}
		if !st.IsDir() {
			data, err := os.ReadFile(p)
			if err == nil {
				_, err = tw.Write(data)
			}
			if err != nil {
				f.Close()
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// layerFiles is the layer's tar: the directories, /tmp (world-writable, sticky) and the
// binary, owned by root and executable by all.
func layerFiles(bin []byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []struct {
		name string
		mode int64
	}{{"tmp/", 0o1777}, {"usr/", 0o755}, {"usr/local/", 0o755}, {"usr/local/bin/", 0o755}} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d.name, Mode: d.mode, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: BinaryPath, Mode: 0o755, Size: int64(len(bin)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// isStaticELF says whether b is an ELF executable without a program interpreter (a
// dynamically linked one would not start in an image with no libc).
func isStaticELF(b []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return false
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}
