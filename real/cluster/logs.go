package cluster

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
)

// GetContainerLogs serves `kubectl logs` (the kubelet API's containerLogs): the
// container's output of its current run, or of the previous one (--previous), with
// tailLines, limitBytes and follow. The node keeps plain logs, without the per-line
// timestamps a container runtime records, so --timestamps, --since and --since-time are
// refused with a clear error.
func (p *provider) GetContainerLogs(ctx context.Context, namespace, name, container string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	pr := p.lookup(namespace, name)
	if pr == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	if opts.Timestamps || opts.SinceSeconds > 0 || !opts.SinceTime.IsZero() {
		return nil, errdefs.InvalidInput("--timestamps, --since and --since-time are not supported: node " + NodeName + " keeps its processes' output without per-line timestamps")
	}
	pr.mu.Lock()
	var c *ctr
	for _, x := range append(append([]*ctr{}, pr.inits...), pr.ctrs...) {
		if x.spec.Name == container {
			c = x
		}
	}
	if c == nil {
		pr.mu.Unlock()
		return nil, errdefs.NotFoundf("container %q is not in pod %s/%s", container, namespace, name)
	}
	n := c.restarts
	exited := c.exited
	if opts.Previous {
		n--
		exited = nil
	}
	hasRun := c.exited != nil
	pr.mu.Unlock()
	if n < 0 || !hasRun {
		if opts.Previous {
			return nil, errdefs.InvalidInputf("previous terminated container %q in pod %q not found", container, name)
		}
		return nil, errdefs.InvalidInputf("container %q in pod %q is waiting to start", container, name)
	}
	f, err := os.Open(pr.logPath(container, n))
	if err != nil {
		return nil, err
	}
	if opts.Tail > 0 {
		if err := seekTail(f, opts.Tail); err != nil {
			f.Close()
			return nil, err
		}
	}
	var r io.Reader = f
	if opts.Follow && exited != nil {
		r = &follower{ctx: ctx, f: f, exited: exited}
	}
	if opts.LimitBytes > 0 {
		r = io.LimitReader(r, int64(opts.LimitBytes))
	}
	return struct {
		io.Reader
		io.Closer
	}{r, f}, nil
}

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	const chunk = 32 << 10
	buf := make([]byte, chunk)
	lines := 0
	end := size
	// A final newline ends the last line rather than starting another.
	if size > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, size-1); err == nil && last[0] == '\n' {
			end = size - 1
		}
	}
	for pos := end; pos > 0; {
		start := max(pos-chunk, 0)
		b := buf[:pos-start]
		if _, err := f.ReadAt(b, start); err != nil {
			return err
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] == '\n' {
				lines++
				if lines == n {
					_, err := f.Seek(start+int64(i)+1, io.SeekStart)
					return err
				}
			}
		}
		pos = start
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// follower reads a growing log file until the process writing it has exited and the
// file is read to its end (`kubectl logs -f`).
type follower struct {
	ctx    context.Context
	f      *os.File
	exited <-chan struct{}
}

func (fl *follower) Read(p []byte) (int, error) {
	for {
		n, err := fl.f.Read(p)
		if n > 0 || (err != nil && err != io.EOF) {
			return n, err
		}
		select {
		case <-fl.exited:
			// One more read: what the process wrote just before it exited.
			n, err := fl.f.Read(p)
			if n > 0 {
				return n, nil
			}
			if err == nil {
				err = io.EOF
			}
			return 0, err
		case <-fl.ctx.Done():
			return 0, fl.ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
