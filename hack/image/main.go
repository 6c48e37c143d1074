// Command image writes servelab's container image as a tarball without Docker
// (internal/ociimage): 'make image' builds the static binary and runs it.
//
//	go run ./hack/image --binary bin/image/servelab --out bin/servelab-image.tar --tag servelab:latest
package main

import (
	"flag"
	"fmt"
	"os"

	"servelab/internal/ociimage"
)

func main() {
	var o ociimage.Options
	out := flag.String("out", "bin/servelab-image.tar", "the image tarball to write")
	flag.StringVar(&o.Binary, "binary", "bin/image/servelab", "the static servelab binary (CGO_ENABLED=0 GOOS=linux go build -tags nocuda ./cmd/servelab)")
	flag.StringVar(&o.Tag, "tag", "servelab:latest", "the image's name in the tarball")
	flag.StringVar(&o.Arch, "arch", "", "the binary's GOARCH (default: this machine's)")
	flag.Parse()
	digest, err := ociimage.Write(*out, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s: %s (%s), user %s, entrypoint servelab\n", *out, o.Tag, digest, ociimage.User)
	fmt.Printf("load it with docker load -i %s, podman load -i %s, kind load image-archive %s or ctr images import %s\n", *out, *out, *out, *out)
}
