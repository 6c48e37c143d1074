package main

import (
	"context"
	"fmt"
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
	cmd := &cobra.Command{
		Use:   "dash [--port N] [--addr 127.0.0.1] [--runs DIR]",
		Short: "Serve the experiment dashboard: runs, a live view of a running experiment, comparisons",
		Long: `Serve a web dashboard over the experiment directories under --runs: it lists experiments and
their runs, starts a run from a spec file (under the working directory or --spec-dir), streams a running
experiment live over a websocket (per-cell progress; throughput, queue depth, KV usage,
prefix-cache hit rate and TTFT over simulated time), and overlays chosen runs' time series and
summaries. Runs started elsewhere ('servelab run') are followed through their events.jsonl.
It binds 127.0.0.1 by default and has no authentication: anyone who can reach it can start runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
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
	return cmd
}
