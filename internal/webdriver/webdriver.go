// Package webdriver is a minimal W3C WebDriver client for driving headless Chromium through
// chromedriver in tests: start chromedriver on a free loopback port, open a session, navigate,
// run scripts, take screenshots, quit. It speaks the protocol with net/http and JSON only.
package webdriver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Browsers are the executable names a Chromium-family browser goes by, in the order Find
// tries them (Debian's package installs /usr/bin/chromium).
var Browsers = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// Find locates chromedriver and a Chromium browser on $PATH. Its error says what is missing,
// so a test can skip with it.
func Find() (driver, browser string, err error) {
	driver, derr := exec.LookPath("chromedriver")
	for _, name := range Browsers {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	var missing []string
	if derr != nil {
		missing = append(missing, "chromedriver")
	}
	if browser == "" {
		missing = append(missing, "chromium")
	}
	if len(missing) > 0 {
		return "", "", fmt.Errorf("%s not found on $PATH (on Debian: apt-get install chromium chromium-driver)", strings.Join(missing, " and "))
	}
	return driver, browser, nil
}

// HeadlessArgs are the browser flags of a quiet, sandbox-free headless session with a fresh
// profile in userDataDir: no GPU, QUIC, first-run UI, background networking, component
// updates or sync, so the browser talks to nothing but the pages it is sent to.
func HeadlessArgs(userDataDir string) []string {
	return []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir=" + userDataDir}
}

// Driver is a WebDriver server: a chromedriver process this package started, or any server
// at a URL.
type Driver struct {
	url    string
	client *http.Client
	cmd    *exec.Cmd
	waited chan struct{}
	log    *logBuffer
}

// Start runs chromedriver (the path, or "chromedriver" from $PATH when empty) on a free
// loopback port and waits until it is ready.
func Start(ctx context.Context, path string) (*Driver, error) {
	if path == "" {
		p, err := exec.LookPath("chromedriver")
		if err != nil {
			return nil, err
		}
		path = p
	}
	var lastErr error
	for range 3 { // the free port may be taken between choosing it and chromedriver binding it
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		d, err := startAt(ctx, path, port)
		if err == nil {
			return d, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startAt(ctx context.Context, path string, port int) (*Driver, error) {
	log := &logBuffer{}
	cmd := exec.Command(path, "--port="+strconv.Itoa(port), "--allowed-ips=127.0.0.1")
	cmd.Stdout, cmd.Stderr = log, log
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &Driver{url: "http://127.0.0.1:" + strconv.Itoa(port), client: &http.Client{}, cmd: cmd,
		waited: make(chan struct{}), log: log}
	go func() { cmd.Wait(); close(d.waited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var st struct {
			Ready bool `json:"ready"`
		}
		err := d.do(ctx, http.MethodGet, "/status", nil, &st)
		if err == nil && st.Ready {
			return d, nil
		}
		select {
		case <-d.waited:
			return nil, fmt.Errorf("chromedriver exited: %s", d.Log())
		case <-ctx.Done():
			d.Close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.Close()
			return nil, fmt.Errorf("chromedriver not ready on port %d after 20s: %v; log: %s", port, err, d.Log())
		}
	}
}

// Connect uses a WebDriver server already running at url.
func Connect(url string) *Driver {
	return &Driver{url: strings.TrimSuffix(url, "/"), client: &http.Client{}}
}

// URL is the server's address.
func (d *Driver) URL() string { return d.url }

// Log is what a chromedriver this package started has printed.
func (d *Driver) Log() string {
	if d.log == nil {
		return ""
	}
	return d.log.String()
}

// Close stops a chromedriver this package started, with the browsers it started.
func (d *Driver) Close() error {
	if d.cmd == nil {
		return nil
	}
	select {
	case <-d.waited:
		return nil
	default:
	}
	killProcessGroup(d.cmd)
	<-d.waited
	return nil
}

// Error is an error the WebDriver server answered with.
type Error struct {
	Status  int
	Code    string // e.g. "no such element", "javascript error"
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("webdriver: %s (HTTP %d): %s", e.Code, e.Status, e.Message)
}

// do sends one command and decodes the response's value into out (when not nil).
func (d *Driver) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.url+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var env struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return fmt.Errorf("webdriver: %s %s: HTTP %d, not a WebDriver response: %.200s", method, path, resp.StatusCode, raw)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		json.Unmarshal(env.Value, &e)
		return &Error{Status: resp.StatusCode, Code: e.Error, Message: e.Message}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(env.Value, out); err != nil {
		return fmt.Errorf("webdriver: %s %s: %w", method, path, err)
	}
	return nil
}

// Options configure a new browser session.
type Options struct {
	// Binary is the browser executable; empty lets chromedriver find one.
	Binary string
	// Args are the browser's command-line flags (see HeadlessArgs).
	Args []string
}

// Session is one browser session.
type Session struct {
	d  *Driver
	id string
}

// NewSession starts a browser.
func (d *Driver) NewSession(ctx context.Context, opts Options) (*Session, error) {
	chrome := map[string]any{"args": opts.Args}
	if opts.Binary != "" {
		chrome["binary"] = opts.Binary
	}
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName": "chrome", "goog:chromeOptions": chrome}}}
	var resp struct {
		SessionID string `json:"sessionId"`
	}
	if err := d.do(ctx, http.MethodPost, "/session", caps, &resp); err != nil {
		return nil, err
	}
	if resp.SessionID == "" {
		return nil, errors.New("webdriver: new session: no sessionId in the response")
	}
	return &Session{d: d, id: resp.SessionID}, nil
}

// ID is the session's id.
func (s *Session) ID() string { return s.id }

func (s *Session) path(p string) string { return "/session/" + url.PathEscape(s.id) + p }

// Navigate loads a URL and waits for the page to load.
func (s *Session) Navigate(ctx context.Context, url string) error {
	return s.d.do(ctx, http.MethodPost, s.path("/url"), map[string]string{"url": url}, nil)
}

// CurrentURL is the page's URL.
func (s *Session) CurrentURL(ctx context.Context) (string, error) {
	var u string
	err := s.d.do(ctx, http.MethodGet, s.path("/url"), nil, &u)
	return u, err
}

// Title is the page's title.
func (s *Session) Title(ctx context.Context) (string, error) {
	var t string
	err := s.d.do(ctx, http.MethodGet, s.path("/title"), nil, &t)
	return t, err
}

// Execute runs a script's body as a function of args in the page and decodes its return
// value into result (when not nil).
func (s *Session) Execute(ctx context.Context, script string, args []any, result any) error {
	if args == nil {
		args = []any{}
	}
	return s.d.do(ctx, http.MethodPost, s.path("/execute/sync"), map[string]any{"script": script, "args": args}, result)
}

// ExecuteAsync runs a script whose last argument is a callback it calls with its result.
func (s *Session) ExecuteAsync(ctx context.Context, script string, args []any, result any) error {
	if args == nil {
		args = []any{}
	}
	return s.d.do(ctx, http.MethodPost, s.path("/execute/async"), map[string]any{"script": script, "args": args}, result)
}

// SetWindowSize resizes the browser window (and so the viewport of screenshots).
func (s *Session) SetWindowSize(ctx context.Context, width, height int) error {
	return s.d.do(ctx, http.MethodPost, s.path("/window/rect"), map[string]int{"width": width, "height": height}, nil)
}

// Screenshot is a PNG of the viewport.
func (s *Session) Screenshot(ctx context.Context) ([]byte, error) {
	var b64 string
	if err := s.d.do(ctx, http.MethodGet, s.path("/screenshot"), nil, &b64); err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(b64)
}

// Quit closes the browser.
func (s *Session) Quit(ctx context.Context) error {
	return s.d.do(ctx, http.MethodDelete, s.path(""), nil, nil)
}

// logBuffer collects chromedriver's stdout and stderr, which it writes from two goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
