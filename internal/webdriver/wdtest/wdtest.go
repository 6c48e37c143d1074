// Package wdtest starts the headless Chromium session that browser tests drive, or skips the
// test when Chromium and chromedriver are not installed (.ci/run installs them).
package wdtest

import (
	"context"
	"testing"

	"servelab/internal/webdriver"
)

// Session starts chromedriver and a headless Chromium with a fresh profile and a window of
// width x height pixels; both end when the test does.
func Session(ctx context.Context, t *testing.T, width, height int) *webdriver.Session {
	t.Helper()
	driverPath, browser, err := webdriver.Find()
	if err != nil {
		t.Skipf("browser test skipped: %v; .ci/run installs them", err)
	}
	wd, err := webdriver.Start(ctx, driverPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wd.Close() })
	s, err := wd.NewSession(ctx, webdriver.Options{Binary: browser, Args: webdriver.HeadlessArgs(t.TempDir())})
	if err != nil {
		t.Fatalf("%v\nchromedriver log:\n%s", err, wd.Log())
	}
	// Quit runs before Close (cleanups run last-registered first), on a context of its own:
	// the test's may be done.
	t.Cleanup(func() { s.Quit(context.Background()) })
	if err := s.SetWindowSize(ctx, width, height); err != nil {
		t.Fatal(err)
	}
	return s
}
