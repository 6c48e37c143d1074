package nvrtc

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallScriptFindsArchive checks how scripts/install-nvrtc.sh reads the machine's
// apt sources (--print-archive stops before downloading): deb822 .sources and one-line
// sources.list, a release suite preferred to -updates/-security, Signed-By kept.
func TestInstallScriptFindsArchive(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	script, err := filepath.Abs("../../scripts/install-nvrtc.sh")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"deb822", map[string]string{"sources.list.d/debian.sources": `Types: deb
# a comment
URIs: http://deb.debian.org/debian
Suites: bookworm-updates bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
`}, "http://deb.debian.org/debian bookworm /usr/share/keyrings/debian-archive-keyring.gpg"},
		{"deb822 deb-src only first", map[string]string{"sources.list.d/a.sources": `Types: deb-src
URIs: http://src.example/debian
Suites: trixie

Types: deb deb-src
URIs: http://mirror.example/debian http://other.example/debian
Suites: trixie
`}, "http://mirror.example/debian trixie"},
		{"one-line", map[string]string{"sources.list": `# comment
deb http://security.debian.org/debian-security bookworm-security main
deb [arch=amd64 signed-by=/etc/apt/keyrings/d.gpg] http://ftp.de.debian.org/debian bookworm main contrib
`}, "http://ftp.de.debian.org/debian bookworm /etc/apt/keyrings/d.gpg"},
		{"one-line plain", map[string]string{"sources.list.d/x.list": "deb http://mirror.example/debian bullseye main\n"},
			"http://mirror.example/debian bullseye"},
		{"none", map[string]string{"sources.list": "# nothing\n"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range c.files {
				p := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command("bash", script, "--print-archive")
			cmd.Env = append(os.Environ(), "SERVELAB_APT_ETC="+dir)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if got := strings.TrimSpace(string(out)); got != c.want {
				t.Errorf("archive %q, want %q", got, c.want)
			}
		})
	}
}
