# servelab's image: the static servelab binary on distroless (no shell, no libc), run as
# the non-root user 65532. One image runs every part: servelab engine, router and
# controller (config/manager runs 'servelab controller --leader-elect').
#
#   docker build -t servelab:latest .
#
# Without Docker, 'make image' writes the same layout (on an empty base) as an OCI archive,
# bin/servelab-image.tar, with go-containerregistry (hack/image).

# -tags nocuda leaves out cuda/driver: purego's dlopen of libcuda.so.1 links the binary
# against libc even with CGO_ENABLED=0, and distroless/static has none.
FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -tags nocuda -ldflags "-s -w" -o /out/servelab ./cmd/servelab

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/servelab /usr/local/bin/servelab
USER 65532:65532
ENTRYPOINT ["servelab"]
