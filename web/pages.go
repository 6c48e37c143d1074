package web

import (
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"time"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticRoot embed.FS

// staticFS is the dashboard's own script and style sheet (ECharts comes from
// internal/echartsjs).
var staticFS, _ = fs.Sub(staticRoot, "static")

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"pathEscape": pathEscape,
	"pct":        func(x float64) string { return fmt.Sprintf("%.0f%%", 100*x) },
	"when":       func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") },
}).ParseFS(templateFS, "templates/*.html"))

// pathEscape makes a run id one URL path segment ("a/b" becomes "a%2Fb").
func pathEscape(id string) string { return url.PathEscape(id) }

func render(w http.ResponseWriter, name string, data any) {
	var b strings.Builder
	if err := pages.ExecuteTemplate(&b, name, data); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write([]byte(b.String()))
}

func (s *Server) indexPage(w http.ResponseWriter, r *http.Request) {
	exps, err := s.Runs()
	data := struct {
		RunsDir     string
		Experiments []Experiment
		Suggestions []string
		Error       string
	}{RunsDir: s.root, Experiments: exps, Suggestions: s.specSuggestions()}
	if err != nil {
		data.Error = err.Error()
	}
	render(w, "index.html", data)
}

func (s *Server) livePage(w http.ResponseWriter, r *http.Request) {
	info, cells, err := s.run(r.PathValue("id"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	render(w, "live.html", struct {
		Run   RunInfo
		Cells []CellInfo
	}{info, cells})
}

func (s *Server) comparePage(w http.ResponseWriter, r *http.Request) {
	exps, err := s.Runs()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var selected []string
	for _, id := range r.URL.Query()["run"] {
		if _, err := s.cat.dirOf(id); err == nil {
			selected = append(selected, id)
		}
	}
	isSelected := map[string]bool{}
	for _, id := range selected {
		isSelected[id] = true
	}
	render(w, "compare.html", struct {
		Experiments []Experiment
		Selected    []string
		IsSelected  map[string]bool
	}{exps, selected, isSelected})
}
