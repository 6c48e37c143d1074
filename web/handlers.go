package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"servelab/experiments"
	"servelab/internal/echartsjs"
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.indexPage)
	mux.HandleFunc("GET /runs/{id}", s.livePage)
	mux.HandleFunc("GET /compare", s.comparePage)
	mux.HandleFunc("GET /static/echarts.min.js", serveECharts)
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(staticFS)))
	mux.HandleFunc("GET /api/runs", s.apiRuns)
	mux.HandleFunc("POST /api/runs", s.apiStart)
	mux.HandleFunc("GET /api/runs/{id}", s.apiRun)
	mux.HandleFunc("GET /api/runs/{id}/results", s.apiResults)
	mux.HandleFunc("GET /api/runs/{id}/cells/{cell}/timeseries", s.apiTimeSeries)
	mux.HandleFunc("POST /api/runs/{id}/cancel", s.apiCancel)
	mux.HandleFunc("GET /api/runs/{id}/ws", s.serveWS)
	return s.checkHost(securityHeaders(mux))
}

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")
		next.ServeHTTP(w, r)
	})
}

func serveECharts(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	w.Header().Set("Cache-Control", "public, max-age=86400")
	w.Header().Set("ETag", `"echarts-`+echartsjs.Version+`"`)
	http.ServeContent(w, r, "echarts.min.js", time.Time{}, bytes.NewReader(echartsjs.Script()))
}

// apiRuns lists the experiments and their runs.
func (s *Server) apiRuns(w http.ResponseWriter, r *http.Request) {
	exps, err := s.Runs()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	if exps == nil {
		exps = []Experiment{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"runs_dir": s.root, "experiments": exps})
}

// apiStart starts a run: POST a StartRequest as JSON.
func (s *Server) apiStart(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		writeError(w, http.StatusForbidden, errors.New("cross-origin request refused"))
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		writeError(w, http.StatusUnsupportedMediaType, errors.New("send the request as application/json"))
		return
	}
	var req StartRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("request body: %w", err))
		return
	}
	job, err := s.Start(req)
	if err != nil {
		status := http.StatusInternalServerError
		var re *RequestError
		if errors.As(err, &re) {
			status = re.Status
		}
		writeError(w, status, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"id": job.ID, "dir": job.Dir, "experiment": job.Spec.Name,
		"cells": len(job.Spec.Cells()), "url": "/runs/" + pathEscape(job.ID)})
}

// apiRun describes one run and its cells.
func (s *Server) apiRun(w http.ResponseWriter, r *http.Request) {
	info, cells, err := s.run(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusNotFound, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		RunInfo
		CellList []CellInfo `json:"cell_list"`
	}{info, cells})
}

func (s *Server) apiResults(w http.ResponseWriter, r *http.Request) {
	dir, err := s.cat.dirOf(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusNotFound, err)
		return
	}
	res, err := experiments.ReadResults(dir)
	if errors.Is(err, fs.ErrNotExist) {
		writeError(w, http.StatusNotFound, errors.New("no results.json yet: the run has not finished"))
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// apiTimeSeries is a cell's timeseries.json or, while the cell runs, what its hub holds.
func (s *Server) apiTimeSeries(w http.ResponseWriter, r *http.Request) {
	id, cell := r.PathValue("id"), r.PathValue("cell")
	_, cells, err := s.run(id)
	if err != nil {
		writeError(w, http.StatusNotFound, err)
		return
	}
	if !slices.ContainsFunc(cells, func(c CellInfo) bool { return c.ID == cell }) {
		writeError(w, http.StatusNotFound, fmt.Errorf("run %s has no cell %q", id, cell))
		return
	}
	dir, _ := s.cat.dirOf(id)
	samples, err := experiments.ReadTimeSeries(dir, cell)
	if errors.Is(err, fs.ErrNotExist) {
		s.mu.Lock()
		h := s.hubs[id]
		s.mu.Unlock()
		if h == nil {
			writeError(w, http.StatusNotFound, fmt.Errorf("cell %s has no time series yet", cell))
			return
		}
		samples = []experiments.Sample{}
		h.view(func(st *runState) {
			if c := st.byID[cell]; c != nil {
				samples = append(samples, c.samples...)
			}
		})
		w.Header().Set("X-Servelab-Partial", "true")
	} else if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, samples)
}

func (s *Server) apiCancel(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		writeError(w, http.StatusForbidden, errors.New("cross-origin request refused"))
		return
	}
	j := s.Job(r.PathValue("id"))
	if j == nil || j.finished() {
		writeError(w, http.StatusNotFound, fmt.Errorf("no run %s started by this dashboard is running", r.PathValue("id")))
		return
	}
	j.Cancel()
	writeJSON(w, http.StatusAccepted, map[string]string{"id": j.ID})
}

// serveWS streams a run: a snapshot, then updates at the hub's cadence. A client may send
// {"type":"resync"} for a fresh snapshot.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := s.cat.dirOf(id); err != nil {
		writeError(w, http.StatusNotFound, err)
		return
	}
	conn, err := s.upgrader.Upgrade(w, r, nil) // answers 403 itself for a foreign Origin
	if err != nil {
		return
	}
	if s.connHook != nil {
		s.connHook(conn)
	}
	ws := &wsSink{conn: conn, writeWait: s.opt.WriteWait}
	var c *client
	for range 3 { // a hub closed by the janitor just now is replaced on the next try
		h, err := s.hub(id)
		if err != nil {
			conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseInternalServerErr, err.Error()), time.Now().Add(time.Second))
			conn.Close()
			return
		}
		if c = h.subscribe(ws); c != nil {
			break
		}
	}
	if c == nil {
		conn.Close()
		return
	}
	pongWait := 2 * s.opt.PingPeriod
	conn.SetReadLimit(4 << 10)
	conn.SetReadDeadline(time.Now().Add(pongWait))
	conn.SetPongHandler(func(string) error { return conn.SetReadDeadline(time.Now().Add(pongWait)) })
	for {
		_, msg, err := conn.ReadMessage()
		if err != nil {
			c.close()
			return
		}
		conn.SetReadDeadline(time.Now().Add(pongWait))
		var req struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(msg, &req) == nil && req.Type == "resync" {
			c.requestSnapshot()
		}
	}
}

// wsSink writes a client's messages to its websocket.
type wsSink struct {
	conn      *websocket.Conn
	writeWait time.Duration
}

func (w *wsSink) write(data []byte) error {
	w.conn.SetWriteDeadline(time.Now().Add(w.writeWait))
	return w.conn.WriteMessage(websocket.TextMessage, data)
}

func (w *wsSink) ping() error {
	return w.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(w.writeWait))
}

func (w *wsSink) close() {
	w.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, ""), time.Now().Add(100*time.Millisecond))
	w.conn.Close()
}

// specSuggestions are YAML files under the spec directories that look like experiment
// specs, for the start form.
func (s *Server) specSuggestions() []string {
	var out []string
	cwd, _ := os.Getwd()
	for _, d := range s.specDirs {
		for _, pattern := range []string{"*.yaml", "*/*.yaml", "*/*/*.yaml", "*/*/*/*.yaml"} {
			matches, _ := filepath.Glob(filepath.Join(d, pattern))
			for _, m := range matches {
				if len(out) >= 50 {
					return out
				}
				if rel, err := filepath.Rel(s.root, m); err == nil && filepath.IsLocal(rel) {
					continue // a run's copy of its spec
				}
				raw, err := os.ReadFile(m)
				if err != nil || len(raw) > 64<<10 || !strings.Contains(string(raw), "policies:") || !strings.Contains(string(raw), "name:") {
					continue
				}
				if rel, err := filepath.Rel(cwd, m); err == nil && filepath.IsLocal(rel) {
					m = rel
				}
				if !slices.Contains(out, m) {
					out = append(out, m)
				}
			}
		}
	}
	return out
}
