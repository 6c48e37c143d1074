package gpubench

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The device script and the bundle script it runs from, relative to this package.
const (
	checkScript  = "../../scripts/gpu-check.sh"
	bundleScript = "../../scripts/gpu-bundle.sh"
	repoRoot     = "../.."
)

// scriptEntry is one "NAME.test PACKAGE PATTERN" line of gpu-check.sh.
type scriptEntry struct {
	binary, pkg, pattern string
	flag                 string // -test.run or -test.bench
}

var (
	entryLine  = regexp.MustCompile(`^\s*"(\S+)\.test (\S+) (\S+)"\s*$`)
	benchLine  = regexp.MustCompile(`^[A-Z_]*BENCH="(\S+)\.test (\S+) (\S+)"\s*$`)
	testLine   = regexp.MustCompile(`^[A-Z_]*_TEST="(\S+)\.test (\S+) (\S+)"\s*$`)
	bundleLine = regexp.MustCompile(`^\s*([a-z0-9_]+):\./(\S+)\s*$`)
)

// parseCheckScript reads the test and benchmark entries of gpu-check.sh.
func parseCheckScript(src string) []scriptEntry {
	var out []scriptEntry
	inTests := false
	for _, line := range strings.Split(src, "\n") {
		switch {
		case strings.HasPrefix(line, "TESTS=("):
			inTests = true
		case inTests && strings.TrimSpace(line) == ")":
			inTests = false
		case inTests:
			if m := entryLine.FindStringSubmatch(line); m != nil {
				out = append(out, scriptEntry{m[1], m[2], m[3], "-test.run"})
			}
		default:
			if m := benchLine.FindStringSubmatch(line); m != nil {
				out = append(out, scriptEntry{m[1], m[2], m[3], "-test.bench"})
			}
			if m := testLine.FindStringSubmatch(line); m != nil {
				out = append(out, scriptEntry{m[1], m[2], m[3], "-test.run"})
			}
		}
	}
	return out
}

// testFuncs lists the Test and Benchmark functions of the package in dir.
func testFuncs(dir string) (map[string]bool, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil {
		return nil, err
	}
	funcs := map[string]bool{}
	fset := token.NewFileSet()
	for _, f := range files {
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		for _, d := range file.Decls {
			if fn, ok := d.(*ast.FuncDecl); ok && fn.Recv == nil {
				funcs[fn.Name.Name] = true
			}
		}
	}
	return funcs, nil
}

// checkPattern reports a -test.run or -test.bench pattern that is not ^NAME$ or
// ^(NAME|NAME...)$ over functions funcs has, of the flag's kind (Test or Benchmark).
func checkPattern(pattern, flag string, funcs map[string]bool) error {
	kind := "Test"
	if flag == "-test.bench" {
		kind = "Benchmark"
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		return fmt.Errorf("%s %q: %v", flag, pattern, err)
	}
	inner, ok := strings.CutPrefix(pattern, "^")
	if inner, ok = strings.CutSuffix(inner, "$"); !ok {
		return fmt.Errorf("%s %q: want ^NAME$ or ^(NAME|NAME)$", flag, pattern)
	}
	if strings.HasPrefix(inner, "(") && strings.HasSuffix(inner, ")") {
		inner = inner[1 : len(inner)-1]
	}
	for _, name := range strings.Split(inner, "|") {
		if !strings.HasPrefix(name, kind) {
			return fmt.Errorf("%s %q: %q is not a %s function", flag, pattern, name, kind)
		}
		if !funcs[name] {
			return fmt.Errorf("%s %q: the package has no %s", flag, pattern, name)
		}
		if !re.MatchString(name) {
			return fmt.Errorf("%s %q does not match %s", flag, pattern, name)
		}
	}
	return nil
}

func TestCheckPattern(t *testing.T) {
	funcs := map[string]bool{"TestA": true, "TestB": true, "BenchmarkC": true}
	for _, tt := range []struct {
		pattern, flag, want string
	}{
		{"^TestA$", "-test.run", ""},
		{"^(TestA|TestB)$", "-test.run", ""},
		{"^BenchmarkC$", "-test.bench", ""},
		{"^(TestA|TestGone)$", "-test.run", "the package has no TestGone"},
		{"^BenchmarkC$", "-test.run", `"BenchmarkC" is not a Test function`},
		{"TestA", "-test.run", "want ^NAME$"},
		{"^(TestA$", "-test.run", "missing closing )"},
	} {
		err := checkPattern(tt.pattern, tt.flag, funcs)
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("checkPattern(%q, %s) = %v, want %q", tt.pattern, tt.flag, err, tt.want)
		}
	}
}

// The device script parses as bash, every test and benchmark it runs exists in the package
// it names, and the bundle script builds each binary it runs from that package. A package
// not in this tree is reported and skipped (the CUDA packages land in separate changes).
func TestGPUCheckScript(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatalf("bash: %v", err)
	}
	for _, s := range []string{checkScript, bundleScript} {
		if out, err := exec.Command("bash", "-n", s).CombinedOutput(); err != nil {
			t.Errorf("bash -n %s: %v\n%s", s, err, out)
		}
	}
	raw, err := os.ReadFile(checkScript)
	if err != nil {
		t.Fatal(err)
	}
	entries := parseCheckScript(string(raw))
	if len(entries) < 7 {
		t.Fatalf("found %d test and benchmark entries in %s: %+v", len(entries), checkScript, entries)
	}
	bundle, err := os.ReadFile(bundleScript)
	if err != nil {
		t.Fatal(err)
	}
	built := map[string]string{}
	for _, line := range strings.Split(string(bundle), "\n") {
		if m := bundleLine.FindStringSubmatch(line); m != nil {
			built[m[1]] = m[2]
		}
	}
	var benched bool
	for _, e := range entries {
		t.Run(e.binary+e.flag, func(t *testing.T) {
			if pkg, ok := built[e.binary]; !ok || pkg != e.pkg {
				t.Errorf("%s runs %s.test of %s; %s builds %q from %q", checkScript, e.binary, e.pkg, bundleScript, e.binary, pkg)
			}
			dir := filepath.Join(repoRoot, e.pkg)
			if _, err := os.Stat(dir); err != nil {
				t.Skipf("%s is not in this tree (another change adds it): its patterns are checked where it is", e.pkg)
			}
			funcs, err := testFuncs(dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkPattern(e.pattern, e.flag, funcs); err != nil {
				t.Errorf("%s, %s.test: %v", checkScript, e.binary, err)
			}
		})
		benched = benched || e.flag == "-test.bench" && e.pkg == "cuda/gpubench"
	}
	if !benched {
		t.Errorf("%s runs no benchmark of cuda/gpubench", checkScript)
	}
}

// TestGPUCheckKeepsOutputPastTimeout runs gpu-check.sh over a bundle of stand-in binaries
// (shell scripts; nothing touches a GPU or the driver): a driver test that prints its PASS
// line and then hangs past the step's limit. The step is recorded as timed out, the line it
// printed is in tests.log (the device's output of a step cut at its limit is what a later
// session reads), and the model steps are skipped since the driver test failed.
func TestGPUCheckKeepsOutputPastTimeout(t *testing.T) {
	for _, tool := range []string{"bash", "timeout", "gzip", "tee", "mktemp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
	}
	tmp := t.TempDir()
	bundle, out, work := filepath.Join(tmp, "bundle"), filepath.Join(tmp, "out"), filepath.Join(tmp, "work")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	hung := "#!/bin/sh\necho '=== RUN   TestGPUInitAndDeviceCount'\necho '--- PASS: TestGPUInitAndDeviceCount (0.01s)'\nexec sleep 60\n"
	if err := os.WriteFile(filepath.Join(bundle, "driver.test"), []byte(hung), 0o755); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("gzip", filepath.Join(bundle, "driver.test")).CombinedOutput(); err != nil {
		t.Fatalf("gzip: %v\n%s", err, b)
	}
	script, err := filepath.Abs(checkScript)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", script)
	cmd.Env = append(os.Environ(), "GPU_BUNDLE="+bundle, "OUT="+out, "GPU_CHECK_WORK="+work, "GPU_CHECK_STEP_LIMIT=2",
		"PATH=/usr/bin:/bin") // no nvidia-smi, even where one is installed
	b, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("gpu-check.sh passed with a hung driver test:\n%s", b)
	}
	read := func(name string) string {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatalf("%v (script output:\n%s)", err, b)
		}
		return string(raw)
	}
	tests, summary := read("tests.log"), read("summary.txt")
	for _, want := range []struct{ file, text, line string }{
		{"tests.log", tests, "--- PASS: TestGPUInitAndDeviceCount (0.01s)"},
		{"summary.txt", summary, "test driver"},
		{"summary.txt", summary, "FAILED (timed out after 2s)"},
		{"summary.txt", summary, "NOT RUN (the driver test failed"},
	} {
		if !strings.Contains(want.text, want.line) {
			t.Errorf("%s lacks %q:\n%s", want.file, want.line, want.text)
		}
	}
}
