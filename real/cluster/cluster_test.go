package cluster

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"servelab/internal/kubebin"
)

// When a component dies during up, up stops what it started and says why, with the end
// of the component's log.
func TestUpReportsAComponentThatDies(t *testing.T) {
	bin := t.TempDir()
	script := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script(kubebin.Etcd, "exec sleep 600")
	script(kubebin.APIServer, "echo 'E1204 listen tcp 127.0.0.1:6443: bind: address already in use'; exit 1")
	script(kubebin.ControllerManager, "exec sleep 600")
	script(kubebin.Scheduler, "exec sleep 600")
	dir := t.TempDir()
	_, err := Up(context.Background(), Options{Dir: dir, BinDir: bin, ServelabBin: filepath.Join(bin, kubebin.Etcd), Timeout: time.Minute})
	if err == nil {
		t.Fatal("up succeeded with an apiserver that exits")
	}
	for _, want := range []string{"kube-apiserver exited", "bind: address already in use", "logs/kube-apiserver.log"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if pids := Processes(dir); len(pids) > 0 {
		t.Errorf("processes %v left after a failed up", pids)
	}
}

// The PKI: every certificate chains to the CA and says what it is for.
func TestPKI(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	load := func(name string) *x509.Certificate {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ca := load(caCert)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	tests := []struct {
		cert  string
		usage x509.ExtKeyUsage
		name  string // DNS name or IP to verify for a serving certificate
		org   string
	}{
		{apiserverCert, x509.ExtKeyUsageServerAuth, "127.0.0.1", ""},
		{apiserverCert, x509.ExtKeyUsageServerAuth, "kubernetes.default.svc", ""},
		{apiserverCert, x509.ExtKeyUsageServerAuth, serviceIP.String(), ""},
		{nodeServingCert, x509.ExtKeyUsageServerAuth, "127.0.0.1", ""},
		{adminCert, x509.ExtKeyUsageClientAuth, "", "system:masters"},
		{kubeletClientCert, x509.ExtKeyUsageClientAuth, "", ""},
	}
	for _, tc := range tests {
		c := load(tc.cert)
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: tc.name, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
			t.Errorf("%s for %q: %v", tc.cert, tc.name, err)
		}
		if tc.org != "" && (len(c.Subject.Organization) == 0 || c.Subject.Organization[0] != tc.org) {
			t.Errorf("%s: organization %v; want %s", tc.cert, c.Subject.Organization, tc.org)
		}
	}
	// A second call keeps the PKI (kubeconfigs already handed out stay valid).
	before, _ := os.ReadFile(filepath.Join(dir, caCert))
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, caCert)); string(after) != string(before) {
		t.Error("writePKI replaced an existing CA")
	}
}

// A new cluster's pods get a network no other running cluster's pods use.
func TestFreePodNetAvoidsRunningClusters(t *testing.T) {
	taken := []int{0, 1}
	for _, n := range taken {
		dir := t.TempDir()
		if err := os.WriteFile(statePath(dir), []byte(`{"pod_net": `+strconv.Itoa(n)+`}`), 0o644); err != nil {
			t.Fatal(err)
		}
		// A process of that cluster, as its marker shows.
		cmd := exec.Command("sleep", "60")
		cmd.Env = withMarker(os.Environ(), dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := freePodNet(t.TempDir())
		if got != 0 && got != 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("freePodNet = %d with clusters on 0 and 1 running", got)
		}
		time.Sleep(20 * time.Millisecond) // until the sleeps have exec'd (their environ readable)
	}
}
