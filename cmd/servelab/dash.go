package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"servelab/web"
)

func newDashCmd() *cobra.Command {
	var addr, runs string
	var specDirs []string
	var port, parallel int
	var limits dashLimits
	cmd := &cobra.Command{
		Use:   "dash [--port N] [--addr 127.0.0.1] [--runs DIR]",
		Short: "Serve the experiment dashboard: runs, a live view of a running experiment, comparisons",
		Long: `Serve a web dashboard over the experiment directories under --runs: it lists experiments and
their runs, starts a run from a spec file (under the working directory or --spec-dir), streams a running
experiment live over a websocket (per-cell progress; throughput, queue depth, KV usage,
prefix-cache hit rate and TTFT over simulated time), and overlays chosen runs' time series and
summaries. Runs started elsewhere ('servelab run') are followed through their events.jsonl.
It binds 127.0.0.1 by default and has no authentication: anyone who can reach it can start runs.
A --runs directory given that does not exist is an error (a typo would show an empty list); the
default, runs, is created by the first run. Requests must arrive within --read-timeout, idle
connections close after --idle-timeout, and over --max-inflight requests at once (open
websockets count) are refused with 503; live websockets are not time-limited.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkRunsDir(runs, cmd.Flags().Changed("runs")); err != nil {
				return err
			} else if _, err := os.Stat(runs); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "servelab dash: %s does not exist yet; runs started here or by 'servelab run' will appear in it\n", runs)
			}
			ln, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
			if err != nil {
				return err
			}
			defer ln.Close()
			cfg := web.Config{RunsDir: runs, SpecDirs: specDirs, Parallel: parallel, Logf: func(format string, args ...any) {
				fmt.Fprintf(cmd.ErrOrStderr(), "servelab dash: "+format+"\n", args...)
			}, Real: localWorld{}}
			if ip := net.ParseIP(addr); addr == "localhost" || ip != nil && ip.IsLoopback() {
				cfg.Hosts = web.LoopbackHosts
			}
			srv, err := web.New(cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(cfg.Hosts) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "servelab dash: warning: listening on %s, beyond loopback; the dashboard has no authentication\n", addr)
			}
			fmt.Fprintf(out, "servelab dash: http://%s/  (runs in %s; Ctrl-C stops)\n", ln.Addr(), srv.RunsDir())
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			hs, err := limits.server(srv.Handler())
			if err != nil {
				return err
			}
			served := make(chan error, 1)
			go func() { served <- hs.Serve(ln) }()
			select {
			case <-ctx.Done():
			case err := <-served:
				srv.Close()
				return err
			}
			// Runs started here are cancelled (a later run resumes them); clients are told.
			srv.Close()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return hs.Shutdown(sctx)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&addr, "addr", "127.0.0.1", "address to bind")
	fl.IntVar(&port, "port", 8090, "port (0 picks a free one)")
	fl.StringVar(&runs, "runs", "runs", "directory holding the experiment directories")
	fl.StringSliceVar(&specDirs, "spec-dir", nil, "directory the specs started from the dashboard must lie under (repeatable; default: the working directory)")
	fl.IntVar(&parallel, "parallel", 0, "cells of a run started from the dashboard to run at once (default: the CPUs)")
	fl.DurationVar(&limits.read, "read-timeout", 30*time.Second, "time a request's headers and body may take to arrive")
	fl.DurationVar(&limits.idle, "idle-timeout", 2*time.Minute, "idle keep-alive connections close after this")
	fl.IntVar(&limits.maxInFlight, "max-inflight", 256, "requests (and open websockets) served at once; more are refused with 503")
	return cmd
}

// checkRunsDir refuses a runs directory that is not one, or, named explicitly, does not exist.
func checkRunsDir(dir string, explicit bool) error {
	st, err := os.Stat(dir)
	switch {
	case err == nil && !st.IsDir():
		return fmt.Errorf("--runs %s: not a directory", dir)
	case errors.Is(err, fs.ErrNotExist) && explicit:
		return fmt.Errorf("--runs %s: no such directory (servelab run writes under runs/ unless --out says otherwise)", dir)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("--runs: %w", err)
	}
	return nil
}

// dashLimits are the dashboard server's bounds on slow and many clients.
type dashLimits struct {
	read, idle  time.Duration
	maxInFlight int
}

// server is the dashboard's http.Server. ReadTimeout bounds a request's headers and body;
// it does not cut websockets or long responses: net/http clears the read deadline once the
// body is read (before the handler, for a GET) and a hijacked connection keeps none. There
// is no WriteTimeout, which would.
func (l dashLimits) server(h http.Handler) (*http.Server, error) {
	if l.read <= 0 || l.idle <= 0 || l.maxInFlight < 1 {
		return nil, fmt.Errorf("--read-timeout %v, --idle-timeout %v, --max-inflight %d: want positive values", l.read, l.idle, l.maxInFlight)
	}
	slots := make(chan struct{}, l.maxInFlight)
	limited := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
		default:
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "{\"error\":%q}\n", fmt.Sprintf("the dashboard is serving its limit of %d requests at once (--max-inflight)", l.maxInFlight))
			return
		}
		h.ServeHTTP(w, r)
	})
	return &http.Server{Handler: limited, ReadHeaderTimeout: min(10*time.Second, l.read), ReadTimeout: l.read, IdleTimeout: l.idle}, nil
}
