// Package local runs a serving cluster on one machine: N engine processes on loopback and
// the router in front of them. It is what `servelab up` starts and what `servelab fidelity`
// measures.
//
// Engines are separate processes, as in a real deployment, so one engine's garbage
// collection or crash does not stop the others, and each gets its own CPU threads. They
// are started in their own process group (a Ctrl-C in the terminal reaches only the parent,
// which then stops them in order) and, on Linux, with a parent-death signal, so they do not
// outlive a parent that is killed.
package local

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"servelab/real/router"
)

// Options describe a local cluster.
type Options struct {
	// Engines is the number of engine processes.
	Engines int
	// Command starts one engine; its listen address is taken from a line
	// "listening on http://HOST:PORT" on its standard output. Empty: this executable's
	// `engine` subcommand.
	Command []string
	// EngineArgs are appended to Command for every engine (model, policies, limits);
	// --host 127.0.0.1 --port 0 are added by Start.
	EngineArgs []string
	// EngineArgsFor, if set, adds flags for engine i (0-based) after EngineArgs.
	EngineArgsFor func(i int) []string
	// Env is added to each engine's environment.
	Env []string
	// Router configures the router; its Endpoints are filled in by Start. A nil Policy
	// starts no router (URL is then empty).
	Router router.Config
	// RouterAddr is where the router listens; empty means 127.0.0.1:0.
	RouterAddr string
	// Log receives the engines' output, each line prefixed with its engine's name.
	Log io.Writer
	// StartTimeout bounds the wait for every engine to answer /health; 0 means 2 minutes.
	StartTimeout time.Duration
}

// Cluster is a started local cluster.
type Cluster struct {
	// Endpoints are the engines' base URLs, in start order.
	Endpoints []string
	// URL is the router's base URL.
	URL string

	Router *router.Router

	engines []*engineProc
	server  *http.Server
	done    chan error
	once    sync.Once
	stopErr error
}

type engineProc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // set before exited closes
}

// Start launches the engines, waits until every one answers /health, then starts the
// router. On any failure everything started so far is stopped.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Engines <= 0 {
		return nil, fmt.Errorf("local: engines must be positive, got %d", opts.Engines)
	}
	if len(opts.Command) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("local: finding this executable: %w", err)
		}
		opts.Command = []string{exe, "engine"}
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 2 * time.Minute
	}
	c := &Cluster{done: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	addrs := make(chan addrOrErr, opts.Engines)
	var logMu sync.Mutex
	for i := range opts.Engines {
		e, err := startEngine(i, opts, &logMu, addrs)
		if err != nil {
			c.Stop(5 * time.Second)
			return nil, err
		}
		c.engines = append(c.engines, e)
	}
	byName := map[string]string{}
	for range opts.Engines {
		select {
		case a := <-addrs:
			if a.err != nil {
				c.Stop(5 * time.Second)
				return nil, a.err
			}
			byName[a.name] = "http://" + a.addr
		case <-ctx.Done():
			c.Stop(5 * time.Second)
			return nil, fmt.Errorf("local: engines did not report a listen address within %v: %w", opts.StartTimeout, ctx.Err())
		}
	}
	for _, e := range c.engines {
		c.Endpoints = append(c.Endpoints, byName[e.name])
	}
	for i, url := range c.Endpoints {
		if err := waitHealthy(ctx, url, c.engines[i]); err != nil {
			c.Stop(5 * time.Second)
			return nil, err
		}
	}
	if opts.Router.Policy != nil {
		if err := c.startRouter(ctx, opts); err != nil {
			c.Stop(5 * time.Second)
			return nil, err
		}
	}
	go c.watch()
	return c, nil
}

type addrOrErr struct {
	name, addr string
	err        error
}

const listenPrefix = "listening on http://"

func startEngine(i int, opts Options, logMu *sync.Mutex, addrs chan<- addrOrErr) (*engineProc, error) {
	name := fmt.Sprintf("engine-%d", i)
	args := append(append([]string{}, opts.Command[1:]...), opts.EngineArgs...)
	if opts.EngineArgsFor != nil {
		args = append(args, opts.EngineArgsFor(i)...)
	}
	args = append(args, "--host", "127.0.0.1", "--port", "0")
	cmd := exec.Command(opts.Command[0], args...)
	cmd.Env = append(os.Environ(), opts.Env...)
	cmd.SysProcAttr = engineSysProcAttr()
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout // one stream, so lines keep their order
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("local: starting %s (%s): %w", name, opts.Command[0], err)
	}
	e := &engineProc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		reported := false
		var last []string // the tail of its output, for the error when it dies early
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			logMu.Lock()
			fmt.Fprintf(opts.Log, "[%s] %s\n", name, line)
			logMu.Unlock()
			if !reported {
				if rest, ok := strings.CutPrefix(line, listenPrefix); ok {
					addrs <- addrOrErr{name: name, addr: strings.TrimSpace(rest)}
					reported = true
					continue
				}
				last = append(last, line)
				if len(last) > 5 {
					last = last[1:]
				}
			}
		}
		io.Copy(io.Discard, out)
		err := cmd.Wait()
		if err == nil {
			err = errors.New("exited")
		}
		e.err = fmt.Errorf("local: %s %v", name, err)
		if !reported {
			if len(last) > 0 {
				e.err = fmt.Errorf("%w: %s", e.err, strings.Join(last, " | "))
			}
			addrs <- addrOrErr{name: name, err: e.err}
		}
		close(e.exited)
	}()
	return e, nil
}

// waitHealthy polls url/health until it answers 200.
func waitHealthy(ctx context.Context, url string, e *engineProc) error {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-e.exited:
			return e.err
		case <-ctx.Done():
			return fmt.Errorf("local: %s at %s not healthy: %w", e.name, url, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *Cluster) startRouter(ctx context.Context, opts Options) error {
	cfg := opts.Router
	cfg.Endpoints = c.Endpoints
	r, err := router.New(cfg)
	if err != nil {
		return err
	}
	addr := opts.RouterAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		r.Close()
		return err
	}
	c.Router = r
	c.URL = "http://" + ln.Addr().String()
	c.server = &http.Server{Handler: r.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go c.server.Serve(ln)
	return r.WaitReady(ctx)
}

// watch reports the first engine that exits while the cluster runs.
func (c *Cluster) watch() {
	cases := make(chan *engineProc, len(c.engines))
	for _, e := range c.engines {
		go func() {
			<-e.exited
			cases <- e
		}()
	}
	e := <-cases
	c.done <- e.err
}

// Done delivers an error when an engine exits on its own (a crash), or after Stop.
func (c *Cluster) Done() <-chan error { return c.done }

// Stop shuts the router down, asks every engine to finish in-flight requests (SIGTERM) and
// kills those still running after grace.
func (c *Cluster) Stop(grace time.Duration) error {
	c.once.Do(func() {
		if c.server != nil {
			ctx, cancel := context.WithTimeout(context.Background(), grace)
			c.server.Shutdown(ctx)
			cancel()
		}
		if c.Router != nil {
			c.Router.Close()
		}
		for _, e := range c.engines {
			e.cmd.Process.Signal(syscall.SIGTERM)
		}
		deadline := time.After(grace)
		for _, e := range c.engines {
			select {
			case <-e.exited:
			case <-deadline:
				for _, k := range c.engines {
					k.cmd.Process.Kill()
				}
				<-e.exited
				if c.stopErr == nil {
					c.stopErr = fmt.Errorf("local: %s did not stop within %v; killed", e.name, grace)
				}
			}
		}
	})
	return c.stopErr
}
