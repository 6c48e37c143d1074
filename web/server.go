// Package web is servelab's dashboard: it lists the experiment directories under a runs
// directory, starts experiments in-process, streams a running experiment's progress and time
// series to any number of browser tabs over websockets, and overlays finished runs for
// comparison. Runs started elsewhere (`servelab run` in a terminal) are followed through
// their events.jsonl.
package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"servelab/experiments"
	"servelab/internal/atomicfile"
)

// Config configures a dashboard.
type Config struct {
	// RunsDir holds the experiment directories ("runs" when empty).
	RunsDir string
	// SpecDirs are the directories a spec started from the dashboard must lie under (after
	// resolving symbolic links); none means the working directory.
	SpecDirs []string
	// Hosts, when set, are the only host names a request may address (its Host header), so
	// that a web page cannot reach a loopback dashboard by DNS rebinding.
	Hosts []string
	// Parallel is how many cells of a run started here run at once (0: GOMAXPROCS).
	Parallel int
	// Interval is the push cadence of live updates (100 ms when 0).
	Interval time.Duration
	// Logf, if set, logs runs started and finished.
	Logf func(format string, args ...any)
	// Real runs the cells of specs whose world is real (experiments.Options.Real).
	Real experiments.RealWorld
}

// Server is a dashboard; Handler serves it.
type Server struct {
	cfg      Config
	root     string
	specDirs []string
	cat      *catalog
	opt      hubOptions
	handler  http.Handler
	upgrader websocket.Upgrader
	// hubIdle is how long a hub with no client and no run of ours lives on.
	hubIdle time.Duration
	// connHook, if set, sees each websocket after the upgrade (tests shrink its buffers).
	connHook func(*websocket.Conn)

	mu   sync.Mutex
	hubs map[string]*hub
	jobs map[string]*Job

	ctx    context.Context
	cancel context.CancelFunc
	jobsWG sync.WaitGroup
	stop   chan struct{}
	bgDone chan struct{}
	closed sync.Once
}

// New makes a dashboard over cfg.RunsDir (which need not exist yet).
func New(cfg Config) (*Server, error) {
	if cfg.RunsDir == "" {
		cfg.RunsDir = "runs"
	}
	root, err := filepath.Abs(cfg.RunsDir)
	if err != nil {
		return nil, err
	}
	dirs := cfg.SpecDirs
	if len(dirs) == 0 {
		dirs = []string{"."}
	}
	s := &Server{cfg: cfg, root: root, cat: newCatalog(root), hubIdle: time.Minute,
		opt: hubOptions{Interval: cfg.Interval}.withDefaults(), hubs: map[string]*hub{}, jobs: map[string]*Job{},
		stop: make(chan struct{}), bgDone: make(chan struct{})}
	for _, d := range dirs {
		abs, err := filepath.Abs(d)
		if err != nil {
			return nil, err
		}
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			abs = real
		}
		s.specDirs = append(s.specDirs, abs)
	}
	s.upgrader = websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 32 << 10, CheckOrigin: sameOrigin}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.handler = s.routes()
	go s.janitor()
	return s, nil
}

// RunsDir is the absolute runs directory.
func (s *Server) RunsDir() string { return s.root }

// Handler serves the pages, the JSON API and the websockets.
func (s *Server) Handler() http.Handler { return s.handler }

// Close stops the runs this dashboard started (cancelling them; a later run resumes them),
// waits for them, and disconnects every client.
func (s *Server) Close() {
	s.closed.Do(func() {
		s.cancel()
		s.jobsWG.Wait()
		close(s.stop)
		<-s.bgDone
		s.mu.Lock()
		hubs := make([]*hub, 0, len(s.hubs))
		for id, h := range s.hubs {
			hubs = append(hubs, h)
			delete(s.hubs, id)
		}
		s.mu.Unlock()
		for _, h := range hubs {
			h.close()
		}
	})
}

func (s *Server) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

// janitor closes hubs nobody watches (a later client starts a fresh one from events.jsonl).
func (s *Server) janitor() {
	defer close(s.bgDone)
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		var idle []*hub
		for id, h := range s.hubs {
			if j := s.jobs[id]; (j == nil || j.finished()) && h.idle(s.hubIdle) {
				idle = append(idle, h)
				delete(s.hubs, id)
			}
		}
		s.mu.Unlock()
		for _, h := range idle {
			h.close()
		}
	}
}

// Runs lists the experiment directories, grouped by experiment name.
func (s *Server) Runs() ([]Experiment, error) {
	ids, err := s.cat.ids()
	if err != nil {
		return nil, err
	}
	runs := make([]RunInfo, 0, len(ids))
	for _, id := range ids {
		if info, _, err := s.run(id); err == nil {
			runs = append(runs, info)
		}
	}
	s.cat.forget(ids)
	return group(runs), nil
}

// run describes one run and its cells.
func (s *Server) run(id string) (RunInfo, []CellInfo, error) {
	s.mu.Lock()
	j := s.jobs[id]
	s.mu.Unlock()
	running, jobErr := false, error(nil)
	if j != nil {
		if j.finished() {
			jobErr = j.startErr()
		} else {
			running = true
		}
	}
	return s.cat.info(id, running, jobErr)
}

// hub is the run's hub, started (following its events.jsonl) if there is none.
func (s *Server) hub(id string) (*hub, error) {
	dir, err := s.cat.dirOf(id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.hubs[id]; h != nil {
		return h, nil
	}
	e, err := s.cat.entry(id)
	if err != nil {
		return nil, err
	}
	h := newHub(id, e.cells, s.opt)
	h.startFollowing(newTail(filepath.Join(dir, "events.jsonl")))
	s.hubs[id] = h
	return h, nil
}

// StartRequest asks the dashboard to run a spec.
type StartRequest struct {
	// Spec is the spec file's path (relative to the dashboard's working directory); it must
	// lie under one of the allowed spec directories.
	Spec string `json:"spec"`
	// Out is the experiment directory under the runs directory (the spec's name when
	// empty). A directory holding the same spec's run resumes it.
	Out string `json:"out,omitempty"`
	// SampleInterval and Parallel are experiments.Options'.
	SampleInterval float64 `json:"sample_interval,omitempty"`
	Parallel       int     `json:"parallel,omitempty"`
}

// RequestError is a request the dashboard refuses, with the HTTP status that says why.
type RequestError struct {
	Status int
	Err    error
}

func (e *RequestError) Error() string { return e.Err.Error() }
func (e *RequestError) Unwrap() error { return e.Err }

func badRequest(format string, args ...any) error {
	return &RequestError{Status: http.StatusBadRequest, Err: fmt.Errorf(format, args...)}
}

// Job is a run the dashboard started in this process.
type Job struct {
	// ID is the run's id (its directory under the runs directory).
	ID      string
	Dir     string
	Spec    *experiments.Spec
	Started time.Time

	cancel  context.CancelFunc
	done    chan struct{}
	results *experiments.Results
	err     error
	started bool // the run wrote experiment_start
}

// Done is closed when the run returns.
func (j *Job) Done() <-chan struct{} { return j.done }

// Wait waits for the run and returns what experiments.Run returned.
func (j *Job) Wait() (*experiments.Results, error) {
	<-j.done
	return j.results, j.err
}

// Cancel stops the run; finished cells stay, and a later run resumes the rest.
func (j *Job) Cancel() { j.cancel() }

func (j *Job) finished() bool {
	select {
	case <-j.done:
		return true
	default:
		return false
	}
}

// startErr is the run's error if it ended before it began (its events cannot tell).
func (j *Job) startErr() error {
	if j.finished() && !j.started {
		return j.err
	}
	return nil
}

// Start validates the request and runs the spec in the background, streaming it to the
// run's hub. Its errors are *RequestError.
func (s *Server) Start(req StartRequest) (*Job, error) {
	if strings.TrimSpace(req.Spec) == "" {
		return nil, badRequest("spec: give the path of an experiment spec (YAML)")
	}
	path, err := s.allowedSpec(req.Spec)
	if err != nil {
		return nil, err
	}
	spec, err := experiments.Load(path)
	if err != nil {
		return nil, badRequest("spec: %w", err)
	}
	if req.SampleInterval < 0 || math.IsNaN(req.SampleInterval) || math.IsInf(req.SampleInterval, 0) {
		return nil, badRequest("sample_interval: want a positive number of simulated seconds (or 0 for the default), got %v", req.SampleInterval)
	}
	if req.Parallel < 0 {
		return nil, badRequest("parallel: must not be negative, got %d", req.Parallel)
	}
	out := req.Out
	if out == "" {
		out = spec.Name
	}
	rel := filepath.Clean(filepath.FromSlash(out))
	if !filepath.IsLocal(rel) || strings.HasPrefix(filepath.Base(rel), ".") {
		return nil, badRequest("out: %q: want a directory name under the runs directory", out)
	}
	id := filepath.ToSlash(rel)
	dir := filepath.Join(s.root, rel)
	norm, err := spec.Normalized()
	if err != nil {
		return nil, badRequest("spec: %w", err)
	}
	if old, err := os.ReadFile(filepath.Join(dir, "spec.yaml")); err == nil && !bytes.Equal(old, norm) {
		return nil, &RequestError{Status: http.StatusConflict,
			Err: fmt.Errorf("%s holds another spec's run; give another output directory (out)", dir)}
	}
	parallel := req.Parallel
	if parallel == 0 {
		parallel = s.cfg.Parallel
	}

	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		return nil, &RequestError{Status: http.StatusServiceUnavailable, Err: errors.New("the dashboard is shutting down")}
	}
	if j := s.jobs[id]; j != nil && !j.finished() {
		s.mu.Unlock()
		return nil, &RequestError{Status: http.StatusConflict, Err: fmt.Errorf("run %s is already running", id)}
	}
	if info, _, err := s.cat.info(id, false, nil); err == nil && info.Status == StatusRunning {
		s.mu.Unlock()
		return nil, &RequestError{Status: http.StatusConflict,
			Err: fmt.Errorf("run %s is being run by another process (its events.jsonl is growing)", id)}
	}
	ctx, cancel := context.WithCancel(s.ctx)
	job := &Job{ID: id, Dir: dir, Spec: spec, Started: time.Now(), cancel: cancel, done: make(chan struct{})}
	s.jobs[id] = job
	h := s.hubs[id]
	if h == nil {
		h = newHub(id, spec.Cells(), s.opt)
		s.hubs[id] = h
	}
	s.jobsWG.Add(1)
	s.mu.Unlock()

	// The directory exists, with the spec Run will check against, before the caller hears
	// of the run, so its page and websocket are there at once.
	if err := writeSpec(dir, norm); err != nil {
		job.err = err
		h.fail(err)
		close(job.done)
		s.jobsWG.Done()
		return nil, err
	}

	// The hub first takes in the directory's earlier events (a resumed run), then the run's
	// own straight from OnEvent.
	events := filepath.Join(dir, "events.jsonl")
	t := h.stopFollowing()
	if t == nil {
		t = newTail(events)
	}
	if t.read(h.Apply) == errTruncated {
		t.rewind()
		h.reset()
		t.read(h.Apply)
	}
	s.logf("run %s: %s, %d cells, into %s", id, path, len(spec.Cells()), dir)
	go func() {
		defer s.jobsWG.Done()
		onEvent := func(ev experiments.Event) {
			if ev.Kind == experiments.ExperimentStart {
				s.mu.Lock()
				job.started = true
				s.mu.Unlock()
			}
			h.Apply(ev)
		}
		res, err := experiments.Run(ctx, spec, experiments.Options{Out: dir, Parallel: parallel,
			SampleInterval: req.SampleInterval, OnEvent: onEvent, Real: s.cfg.Real})
		cancel()
		if err != nil {
			h.fail(err)
			s.logf("run %s: %v", id, err)
		} else {
			s.logf("run %s: done", id)
		}
		s.mu.Lock()
		job.results, job.err = res, err
		close(job.done)
		s.mu.Unlock()
		// Go on following the directory, past our own events, in case another process
		// resumes it.
		t.skipToEnd()
		h.startFollowing(t)
	}()
	return job, nil
}

// writeSpec writes spec.yaml into a new experiment directory, atomically.
func writeSpec(dir string, norm []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, "spec.yaml"), norm, 0o644)
}

// Job is the run the dashboard started under id, or nil.
func (s *Server) Job(id string) *Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.jobs[id]
}

// allowedSpec resolves a spec path and checks it lies under an allowed directory.
func (s *Server) allowedSpec(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", badRequest("spec: %w", err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", badRequest("spec: %w", err)
	}
	if st, err := os.Stat(real); err != nil || !st.Mode().IsRegular() {
		return "", badRequest("spec: %s is not a file", p)
	}
	for _, d := range s.specDirs {
		if rel, err := filepath.Rel(d, real); err == nil && filepath.IsLocal(rel) {
			return real, nil
		}
	}
	return "", badRequest("spec: %s is outside the directories specs may be started from (%s)", p, strings.Join(s.specDirs, ", "))
}

// sameOrigin accepts a request without an Origin header (not from a browser) or whose
// Origin is the host the request addresses.
func sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

// checkHost refuses requests addressed to a host not in cfg.Hosts.
func (s *Server) checkHost(next http.Handler) http.Handler {
	if len(s.cfg.Hosts) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
		if !slices.ContainsFunc(s.cfg.Hosts, func(h string) bool { return strings.EqualFold(h, host) }) {
			http.Error(w, fmt.Sprintf("servelab dash: requests must address %s, not %q", strings.Join(s.cfg.Hosts, " or "), r.Host), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// LoopbackHosts are the host names of a dashboard bound to a loopback address.
var LoopbackHosts = []string{"127.0.0.1", "localhost", "::1"}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
